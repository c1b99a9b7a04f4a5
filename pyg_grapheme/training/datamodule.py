"""GraphemeDataModule: the pair datasets of pyg_grapheme.data behind Lightning's interface."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.parsing import AttributeDict
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from pyg_grapheme.data import FOLLOW_BATCH, read_pairs, resolve_dataset, text_to_graph
from pyg_grapheme.data.datasets import DATASET_NAMES
from pyg_grapheme.data.formats import DataFormatError


class GraphemeDataModule(L.LightningDataModule):
    """Train/validation/test pair datasets, by file or by name.

    Each of ``train_file``, ``val_file`` and ``test_file`` is a JSONL path (QA or math
    curriculum format, auto-detected) or a dataset name (``kindergarten``, ``math1``,
    ``math2``: the shipped set or the seeded curriculum's matching split). A missing
    ``val_file`` validates on ``train_file``'s validation split, which for kindergarten
    and for a plain file is the training set itself (the right check for memorisation);
    a missing ``test_file`` means no test set. Every source is
    checked when the module is built, so a bad file stops the run before training.

    Args:
        train_file, val_file, test_file: paths or names (see above).
        batch_size: graphs (pairs) per batch.
        root: cache folder for processed datasets; ``None`` (default): ``data_cache``
            under the ``Trainer``'s ``default_root_dir`` (the working directory when the
            module is used without a ``Trainer``).
        shuffle: shuffle the training set each epoch.
        predict_texts: questions for ``predict`` (each becomes a text graph).
        num_workers: DataLoader workers.
    """

    #: ``save_hyperparameters``' result (Lightning types the property more loosely); an
    #: annotation only, the property is untouched
    hparams: AttributeDict

    def __init__(
        self,
        train_file: str = "kindergarten",
        val_file: str | None = None,
        test_file: str | None = None,
        batch_size: int = 64,
        root: str | None = None,
        shuffle: bool = True,
        predict_texts: list[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for source in (train_file, val_file, test_file):
            if source is not None:
                check_source(source)
        self.datasets: dict[str, object] = {}

    def _dataset(self, stage: str):
        hp = self.hparams
        source = {"train": hp.train_file, "val": hp.val_file or hp.train_file,
                  "test": hp.test_file}[stage]
        if source is None:
            return None
        if stage not in self.datasets:
            # A name picks its split (kindergarten has one); a file path is used as is.
            self.datasets[stage] = resolve_dataset(source, root=self.cache_root, split=stage)
        return self.datasets[stage]

    @property
    def cache_root(self) -> str:
        """Where processed datasets are cached (see ``root``)."""
        if self.hparams.root is not None:
            return self.hparams.root
        base = self.trainer.default_root_dir if self.trainer is not None else os.getcwd()
        return os.path.join(base, "data_cache")

    def prepare_data(self) -> None:
        # Process (and cache) once, on one process, before DDP ranks read the cache.
        for stage in ("train", "val", "test"):
            self._dataset(stage)

    def _loader(self, stage: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self._dataset(stage),
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            follow_batch=FOLLOW_BATCH,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        if self.hparams.test_file is None:
            raise ValueError("no test set: pass --data.test_file (a JSONL path or a name)")
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        texts = self.hparams.predict_texts
        if not texts:
            raise ValueError("nothing to predict: pass --data.predict_texts or use --text")
        graphs = [text_to_graph(t) for t in texts]
        return DataLoader(
            graphs, batch_size=self.hparams.batch_size, collate_fn=Batch.from_data_list
        )


def check_source(source: str) -> None:
    """Fail early, with one clear message, on an unknown name or a bad data file."""
    if source in DATASET_NAMES:
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"data source {source!r} is neither a file nor a dataset name "
            f"(known names: {', '.join(sorted(DATASET_NAMES))})"
        )
    if path.is_dir():
        raise DataFormatError(source, None, "is a folder, not a JSON Lines file")
    try:
        read_pairs(path)  # raises DataFormatError naming file and line
    except OSError as err:
        raise DataFormatError(source, None, f"cannot be read: {err.strerror or err}") from None
    except RecursionError:
        raise DataFormatError(source, None, "JSON nested too deeply to read") from None
