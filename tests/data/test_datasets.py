import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

from pyg_grapheme.data import (
    FOLLOW_BATCH,
    GRAPHEME_WIDTH,
    DataFormatError,
    KindergartenDataset,
    MathCurriculumDataset,
    PairData,
    TextPairDataset,
    graph_to_text,
    graphs_to_texts,
    kindergarten_path,
    read_pairs,
    resolve_dataset,
    split_pair_batch,
)
from pyg_grapheme.data.curriculum import write_curriculum
from pyg_grapheme.data.datasets import CacheError
from pyg_grapheme.data.graphemes import grapheme_spans

PROTOTYPE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "prototype-data"
needs_prototype = pytest.mark.skipif(
    not PROTOTYPE.is_dir(), reason=f"prototype data files not found at {PROTOTYPE}"
)


def texts(pair: PairData) -> tuple[str, str]:
    return graph_to_text(pair.side("s")), graph_to_text(pair.side("t"))


def write_qa(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"input": s, "target": t}) + "\n" for s, t in pairs))
    return path


# ---------------------------------------------------------------- the shipped set


def test_kindergarten_asset_contents():
    path = kindergarten_path()
    assert isinstance(path, Path) and path.is_file()
    pairs = read_pairs(path)
    assert len(pairs) == 65
    inputs = [s for s, _ in pairs]
    assert len(set(inputs)) == len(inputs)  # one answer per question: learnable by heart
    targets = {t for _, t in pairs}
    assert {"café", "naïve", "🐱"} <= targets
    assert sum(not t.isascii() for t in targets) >= 3
    for _, t in pairs:
        assert 1 <= len(t.split()) <= 3
        # Every target grapheme fits the slots of x: the model can emit it exactly.
        offsets = [0, *torch.tensor(grapheme_spans(t)).cumsum(0).tolist()]
        for a, b in zip(offsets, offsets[1:], strict=False):
            assert len(t[a:b].encode()) <= GRAPHEME_WIDTH
    topics = {json.loads(line)["topic"] for line in path.read_text("utf-8").splitlines()}
    assert {"colours", "counts", "animals", "opposites", "letters", "facts"} <= topics


def test_kindergarten_dataset_round_trips(tmp_path):
    dataset = KindergartenDataset(tmp_path)
    assert len(dataset) == 65
    assert [texts(d) for d in dataset] == read_pairs(kindergarten_path())


# ---------------------------------------------------------------- prototype files


@needs_prototype
@pytest.mark.parametrize(
    "name", ["simple_qa.jsonl", "kindergarten_level_1.jsonl", "math_level_1.jsonl"]
)
def test_prototype_files_as_datasets(tmp_path, name):
    dataset = TextPairDataset(tmp_path, PROTOTYPE / name)
    pairs = read_pairs(PROTOTYPE / name)
    assert len(dataset) == len(pairs)
    assert [texts(d) for d in dataset] == pairs


# ---------------------------------------------------------------- batching


def test_batches_with_follow_batch_and_split(tmp_path):
    pairs = [("What?", "Yes"), ("a", "bcdef"), ("caf\u00e9 \U0001F431", ""), ("\r\nok", "z z")]
    dataset = TextPairDataset(tmp_path, write_qa(tmp_path / "p.jsonl", pairs))
    batch = next(iter(DataLoader(dataset, batch_size=4, follow_batch=FOLLOW_BATCH)))
    n_s = [dataset[i].x_s.size(0) for i in range(4)]
    n_t = [dataset[i].x_t.size(0) for i in range(4)]
    assert n_s == [5, 1, 6, 3] and n_t == [3, 5, 0, 3]
    assert batch.x_s_batch.tolist() == [i for i, n in enumerate(n_s) for _ in range(n)]
    assert batch.x_t_batch.tolist() == [i for i, n in enumerate(n_t) for _ in range(n)]
    # Target edges offset by target node counts only: graph 3's edges start at 3 + 5 + 0.
    assert batch.edge_index_t[:, -2:].tolist() == [[8, 9], [9, 10]]
    inputs, targets = split_pair_batch(batch)
    assert graphs_to_texts(inputs) == [s for s, _ in pairs]
    assert graphs_to_texts(targets) == [t for _, t in pairs]
    assert targets.ptr.tolist() == [0, 3, 8, 8, 11]


def test_single_record_file(tmp_path):
    dataset = TextPairDataset(tmp_path, write_qa(tmp_path / "one.jsonl", [("hi", "there")]))
    assert len(dataset) == 1 and texts(dataset[0]) == ("hi", "there")
    again = TextPairDataset(tmp_path, tmp_path / "one.jsonl")
    assert texts(again[0]) == ("hi", "there")


def test_skip_edges_are_part_of_the_cache_key(tmp_path):
    path = write_qa(tmp_path / "p.jsonl", [("abcd", "xyz")])
    plain = TextPairDataset(tmp_path, path)
    skipped = TextPairDataset(tmp_path, path, skip=(2,))
    assert plain.processed_dir != skipped.processed_dir
    assert "edge_attr_s" not in plain[0]
    assert skipped[0].edge_attr_s.tolist() == [1, 1, 1, 2, 2]


# ---------------------------------------------------------------- caching


def test_processed_once_then_loaded_from_cache(tmp_path, monkeypatch):
    path = write_qa(tmp_path / "p.jsonl", [("a", "b"), ("c", "d")])
    calls = []
    original = TextPairDataset.process

    def counting(self):
        calls.append(self.source_hash)
        original(self)

    monkeypatch.setattr(TextPairDataset, "process", counting)
    TextPairDataset(tmp_path / "root", path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no weights_only fallback warning on load
        cached = TextPairDataset(tmp_path / "root", path)
    assert len(calls) == 1
    assert [texts(d) for d in cached] == [("a", "b"), ("c", "d")]


def test_changed_source_is_reprocessed(tmp_path):
    path = write_qa(tmp_path / "p.jsonl", [("sky", "blue")])
    first = TextPairDataset(tmp_path / "root", path)
    stat = os.stat(path)
    # Same length, same mtime: only the content differs, and the content is the key.
    write_qa(path, [("sky", "bleu")])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = TextPairDataset(tmp_path / "root", path)
    assert texts(second[0]) == ("sky", "bleu")
    assert second.processed_dir != first.processed_dir
    write_qa(path, [("sky", "blue"), ("grass", "green")])
    assert len(TextPairDataset(tmp_path / "root", path)) == 2


def test_bad_file_raises_and_caches_nothing(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n{"input": "", "target": "c"}\n')
    with pytest.raises(DataFormatError, match=f"{path}:2: empty input"):
        TextPairDataset(tmp_path / "root", path)
    assert not list((tmp_path / "root").rglob("data.pt"))


def test_interrupted_cache_write_leaves_no_cache(tmp_path, monkeypatch):
    path = write_qa(tmp_path / "p.jsonl", [("a", "b"), ("c", "d")])

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        TextPairDataset(tmp_path / "root", path)
    leftovers = [p.name for p in (tmp_path / "root").rglob("*") if p.is_file()]
    assert "data.pt" not in leftovers and not [n for n in leftovers if n.endswith(".tmp")]
    monkeypatch.undo()
    assert len(TextPairDataset(tmp_path / "root", path)) == 2


def test_full_disk_while_caching_is_an_oserror_and_leaves_nothing(tmp_path, monkeypatch):
    path = write_qa(tmp_path / "p.jsonl", [("a", "b"), ("c", "d")])

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left") as info:
        TextPairDataset(tmp_path / "root", path)
    assert info.value.errno == 28 and info.value.filename.endswith("data.pt")
    assert not (tmp_path / "root" / "processed").exists()
    monkeypatch.undo()
    assert len(TextPairDataset(tmp_path / "root", path)) == 2


def test_pre_filter_and_transform(tmp_path):
    path = write_qa(tmp_path / "p.jsonl", [("a", "b"), ("long input", "c")])
    dataset = TextPairDataset(
        tmp_path, path, pre_filter=lambda d: d.x_s.size(0) > 1,
        transform=lambda d: (d.__setattr__("seen", torch.tensor([1])), d)[1],
    )
    assert len(dataset) == 1 and texts(dataset[0]) == ("long input", "c")
    assert dataset[0].seen.tolist() == [1]


class _Payload:
    """Pickles as a call to ``open(marker, "w")``: loading it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_cache_payload_does_not_run(tmp_path):
    path = write_qa(tmp_path / "p.jsonl", [("a", "b")])
    dataset = TextPairDataset(tmp_path / "root", path)
    marker = tmp_path / "marker"
    cache = Path(dataset.processed_paths[0])
    torch.save((_Payload(marker), {}, PairData), cache)
    with pytest.raises(CacheError, match="refusing to load the dataset cache"):
        TextPairDataset(tmp_path / "root", path)
    assert not marker.exists()
    # PyG's own pre_transform.pt / pre_filter.pt checks are not used either.
    cache.unlink()
    torch.save(_Payload(marker), cache.parent / "pre_transform.pt")
    torch.save(_Payload(marker), cache.parent / "pre_filter.pt")
    assert len(TextPairDataset(tmp_path / "root", path)) == 1
    assert not marker.exists()


def test_damaged_cache_is_a_clear_error(tmp_path):
    path = write_qa(tmp_path / "p.jsonl", [("a", "b")])
    cache = Path(TextPairDataset(tmp_path / "root", path).processed_paths[0])
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(CacheError, match="damaged"):
        TextPairDataset(tmp_path / "root", path)
    torch.save({"not": "a cache"}, cache)
    with pytest.raises(CacheError, match="not a pyg_grapheme dataset cache"):
        TextPairDataset(tmp_path / "root", path)


def _mark_a(d):
    d.mark = torch.tensor([1])
    return d


def _mark_b(d):
    d.mark = torch.tensor([2])
    return d


def test_pre_transform_and_pre_filter_are_part_of_the_cache_key(tmp_path):
    path = write_qa(tmp_path / "p.jsonl", [("a", "b"), ("long input", "c")])
    root = tmp_path / "root"
    assert TextPairDataset(root, path, pre_transform=_mark_a)[0].mark.tolist() == [1]
    assert TextPairDataset(root, path, pre_transform=_mark_b)[0].mark.tolist() == [2]
    assert "mark" not in TextPairDataset(root, path)[0]
    # Two lambdas with the same repr but different code: different caches.
    assert len(TextPairDataset(root, path, pre_filter=lambda d: d.x_s.size(0) > 1)) == 1
    assert len(TextPairDataset(root, path, pre_filter=lambda d: d.x_s.size(0) > 0)) == 2
    # The same function again: the cache is reused.
    before = {p.name for p in (root / "processed").iterdir()}
    TextPairDataset(root, path, pre_transform=_mark_a)
    assert {p.name for p in (root / "processed").iterdir()} == before


def test_failed_build_leaves_no_empty_folder(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "target": "b"}\n{"input": 3}\n')
    with pytest.raises(DataFormatError):
        TextPairDataset(tmp_path / "root", bad)
    assert not (tmp_path / "root" / "processed").exists()
    path = write_qa(tmp_path / "p.jsonl", [("a", "b")])
    TextPairDataset(tmp_path / "root", path)
    with pytest.raises(ValueError, match="pre_filter removed every pair"):
        TextPairDataset(tmp_path / "root", path, pre_filter=lambda d: False)
    assert len(list((tmp_path / "root" / "processed").iterdir())) == 1


def test_deeply_nested_json_is_a_format_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"input": ' + "[" * 100_000 + "]" * 100_000 + ', "target": "b"}\n')
    with pytest.raises(DataFormatError, match="nested too deeply"):
        TextPairDataset(tmp_path / "root", path)


# ---------------------------------------------------------------- math curriculum


def test_math_curriculum_dataset_generates_raw_and_splits(tmp_path):
    splits = {s: MathCurriculumDataset(tmp_path, 1, split=s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [960, 120, 120]
    inputs = [graph_to_text(d.side("s")) for ds in splits.values() for d in ds]
    assert len(set(inputs)) == 1200
    write_curriculum(tmp_path / "ref", level=1, seed=0)
    raw = tmp_path / "raw" / "math1-seed0"
    for s in splits:
        assert (raw / f"{s}.jsonl").read_bytes() == (tmp_path / "ref" / f"{s}.jsonl").read_bytes()
    source, target = texts(splits["test"][0])
    assert source.startswith("(") and "." not in target


def test_math_dataset_small_sizes_and_seed(tmp_path):
    a = MathCurriculumDataset(tmp_path, level=2, split="val", seed=1, sizes=(4, 3, 2))
    b = MathCurriculumDataset(tmp_path, level=2, split="val", seed=2, sizes=(4, 3, 2))
    assert len(a) == len(b) == 3
    assert [texts(d) for d in a] != [texts(d) for d in b]
    with pytest.raises(ValueError, match="known splits"):
        MathCurriculumDataset(tmp_path, level=1, split="dev")


# ---------------------------------------------------------------- resolve_dataset


def test_resolve_dataset_names_and_paths(tmp_path):
    assert isinstance(resolve_dataset("kindergarten", tmp_path), KindergartenDataset)
    math = resolve_dataset("math1", tmp_path, "val")
    assert isinstance(math, MathCurriculumDataset) and (math.level, math.split) == (1, "val")
    path = write_qa(tmp_path / "mine.jsonl", [("q", "a")])
    mine = resolve_dataset(path, tmp_path)
    assert type(mine) is TextPairDataset and len(mine) == 1
    assert len(resolve_dataset(str(path), tmp_path, "test")) == 1


def test_resolve_dataset_unknown_name_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="kindergarten, math1, math2") as info:
        resolve_dataset("math3", tmp_path)
    assert "'math3'" in str(info.value)
    with pytest.raises(ValueError, match="known splits: train, val, test"):
        resolve_dataset("kindergarten", tmp_path, "training")


# ---------------------------------------------------------------- python -m ...summary


def test_summary_of_the_shipped_set(capsys):
    from pyg_grapheme.data.summary import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "pairs       65" in out and "65/65 pairs decode exactly" in out
    assert "'café'" in out and "['🐱']" in out


@needs_prototype
def test_summary_of_a_math_file(capsys):
    from pyg_grapheme.data.summary import main

    assert main([str(PROTOTYPE / "math_level_1.jsonl")]) == 0
    assert "100/100" in capsys.readouterr().out


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_build_equals_one_collate(tmp_path, monkeypatch, chunk):
    """The cache is built CHUNK pairs at a time (bounded memory); joined, the chunks are
    exactly what collating every pair at once gives (10 pairs: chunks of 3 end with one)."""
    from torch_geometric.data import InMemoryDataset

    import pyg_grapheme.data.datasets as datasets

    texts = [("What is 2+2?", "4"), ("caf\u00e9 \U0001F431", "ok"), ("a", "bcd"), ("x y", "")]
    texts = [(f"{q} {i}", a or "e") for i in range(3) for q, a in texts][:10]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"input": q, "target": a}) + "\n" for q, a in texts))
    monkeypatch.setattr(datasets, "CHUNK", chunk)
    ds = TextPairDataset(tmp_path / f"cache{chunk}", path, log=False)
    data, slices = InMemoryDataset.collate([PairData.from_texts(q, a) for q, a in texts])
    assert len(ds) == len(texts)
    for key, value in data.to_dict().items():
        assert torch.equal(ds._data[key], value), key
        assert torch.equal(ds.slices[key], slices[key]), key
    for i, (q, a) in enumerate(texts):
        assert graph_to_text(ds[i].side("s")) == q and graph_to_text(ds[i].side("t")) == a
