"""Text -> expression graph: ExpressionModule (structural loss only) and its data module."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.parsing import AttributeDict
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from pyg_grapheme.data.curriculum import DEFAULT_SIZES, LEVELS
from pyg_grapheme.data.dag import decode_dag
from pyg_grapheme.data.expression import (
    expression_pairs,
    graph_exact_match,
    node_labels,
    tree_to_polish,
)
from pyg_grapheme.data.graphemes import graphs_to_texts, text_to_graph
from pyg_grapheme.data.pair import FOLLOW_BATCH, split_pair_batch
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn.expression_net import ExpressionNet, hard_graphs
from pyg_grapheme.nn.head import one_hot_bytes
from pyg_grapheme.training.base import InjectedModule

__all__ = ["DECODERS", "ExpressionDataModule", "ExpressionModule", "binarize_penalty",
           "plan_edge_cross_entropy", "score_expressions"]

#: Graph -> text decoders by name: expression trees to Polish notation, port DAGs to
#: canonical DAG text (:func:`~pyg_grapheme.data.dag.decode_dag`).
DECODERS: dict[str, Callable[[list[str], Tensor], str]] = {
    "tree": tree_to_polish, "dag": decode_dag,
}


def _check_decoder(decoder: str) -> Callable[[list[str], Tensor], str]:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {sorted(DECODERS)}, got {decoder!r}")
    return DECODERS[decoder]


#: structural_loss's RuntimeWarning for a solve stopped above its tolerances.
_UNCONVERGED = r"structural_loss: the FGW solve did not converge"


def binarize_penalty(keep: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    r"""Binarisation penalty of the keep gates: :math:`\frac1B \sum_g \sum_{i \in g}
    k_i (1 - k_i)`, 0 exactly when every gate is 0 or 1 (the Bernoulli variance of each
    gate; a concave penalty, so it also breaks a symmetric split of one node's mass
    over several gates).

    Args:
        keep: ``[C]`` keep probabilities in [0, 1]. batch: ``[C]`` graph of each node.
        num_graphs: ``B``.

    Returns:
        A scalar.
    """
    per_graph = keep.new_zeros(num_graphs).index_add_(0, batch, keep * (1 - keep))
    return per_graph.mean() if num_graphs else per_graph.sum()


def plan_edge_cross_entropy(plan: Tensor, pred: Batch, targets: Batch) -> Tensor:
    r"""The edges' cross-entropy against the targets the structural loss's plan maps them
    to (plan detached; the edge analogue of ``plan_cross_entropy``).

    With :math:`P` the plan of a pair (rows: predicted nodes, masses :math:`a_i`; columns:
    target nodes and the deletion dummy) and :math:`B` the target adjacency, the
    probability that the predicted pair :math:`(i, k)` lands on a target edge is
    :math:`q_{ik} = (P B P^\top)_{ik} / (a_i a_k)`, and

    .. math::
        \mathrm{CE}_{edge} = \frac1B \sum_{\text{pairs}} \sum_{(i,k)} a_i a_k\,
            \mathrm{BCE}(\sigma(s_{ik}), q_{ik}), \qquad
        \frac{\partial \mathrm{CE}_{edge}}{\partial s_{ik}} \propto
            a_i a_k\, \sigma(s_{ik}) - (P B P^\top)_{ik} .

    The structural loss's edge term :math:`\sum_{ik} \ell(w_{ik}, \cdot)` is linear in
    :math:`w_{ik}`: its gradient w.r.t. the score is
    :math:`w(1-w)\,(a_i a_k - 2 (PBP^\top)_{ik})`, which vanishes once an edge's
    sigmoid saturates, also where the plan later says it is an edge (measured: every
    DAG edge at ~0 after the warm-up). The cross-entropy's does not (the logistic
    regression gradient :math:`w - q`).

    Args:
        plan: ``[B, n+1, m+1]`` from ``structural_loss(..., return_components=True)``.
        pred: the prediction (``edge_index`` pairs within graphs, ``edge_logit`` ``[P]``,
            ``batch``, ``ptr``). targets: the target batch (``edge_index``, ``batch``,
            ``ptr``).

    Returns:
        A scalar (mean over pairs of graphs).
    """
    P = plan.detach()
    num_graphs, n1, m1 = P.shape
    n, m = n1 - 1, m1 - 1
    adj = torch.zeros(num_graphs, m, m, dtype=P.dtype, device=P.device)
    t_ei = targets.edge_index
    if t_ei.numel():
        tb = targets.batch[t_ei[0]]
        adj[tb, t_ei[0] - targets.ptr[tb], t_ei[1] - targets.ptr[tb]] = 1.0
    Pm = P[:, :n, :m]
    on_edge = Pm @ adj @ Pm.transpose(1, 2)  # [B, n, n]
    mass = P[:, :n, :].sum(-1)  # a_i: each predicted node's mass as the plan carries it
    src, dst = pred.edge_index
    g = pred.batch[src]
    i, k = src - pred.ptr[g], dst - pred.ptr[g]
    weight = mass[g, i] * mass[g, k]
    q = (on_edge[g, i, k] / weight.clamp_min(torch.finfo(P.dtype).tiny)).clamp(0.0, 1.0)
    logit = pred.edge_logit.to(P.dtype)
    ce = F.binary_cross_entropy_with_logits(logit, q, weight=weight, reduction="sum")
    return ce / max(num_graphs, 1)


def score_expressions(pred: Batch, targets: Batch,
                      decoder: str = "tree") -> tuple[list[bool], list[str]]:
    """Per pair: whether the hard predicted graph equals the target graph (labels and
    edges, up to renumbering), and the predicted graph decoded to text (``decoder``:
    ``"tree"`` Polish notation, ``"dag"`` canonical DAG text)."""
    decode = _check_decoder(decoder)
    exact, texts = [], []
    tgt_batch = targets.batch.cpu()
    tgt_edges = targets.edge_index.cpu()
    ebatch = tgt_batch[tgt_edges[0]] if tgt_edges.numel() else tgt_edges[0]
    ptr = targets.ptr.cpu()
    for g, (classes, edges) in enumerate(hard_graphs(pred)):
        labels = node_labels(classes)
        t_labels = node_labels(targets.x[tgt_batch == g].cpu())
        t_edges = tgt_edges[:, ebatch == g] - ptr[g]
        exact.append(graph_exact_match(labels, edges, t_labels, t_edges))
        texts.append(decode(labels, edges) if labels else "")
    return exact, texts


class ExpressionModule(InjectedModule):
    r"""Train :class:`~pyg_grapheme.nn.ExpressionNet` to turn a question ``(+ (* 3 4) 5)``
    into its expression tree, with :func:`~pyg_grapheme.loss.structural_loss` (and
    optional terms on its plan; no reading order):

    .. math::
        \mathcal L = \mathrm{structural\_loss}_{\alpha,\beta,\gamma}\big(f_\theta(G_{in}),
            \mathrm{onehot}(T)\big) \;[+\; \lambda_{ce}\, \mathrm{CE}_{plan}]
            \;[+\; \lambda_{e}\, \mathrm{CE}_{edge}]
            \;[+\; \lambda_{bin} \textstyle\sum_i k_i (1 - k_i)]

    The target :math:`T` is the tree of :mod:`pyg_grapheme.data.expression` (argument
    order as order edges); predicted node masses are the keep gates, edges the
    :class:`~pyg_grapheme.nn.EdgeHead`'s weights. ``ce_weight`` (default 0, off) adds the
    plan-weighted cross-entropy of the labels, the auxiliary term measured against the
    loss alone in docs/expression.md.

    Logged per validation epoch: ``val_graph_exact_match`` (hard graph equals the target,
    labels and edges), ``val_text_exact_match`` (decoded Polish text equals the
    question), the same per level (``..._level1``) and ``val_exact_match`` (= the graph
    one, what the CLI's best checkpoint monitors).

    The network, the optimizer and the scheduler are injected (LightningCLI
    ``class_path``); gradient clipping is the ``Trainer``'s ``gradient_clip_val``
    (experiments/expression.yaml: 1.0). Checkpoints are rebuilt and old flat ones
    translated as for :class:`~pyg_grapheme.training.GraphemeModule`.

    Args:
        model: the network (default :class:`~pyg_grapheme.nn.ExpressionNet` ``()``).
        alpha, beta, gamma, reg, node_cost, indel_cost: structural loss options.
        beta_warmup_steps: train with ``beta = 0`` (nodes only) for this many steps.
            While the labels are unlearnt the plan is diffuse and the edge term pushes
            every edge down; the sigmoid saturates and those edges never come back
            (measured: the edge term stuck at exactly 3.0 or 6.0 of 6 target edges on
            level 2). With the labels learnt first the plan is sharp when edges start.
        ce_weight: weight of the auxiliary plan cross-entropy (0: structural loss only).
        edge_ce_weight: :math:`\lambda_{e}`, weight of the edges' cross-entropy against
            the plan's targets (:func:`plan_edge_cross_entropy`; counted from the end of
            ``beta_warmup_steps``, as the edge term; 0: off).
        integral_mass: the loss compares the hard graph's nodes: each node's mass is its
            keep gate rounded (1 when :math:`k_i > 0.5`), with the straight-through
            gradient (``structural_loss(integral_mass=True)``). With fractional masses
            three pooled nodes of keep 1/3 stand for one target node at loss 0, though at
            inference none of them exists (measured on the DAG task, docs/expression.md).
        integral_mass_after: with ``integral_mass``, fractional masses until this global
            step, integral from it on (0: from the start). Measured (docs/expression.md):
            from step 0 or after a soft phase, the hard node set flickers (a mass-0 node
            gets the same pull as every other candidate for a missing node); the DAG
            config uses ``binarize_weight`` instead.
        binarize_weight: :math:`\lambda_{bin}`, weight of the binarisation penalty
            :math:`\sum_i k_i (1 - k_i)` per graph (mean over graphs), which is 0 only for
            keep gates at 0 or 1 (0: off).
        binarize_after: the penalty acts from this global step on (default 0). Measured
            on the DAG task: from step 0 it fixed the node count by step 140, before the
            labels were learnt, and the kept number nodes never learnt their digits.
        warn_unconverged: let ``structural_loss``'s ``RuntimeWarning`` for a solve that
            stops above its tolerances through (default ``False``: it fired on most
            steps; measured in docs/expression.md, the gradient's direction agrees with a
            converged float64 solve to a cosine >= 0.997). Either way the fraction of
            such pairs is logged as ``{stage}_fgw_unconverged``.
        decoder: how a hard graph becomes text for ``val_text_exact_match`` and
            ``predict``: ``"tree"`` (Polish notation, :func:`tree_to_polish`) or
            ``"dag"`` (canonical DAG text, :func:`~pyg_grapheme.data.dag.decode_dag`;
            experiments/dag.yaml).
        optimizer: ``parameters -> Optimizer`` (default Adam, lr 1e-3).
        lr_scheduler: ``optimizer -> LRScheduler``, stepped every epoch (``None``: none).
        init_head_prior: before training from scratch, set the byte head's output bias to
            the training labels' byte frequencies
            (:meth:`~pyg_grapheme.nn.ByteHead.init_output_prior`): with a uniform head
            every label costs :math:`\log 256` = the indel cost, and the keep gates
            start by spreading the target's mass thinly over every pooled node.
        num_examples: decoded examples printed per validation epoch.
    """

    network = ExpressionNet
    flat_optimizer = ("lr", "weight_decay")

    def __init__(
        self,
        model: nn.Module | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.0,
        beta_warmup_steps: int = 0,
        reg: float = 0.05,
        node_cost: str = "nll",
        indel_cost: float | None = None,
        ce_weight: float = 0.0,
        edge_ce_weight: float = 0.0,
        integral_mass: bool = False,
        integral_mass_after: int = 0,
        binarize_weight: float = 0.0,
        binarize_after: int = 0,
        warn_unconverged: bool = False,
        decoder: str = "tree",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        init_head_prior: bool = True,
        num_examples: int = 3,
    ) -> None:
        super().__init__()
        _check_decoder(decoder)
        if integral_mass_after < 0:
            raise ValueError(f"integral_mass_after must be >= 0, got {integral_mass_after}")
        if edge_ce_weight < 0:
            raise ValueError(f"edge_ce_weight must be >= 0, got {edge_ce_weight}")
        if binarize_after < 0:
            raise ValueError(f"binarize_after must be >= 0, got {binarize_after}")
        if binarize_weight < 0:
            raise ValueError(f"binarize_weight must be >= 0, got {binarize_weight}")
        self._save_hparams()
        self.model = ExpressionNet() if model is None else model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.examples: list[tuple[str, str, str]] = []

    def forward(self, inputs: Batch) -> Batch:
        return self.model(inputs)

    def _step(self, batch, stage: str) -> tuple[Tensor, Batch, Batch, Batch]:
        inputs, targets = split_pair_batch(batch)
        hp = self.hparams
        n = batch.num_graphs
        pred = self.model(inputs)
        warm = stage == "train" and self.global_step < hp.beta_warmup_steps
        with warnings.catch_warnings():
            if not hp.get("warn_unconverged", False):  # logged below instead
                warnings.filterwarnings("ignore", _UNCONVERGED, RuntimeWarning)
            loss, parts = structural_loss(
                pred, one_hot_bytes(targets), alpha=hp.alpha, beta=0.0 if warm else hp.beta,
                gamma=hp.gamma,
                reg=hp.reg, node_cost=hp.node_cost, indel_cost=hp.indel_cost,
                integral_mass=self._integral(), return_components=True,
            )
        # the solver's own warning threshold (10x its float32 tolerances, 1e-4)
        off = (parts["residual"] > 1e-3) | (parts["marginal_err"] > 1e-3)
        stats = {f"{stage}_fgw_unconverged": off.float().mean(),
                 f"{stage}_structural_loss": loss}
        total = loss
        for name in ("node", "edge"):
            stats[f"{stage}_{name}"] = parts[name].mean()
        if hp.ce_weight > 0:
            target_x = one_hot_bytes(targets).x
            ce = parts["plan_cross_entropy"](pred.logits, target_x)
            stats[f"{stage}_cross_entropy"] = ce
            total = total + hp.ce_weight * ce
        if hp.get("edge_ce_weight", 0.0) > 0 and not warm:
            edge_ce = plan_edge_cross_entropy(parts["plan"], pred, targets)
            stats[f"{stage}_edge_cross_entropy"] = edge_ce
            total = total + hp.edge_ce_weight * edge_ce
        late = stage == "train" and self.global_step < hp.get("binarize_after", 0)
        if hp.get("binarize_weight", 0.0) > 0 and not late:
            split = binarize_penalty(pred.keep, pred.batch, n)
            stats[f"{stage}_binarize"] = split
            total = total + hp.binarize_weight * split
        if not torch.isfinite(total):
            raise FloatingPointError(f"{stage} loss is not finite ({total.item()})")
        stats[f"{stage}_loss"] = total
        kept = torch.zeros(n, device=pred.keep.device).index_add_(
            0, pred.batch, (pred.keep > 0.5).float())
        tgt = torch.bincount(targets.batch, minlength=n).float()
        stats[f"{stage}_node_count_error"] = (kept - tgt).abs().mean()
        stats[f"{stage}_merge_fraction"] = pred.merged.float().mean()
        self.log_step_stats(stage, stats, n, prog_bar=(f"{stage}_loss",))
        return total, pred, inputs, targets

    def _integral(self) -> bool:
        hp = self.hparams
        return bool(hp.get("integral_mass", False)) and (
            self.global_step >= hp.get("integral_mass_after", 0))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_head_prior:
            self.init_head_prior()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        _, pred, inputs, targets = self._step(batch, stage)
        exact, texts = score_expressions(pred, targets, self.hparams.get("decoder", "tree"))
        questions = graphs_to_texts(inputs)
        graph_ok = torch.tensor(exact, dtype=torch.float)
        text_ok = torch.tensor([a == q for a, q in zip(texts, questions, strict=True)],
                               dtype=torch.float)
        n = len(exact)
        for name, ok in (("graph", graph_ok), ("text", text_ok)):
            self.log(f"{stage}_{name}_exact_match", ok.mean(), batch_size=n, prog_bar=True)
            level = getattr(batch, "level", None)
            if level is not None:
                for lv in LEVELS:
                    sel = level.cpu() == lv
                    if bool(sel.any()):
                        # weighted by that level's count in the batch: an exact epoch mean
                        self.log(f"{stage}_{name}_exact_match_level{lv}", ok[sel].mean(),
                                 batch_size=int(sel.sum()))
        self.log(f"{stage}_exact_match", graph_ok.mean(), batch_size=n)
        # the answer table's target column: a correct tree decodes to the question itself
        self.examples += list(zip(questions, texts, questions, strict=True))

    def on_validation_epoch_start(self) -> None:
        self.examples = []

    def on_test_epoch_start(self) -> None:
        self.examples = []

    def on_validation_epoch_end(self) -> None:
        if self.hparams.num_examples and self.examples and not self.trainer.sanity_checking:
            shown = "; ".join(f"{q!r} -> {a!r}" for q, a, _ in
                              self.examples[: self.hparams.num_examples])
            self.print(f"epoch {self.current_epoch}: {shown}")

    def predict_step(self, batch, batch_idx: int) -> list[str]:
        inputs = split_pair_batch(batch)[0] if "x_s" in batch else batch
        pred = self.model(inputs)
        decode = _check_decoder(self.hparams.get("decoder", "tree"))
        return [decode(node_labels(c), e) if c.numel() else "" for c, e in hard_graphs(pred)]


class PairGraphDataModule(L.LightningDataModule):
    """Loaders shared by the graph-target data modules: a subclass sets ``self.datasets``
    and builds each split's list of pairs in ``_dataset(split)`` (``hparams``:
    ``batch_size``, ``num_workers``, ``predict_texts``)."""

    #: ``save_hyperparameters``' result (Lightning types the property more loosely); an
    #: annotation only, the property is untouched
    hparams: AttributeDict
    datasets: dict[str, list]

    def _dataset(self, split: str) -> list:
        raise NotImplementedError

    def _check_levels(self, levels: Sequence[int], known: Sequence[int]) -> None:
        bad = [lv for lv in levels if lv not in known]
        if bad or not levels:
            raise ValueError(f"levels must be a non-empty subset of {list(known)}, got "
                             f"{list(levels)}")

    def _sizes(self) -> dict[int, Any]:  # [train, val, test] as the YAML gave it
        # a YAML / command-line dict arrives with string keys ('1')
        return {int(k): v for k, v in (self.hparams.sizes or {}).items()}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(self._dataset(split), batch_size=self.hparams.batch_size,
                          shuffle=shuffle, follow_batch=FOLLOW_BATCH,
                          num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        texts = self.hparams.predict_texts
        if not texts:
            raise ValueError("nothing to predict: pass --data.predict_texts")
        return DataLoader([text_to_graph(t) for t in texts],
                          batch_size=self.hparams.batch_size, collate_fn=Batch.from_data_list)


class ExpressionDataModule(PairGraphDataModule):
    """The math curriculum's questions paired with their expression trees
    (:func:`~pyg_grapheme.data.expression.expression_pairs`), levels mixed.

    Args:
        levels: curriculum levels to use (default ``[1, 2]``); each level's train, val
            and test splits are concatenated across levels.
        seed: the curriculum's split seed (default ``0``, the package's splits).
        sizes: ``{level: [train, val, test]}`` (default the curriculum's
            :data:`~pyg_grapheme.data.curriculum.DEFAULT_SIZES`).
        batch_size: pairs per batch.
        predict_texts: questions for ``predict``.
        num_workers: DataLoader workers.
    """

    #: ``save_hyperparameters``' result (Lightning types the property more loosely); an
    #: annotation only, the property is untouched
    hparams: AttributeDict

    def __init__(
        self,
        levels: Sequence[int] = (1, 2),
        seed: int = 0,
        sizes: dict[int, Sequence[int]] | None = None,
        batch_size: int = 64,
        predict_texts: list[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_levels(levels, LEVELS)
        self.datasets: dict[str, list] = {}

    def _dataset(self, split: str) -> list:
        if split not in self.datasets:
            hp = self.hparams
            sizes = self._sizes()
            self.datasets[split] = [
                p for lv in hp.levels
                for p in expression_pairs(lv, split, seed=hp.seed,
                                          sizes=tuple(sizes.get(lv, DEFAULT_SIZES[lv])))
            ]
        return self.datasets[split]

