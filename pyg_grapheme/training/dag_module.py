"""The DAG task for Lightning: its data module and a decoded-text exact-match callback.

Used with :class:`~pyg_grapheme.training.ExpressionModule` (the model and the structural
loss are the expression task's; only the data and the decoding differ)::

    python -m pyg_grapheme fit --config experiments/dag.yaml

:class:`ExpressionModule` scores ``val_graph_exact_match`` (labelled isomorphism of the
hard predicted graph and the target) for any target graph, so it holds for the port DAGs
as is; its ``val_text_exact_match`` decodes trees (:func:`tree_to_polish`) and means
nothing here. :class:`DagTextExactMatch` logs the DAG's own decoded-text match,
``val_dag_text_exact_match`` (:func:`~pyg_grapheme.data.dag.decode_dag` of the hard
graph equals the question). It lives here, not in ``training/``, so as not to change the
module (it recomputes the forward pass of each validation batch; validation is small).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities.parsing import AttributeDict
from torch_geometric.data import Batch

from pyg_grapheme.data.dag import (
    DAG_LEVELS,
    DEFAULT_DAG_SIZES,
    dag_pairs,
    decode_dag,
    read_dag_jsonl,
)
from pyg_grapheme.data.expression import node_labels
from pyg_grapheme.data.graphemes import graphs_to_texts
from pyg_grapheme.data.pair import split_pair_batch
from pyg_grapheme.training.expression_module import PairGraphDataModule

__all__ = ["DagDataModule", "DagTextExactMatch", "decode_predictions"]


def decode_predictions(pred: Batch) -> list[str]:
    """Each predicted graph's hard graph decoded to canonical DAG text."""
    from pyg_grapheme.nn.expression_net import hard_graphs  # data must not import nn early

    return [decode_dag(node_labels(c), e) for c, e in hard_graphs(pred)]


class DagDataModule(PairGraphDataModule):
    """DAG questions paired with their port DAGs (:mod:`pyg_grapheme.data.dag`).

    Args:
        levels: DAG levels (1: one shared subexpression, 2: two); default ``[1]``. Each
            level's splits are concatenated across levels.
        seed: the generator's seed (default ``0``).
        sizes: ``{level: [train, val, test]}`` (default
            :data:`~pyg_grapheme.data.dag.DEFAULT_DAG_SIZES`).
        data_dir: read ``{data_dir}/{split}.jsonl`` (:func:`~pyg_grapheme.data.dag.
            write_dag_task`'s files) instead of generating; ``levels`` then unused.
        batch_size: pairs per batch. predict_texts: questions for ``predict``.
        num_workers: DataLoader workers.
    """

    #: ``save_hyperparameters``' result (Lightning types the property more loosely); an
    #: annotation only, the property is untouched
    hparams: AttributeDict

    def __init__(
        self,
        levels: Sequence[int] = (1,),
        seed: int = 0,
        sizes: dict[int, Sequence[int]] | None = None,
        data_dir: str | None = None,
        batch_size: int = 64,
        predict_texts: list[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_levels(levels, DAG_LEVELS)
        if data_dir is not None and not os.path.isdir(data_dir):
            raise ValueError(f"data_dir {data_dir!r} is not a directory")
        self.datasets: dict[str, list] = {}

    def _dataset(self, split: str) -> list:
        # ExpressionModule.setup reads _dataset("train") for the byte head's prior.
        if split not in self.datasets:
            hp = self.hparams
            if hp.data_dir is not None:
                self.datasets[split] = read_dag_jsonl(os.path.join(hp.data_dir, f"{split}.jsonl"))
            else:
                sizes = self._sizes()
                self.datasets[split] = [
                    p for lv in hp.levels
                    for p in dag_pairs(lv, split, seed=hp.seed,
                                       sizes=tuple(sizes.get(lv, DEFAULT_DAG_SIZES[lv])))
                ]
        return self.datasets[split]



class DagTextExactMatch(L.Callback):
    """Log ``{stage}_dag_text_exact_match`` per validation / test epoch: the fraction of
    questions whose predicted graph decodes (:func:`decode_predictions`) to the question
    itself, i.e. to the same ordered DAG. Prints ``num_examples`` decoded examples.

    Works with any module whose ``forward`` maps a question batch to the prediction
    :class:`~pyg_grapheme.nn.ExpressionNet` returns.
    """

    def __init__(self, num_examples: int = 3) -> None:
        self.num_examples = num_examples
        self._ok: list[bool] = []
        self._examples: list[tuple[str, str]] = []

    def _reset(self) -> None:
        self._ok, self._examples = [], []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def _batch(self, pl_module, batch) -> None:
        inputs, _ = split_pair_batch(batch)
        with torch.no_grad():
            texts = decode_predictions(pl_module(inputs))
        questions = graphs_to_texts(inputs)
        self._ok += [t == q for t, q in zip(texts, questions, strict=True)]
        self._examples += list(zip(questions, texts, strict=True))[: self.num_examples]

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx: int = 0) -> None:
        self._batch(pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx: int = 0) -> None:
        self._batch(pl_module, batch)

    def _log(self, trainer, pl_module, stage: str) -> None:
        if not self._ok:
            return
        value = sum(self._ok) / len(self._ok)
        pl_module.log(f"{stage}_dag_text_exact_match", value, batch_size=len(self._ok))
        if self.num_examples and not trainer.sanity_checking:
            shown = "; ".join(f"{q!r} -> {a!r}" for q, a in self._examples[: self.num_examples])
            pl_module.print(f"dag {stage} text exact {value:.3f}: {shown}")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "test")
