"""PyG ``InMemoryDataset`` classes over the QA and math JSON Lines files.

Each dataset reads its source file once, turns every ``(input, target)`` pair into a
:class:`~pyg_grapheme.data.PairData` and caches the collated result under
``root/processed/<name>-<sha256 of the source bytes, 16 hex digits>/data.pt`` (with
``-skip...`` for extra edges and ``-pre<hash>`` when a ``pre_transform`` or ``pre_filter``
is given: their code and settings are part of the key). A changed source file or
pre-processing has a new key, hence a new cache folder: it is re-processed, never served
stale. Caches are written to a temporary file and moved into place with
:func:`os.replace`, so an interrupted run leaves no half-written cache, and a failed build
leaves no empty folder. Caches are read with ``torch.load(weights_only=True)`` and no
fallback: a ``data.pt`` holding anything but tensors and PyG data (a planted pickle)
raises :class:`CacheError` and runs nothing. Old cache folders are left in place (they
are small; delete ``root/processed`` to clean up).

Batch with ``DataLoader(dataset, batch_size=..., follow_batch=FOLLOW_BATCH)`` and split
each batch with :func:`~pyg_grapheme.data.split_pair_batch`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib.resources
import marshal
import os
import pickle
import re
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch_geometric.data import Data, InMemoryDataset

from pyg_grapheme.data.curriculum import DEFAULT_SIZES, SPLITS, write_curriculum
from pyg_grapheme.data.formats import DataFormatError, iter_pairs
from pyg_grapheme.data.pair import PairData
from pyg_grapheme.data.tasks import DEFAULT_TASK_SIZES, TASKS, write_task

__all__ = [
    "DATASET_NAMES",
    "CacheError",
    "KindergartenDataset",
    "MathCurriculumDataset",
    "TaskDataset",
    "TextPairDataset",
    "kindergarten_path",
    "resolve_dataset",
]


class CacheError(ValueError):
    """A processed-dataset cache file that cannot be loaded safely (it holds objects other
    than tensors and PyG data, or it is damaged). Nothing in it has been run."""


def _code_key(code: types.CodeType) -> bytes:
    return marshal.dumps(code)  # bytecode, constants and names (no addresses)


def callable_key(fn: Callable | None) -> str:
    """A text that changes when a ``pre_transform`` / ``pre_filter`` changes: for a
    function its module, name, bytecode and closure values; for any other object its
    ``repr``. An object whose ``repr`` is the default ``<... at 0x...>`` has no stable
    key: its address keeps it unique to this process (never a stale cache, no reuse)."""
    if fn is None:
        return ""
    if isinstance(fn, types.FunctionType | types.MethodType):
        func = fn.__func__ if isinstance(fn, types.MethodType) else fn
        closure = [repr(c.cell_contents) for c in func.__closure__ or ()]
        digest = hashlib.sha256(_code_key(func.__code__)).hexdigest()
        owner = repr(fn.__self__) if isinstance(fn, types.MethodType) else ""
        name = f"{func.__module__}.{func.__qualname__}"
        return f"{name}:{digest}:{closure}:{func.__defaults__}{owner}"
    text = repr(fn)
    if re.search(r" at 0x[0-9a-fA-F]+>", text) is None:
        return f"{type(fn).__module__}.{type(fn).__qualname__}:{text}"
    return f"{type(fn).__module__}.{type(fn).__qualname__}:{text}:{id(fn)}"


@functools.cache
def _resource_files() -> contextlib.ExitStack:
    """The extracted resources of a zipped install, closed at exit: the hook is registered
    on first use, so importing the package registers nothing."""
    stack = contextlib.ExitStack()
    atexit.register(stack.close)
    return stack


def kindergarten_path() -> Path:
    """Path of the shipped kindergarten QA set (65 pairs), found with
    :mod:`importlib.resources` so it works from an installed package too."""
    resource = importlib.resources.files("pyg_grapheme.data") / "assets" / "kindergarten.jsonl"
    if isinstance(resource, Path):
        return resource
    # A zipped install: extract once, kept until the interpreter exits.
    return _resource_files().enter_context(importlib.resources.as_file(resource))


#: Pairs collated at a time while a dataset cache is built (bounds the build's memory).
CHUNK = 4096


def join_collated(chunks: list[tuple[Data, dict]]) -> tuple[dict, dict]:
    """Join ``InMemoryDataset.collate`` outputs of consecutive chunks into one storage
    (``(data dict, slices)``), as if the chunks' pairs had been collated together: tensors
    are concatenated along their ``__cat_dim__`` (stored without increments) and each
    chunk's slices shifted by the rows before it. One attribute at a time, freeing the
    chunks' copies as it goes (``chunks`` is emptied), so the peak is the result plus one
    attribute."""
    if len(chunks) == 1:
        data, slices = chunks.pop()
        return data.to_dict(), slices  # slices None: a single pair
    proto = type(chunks[0][0])()  # for __cat_dim__ only
    stores, slice_list = [], []
    while chunks:  # take the chunks out of the caller's list: freed as they are joined
        data, sl = chunks.pop(0)
        stores.append(data.to_dict())
        slice_list.append(sl)
        del data
    data, slices = {}, {}
    for key in list(stores[0]):
        value = stores[0][key]
        dim = proto.__cat_dim__(key, value)
        dim = dim + value.dim() if dim < 0 else dim
        offset, parts = 0, []
        for i, (store, sl) in enumerate(zip(stores, slice_list, strict=True)):
            # collate returns no slices for a chunk of one pair
            own = sl[key] if sl is not None else torch.tensor([0, store[key].size(dim)])
            parts.append((own if i == 0 else own[1:]) + offset)
            offset += int(own[-1])
        slices[key] = torch.cat(parts)
        data[key] = torch.cat([store.pop(key) for store in stores], dim=dim)
    return data, slices


class TextPairDataset(InMemoryDataset):
    r"""The pairs of one QA or math-curriculum JSON Lines file as
    :class:`~pyg_grapheme.data.PairData` graphs.

    Args:
        root: cache folder (the processed data goes to ``root/processed/...``).
        path: the JSON Lines file (format detected, see :func:`~pyg_grapheme.data.read_pairs`;
            a bad file raises :class:`~pyg_grapheme.data.DataFormatError` and caches nothing).
        transform, pre_transform, pre_filter: as in
            :class:`~torch_geometric.data.InMemoryDataset`.
        skip: extra edge distances for :func:`~pyg_grapheme.text_to_graph` (part of the
            cache key).
        name: prefix of the cache folder (default: the file's stem).
        log, force_reload: as in :class:`~torch_geometric.data.InMemoryDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        path: str | os.PathLike,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        pre_filter: Callable | None = None,
        *,
        skip: Sequence[int] = (),
        name: str | None = None,
        log: bool = True,
        force_reload: bool = False,
    ) -> None:
        self.source = Path(path)
        self.skip = tuple(sorted(set(skip)))
        self.name = name or self.source.stem
        if pre_transform is not None or pre_filter is not None:
            key = f"{callable_key(pre_transform)}\n{callable_key(pre_filter)}"
            self.pre_key = "-pre" + hashlib.sha256(key.encode()).hexdigest()[:12]
        else:
            self.pre_key = ""
        self._source_bytes: bytes | None = self.source.read_bytes()
        self.source_hash = hashlib.sha256(self._source_bytes).hexdigest()
        super().__init__(
            os.fspath(root), transform, pre_transform, pre_filter, log=log,
            force_reload=force_reload,
        )
        self._source_bytes = None  # the bytes that were hashed are the bytes processed
        self.load(self.processed_paths[0], data_cls=PairData)

    @property
    def raw_file_names(self) -> list[str]:
        return []  # the source file lives wherever the caller keeps it

    @property
    def processed_dir(self) -> str:
        skip = "-skip" + "_".join(map(str, self.skip)) if self.skip else ""
        folder = f"{self.name}-{self.source_hash[:16]}{skip}{self.pre_key}"
        return os.path.join(self.root, "processed", folder)

    @property
    def processed_file_names(self) -> list[str]:
        return ["data.pt"]

    def _process(self) -> None:
        # Replaces PyG's: that one reads ``pre_transform.pt`` / ``pre_filter.pt`` with
        # ``torch.load(weights_only=False)`` (code in a planted file would run) and leaves
        # an empty folder when processing fails. Here pre-processing is in the cache key.
        if not self.force_reload and os.path.isfile(self.processed_paths[0]):
            return
        folder = Path(self.processed_dir)
        created = [d for d in (folder.parent, folder) if not d.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.process()
        except BaseException:
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty
            raise

    def load(self, path: str, data_cls: type = PairData) -> None:
        """Load a cache written by :meth:`process` with ``weights_only=True`` and no
        fallback (PyG's loader falls back to ``weights_only=False``)."""
        hint = f"delete {os.path.dirname(path)!r} to rebuild it"
        # The cache stores the class of its records: allow it (here, not at import, which
        # would change torch's global allow-list for every importer; idempotent).
        torch.serialization.add_safe_globals([PairData])
        try:
            out = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand \S+", str(err))
            what = found.group(0) if found else "an object torch.load refuses"
            raise CacheError(
                f"refusing to load the dataset cache {path!r}: it holds objects other than "
                f"tensors and PyG data ({what}); nothing in it was run; {hint}"
            ) from None
        except (OSError, RuntimeError, EOFError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CacheError(f"the dataset cache {path!r} is damaged ({first}); {hint}") from None
        if not (isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], dict)
                and (out[1] is None or isinstance(out[1], dict)) and out[2] is PairData):
            raise CacheError(f"{path!r} is not a pyg_grapheme dataset cache; {hint}")
        data, self.slices, _ = out
        self.data = PairData.from_dict(data)

    def process(self) -> None:
        # Streamed: records are parsed, converted and collated CHUNK pairs at a time, so
        # the per-pair Python objects of only one chunk exist at once; the chunks'
        # tensors are then joined one attribute at a time and written straight to disk.
        assert self._source_bytes is not None
        chunks: list[tuple[PairData, dict]] = []
        pending: list[PairData] = []
        try:
            for _, (source, target) in iter_pairs(self._source_bytes, str(self.source)):
                pair = PairData.from_texts(source, target, skip=self.skip)
                if self.pre_filter is not None and not self.pre_filter(pair):
                    continue
                if self.pre_transform is not None:
                    pair = self.pre_transform(pair)
                pending.append(pair)
                if len(pending) == CHUNK:
                    chunks.append(self.collate(pending))
                    pending = []
        except RecursionError:
            raise DataFormatError(
                str(self.source), None, "JSON nested too deeply to read"
            ) from None
        if pending:
            chunks.append(self.collate(pending))
        del pending
        if not chunks:
            raise ValueError(f"{self.source}: pre_filter removed every pair")
        data, slices = join_collated(chunks)
        path = self.processed_paths[0]
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            # A full disk raises OSError (ENOSPC) here; fsync before the rename so a crash
            # cannot leave an empty or partial data.pt under the final name.
            with open(tmp, "wb") as fh:
                torch.save((data, slices, PairData), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            if err.errno is None or err.filename:
                raise
            raise OSError(err.errno, err.strerror or str(err), path) from err
        except RuntimeError as err:  # torch's zip writer wraps a failed write this way
            first = (str(err).strip().splitlines() or ["write failed"])[0]
            raise OSError(f"{path}: could not write the dataset cache ({first})") from err
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)}, source={str(self.source)!r})"


class KindergartenDataset(TextPairDataset):
    """The shipped kindergarten QA set (:func:`kindergarten_path`): 65 short questions with
    1-3 word answers (colours, counts, animals, opposites, letters, facts, a few
    non-ASCII answers such as ``café``, ``naïve``, ``🐱``). It is a memorisation set: it
    has no splits."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        pre_filter: Callable | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "kindergarten")
        super().__init__(root, kindergarten_path(), transform, pre_transform, pre_filter,
                         **kwargs)


def _generated(root, base: str, sizes: tuple, default: tuple, write) -> tuple[str, Path]:
    """Folder name and ``raw/`` folder of a generated dataset (``-sizes..`` appended for
    non-default sizes), its split files written once by ``write(raw)``."""
    folder = base if sizes == tuple(default) else base + "-sizes" + "_".join(map(str, sizes))
    raw = Path(root) / "raw" / folder
    if not all((raw / f"{s}.jsonl").exists() for s in SPLITS):
        write(raw)
    return folder, raw


class MathCurriculumDataset(TextPairDataset):
    """One split of the seeded math curriculum (:mod:`pyg_grapheme.data.curriculum`).

    The three split files are generated into ``root/raw/math<level>-seed<seed>/`` the
    first time (atomically), then loaded like any other file; edit them and the cache is
    rebuilt.

    Args:
        root: dataset folder (``raw/`` and ``processed/`` inside).
        level: 1 or 2. split: ``"train"``, ``"val"`` or ``"test"``. seed: curriculum seed.
        sizes: ``(train, val, test)`` sizes, default the level's
            :data:`~pyg_grapheme.data.curriculum.DEFAULT_SIZES`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        level: int,
        split: str = "train",
        seed: int = 0,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        pre_filter: Callable | None = None,
        *,
        sizes: Sequence[int] | None = None,
        **kwargs,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
        if level not in DEFAULT_SIZES:
            raise ValueError(f"unknown curriculum level {level!r}; known: {list(DEFAULT_SIZES)}")
        sizes = tuple(DEFAULT_SIZES[level] if sizes is None else sizes)
        folder, raw = _generated(root, f"math{level}-seed{seed}", sizes, DEFAULT_SIZES[level],
                                 lambda raw: write_curriculum(raw, level, seed, sizes))
        self.level, self.split, self.seed = level, split, seed
        kwargs.setdefault("name", f"{folder}-{split}")
        super().__init__(root, raw / f"{split}.jsonl", transform, pre_transform, pre_filter,
                         **kwargs)


class TaskDataset(TextPairDataset):
    """One split of a seeded question task (:mod:`pyg_grapheme.data.tasks`:
    ``place_value``, ``compare``, ``rounding``, ``add_sub``, ``sort``).

    The three split files are generated into ``root/raw/<task>-seed<seed>/`` the first
    time (atomically; ``-sizes<train>_<val>_<test>`` is appended for non-default sizes),
    then loaded like any other QA file; edit them and the cache is rebuilt.

    Args:
        root: dataset folder (``raw/`` and ``processed/`` inside).
        task: a name of :data:`~pyg_grapheme.data.tasks.TASKS`. split: ``"train"``,
            ``"val"`` or ``"test"``. seed: generator seed.
        sizes: ``(train, val, test)`` sizes, default
            :data:`~pyg_grapheme.data.tasks.DEFAULT_TASK_SIZES` (20000, 1000, 1000).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        task: str,
        split: str = "train",
        seed: int = 0,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        pre_filter: Callable | None = None,
        *,
        sizes: Sequence[int] | None = None,
        **kwargs,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        sizes = tuple(DEFAULT_TASK_SIZES if sizes is None else sizes)
        folder, raw = _generated(root, f"{task}-seed{seed}", sizes, DEFAULT_TASK_SIZES,
                                 lambda raw: write_task(raw, task, seed, sizes))
        self.task, self.split, self.seed = task, split, seed
        kwargs.setdefault("name", f"{folder}-{split}")
        super().__init__(root, raw / f"{split}.jsonl", transform, pre_transform, pre_filter,
                         **kwargs)


#: Names :func:`resolve_dataset` knows (a path to a JSON Lines file works too).
DATASET_NAMES = ("kindergarten", "math1", "math2", *TASKS)


def resolve_dataset(
    name_or_path: str | os.PathLike,
    root: str | os.PathLike,
    split: str = "train",
    *,
    seed: int = 0,
    **kwargs,
) -> TextPairDataset:
    """A dataset from a name or a file path.

    ``"kindergarten"`` is the shipped set (the same 65 pairs for every split: it is
    learnt by heart); ``"math1"`` / ``"math2"`` are the curriculum levels and
    ``"place_value"``, ``"compare"``, ``"rounding"``, ``"add_sub"``, ``"sort"`` the
    question tasks (:class:`TaskDataset`; for both, ``split`` and ``seed`` pick the
    file, generated once under ``root/raw/``); anything else must be an existing JSON
    Lines file (``split`` is then ignored). Extra keyword arguments go to the dataset
    class (``transform``, ``skip``, ``force_reload``, ``sizes``, ...).

    Raises:
        ValueError: an unknown name that is not an existing file, or an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    key = os.fspath(name_or_path)
    if key == "kindergarten":
        return KindergartenDataset(root, **kwargs)
    if key in ("math1", "math2"):
        return MathCurriculumDataset(root, int(key[-1]), split, seed, **kwargs)
    if key in TASKS:
        return TaskDataset(root, key, split, seed, **kwargs)
    if Path(key).is_file():
        return TextPairDataset(root, key, **kwargs)
    raise ValueError(
        f"unknown dataset {key!r}: not one of the known names ({', '.join(DATASET_NAMES)}) "
        "and not an existing file"
    )
