"""GraphemeModule: the LightningModule that trains GraphTransformNet (the segmentation
likelihood by default; the structural loss and the aligned cross-entropy as options)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter
from torchmetrics.text import CharErrorRate

from pyg_grapheme.data.graphemes import GRAPHEME_WIDTH, graphs_to_texts
from pyg_grapheme.data.pair import split_pair_batch
from pyg_grapheme.loss import StructuralLoss, segmentation_nll
from pyg_grapheme.nn.head import one_hot_bytes
from pyg_grapheme.nn.transform_net import GraphTransformNet, decode_graphs
from pyg_grapheme.training.base import InjectedModule, class_path

#: The plan of the aligned cross-entropy when no structural loss is trained.
_PLAN_ONLY = StructuralLoss(alpha=0.0, beta=0.0, gamma=0.0)


def aligned_cross_entropy(pred: Batch, targets: Batch, plan_cross_entropy) -> Tensor:
    """Mean over pairs of the byte head's cross-entropy per aligned output node.

    A pair whose output chain has as many nodes as its target is aligned in reading order
    (node ``i`` with grapheme ``i``: the only monotone alignment of two equal chains); the
    other pairs use ``plan_cross_entropy``, the structural loss's plan-weighted version.
    ``pred.logits`` is ``[N', W, 256]``, ``targets.x`` the target byte slots ``[N, W]``.
    """
    num_graphs = int(targets.num_graphs)
    out_n = torch.bincount(pred.batch, minlength=num_graphs)
    tgt_n = torch.bincount(targets.batch, minlength=num_graphs)
    same = out_n == tgt_n
    total = pred.logits.new_zeros(())
    if not bool(same.all()):
        target_x = F.one_hot(targets.x.long(), pred.logits.size(-1)).float()
        total = plan_cross_entropy(pred.logits, target_x, reduction="none")[~same].sum()
    if bool(same.any()):
        keep_pred, keep_tgt = same[pred.batch], same[targets.batch]
        per_node = F.cross_entropy(
            pred.logits[keep_pred].transpose(1, 2), targets.x[keep_tgt].long(),
            reduction="none",
        ).mean(1)
        total = total + scatter(
            per_node, targets.batch[keep_tgt], 0, num_graphs, reduce="mean"
        ).sum()
    return total / max(num_graphs, 1)


class GraphemeModule(InjectedModule):
    r"""Train a :class:`~pyg_grapheme.nn.GraphTransformNet` on (input, target) text pairs.

    The training loss is a weighted sum of

    .. math::
        \mathcal{L} = \lambda_{seg}\, \mathrm{segmentation\_nll}
        + \mathrm{loss}(f_\theta(G_{in}), \mathrm{onehot}(G_{tgt}))
        + \lambda_{ce}\, \mathrm{CE}_{\text{aligned}}
        - \lambda_{b}\, \overline{\log P(m)}

    - :func:`~pyg_grapheme.loss.segmentation_nll` (default, weight 1): the exact
      negative log-likelihood of the target chain summed over every way the pool can
      segment the model's canvas (a forward algorithm). It trains the byte head, the
      features and the pool's threshold with exact gradients and needs no target count;
      its ``align`` is the network's ``canvas_align`` (``"left"`` for networks without one).
    - ``loss``, a :class:`~pyg_grapheme.loss.StructuralLoss` on the pooled answer graph
      (off by default; see docs/training.md for what it buys): the optimal-transport
      graph edit distance surrogate; without forcing, its count gradient reaches the
      threshold through the pool's expected-count estimator.
    - **Segmentation forcing** (``segment_forcing=True``, training only): the pool is
      told each answer's grapheme count and cuts where its own merge logits are lowest;
      :math:`-\overline{\log P(m)}` of those cuts (``boundary_weight``) trains the
      threshold. Validation, test and prediction always threshold.
    - :math:`\mathrm{CE}_{\text{aligned}}` (``ce_weight``): the byte head's
      cross-entropy, node :math:`i` against grapheme :math:`i` where the lengths agree,
      the structural plan elsewhere (``loss``'s, or a node-free one when ``loss`` is off).

    The network, the structural loss, the optimizer and the scheduler are injected, as
    LightningCLI does from a YAML (``class_path`` / ``init_args``)::

        GraphemeModule(model=GraphTransformNet(hidden=64),
                       optimizer=functools.partial(torch.optim.Adam, lr=3e-3))

    Gradient clipping is the ``Trainer``'s (``gradient_clip_val``; the shipped configs
    clip the 2-norm at 0.25, measured in docs/training.md). Checkpoints keep ``class_path``
    configs, so :meth:`load_from_checkpoint` rebuilds the network; a network built in
    Python has none and must be passed again (``model=...``). Checkpoints with the old
    flat hyperparameters (``hidden``, ``block``, ``lr``, ...) are translated.

    Args:
        model: the network (default :class:`~pyg_grapheme.nn.GraphTransformNet` ``()``).
        loss: the structural loss module (``loss(pred, target, return_components=True)
            -> (value, parts)``); ``None``: off.
        segmentation_weight: weight of :func:`~pyg_grapheme.loss.segmentation_nll`.
        ce_weight: weight of the aligned cross-entropy.
        segment_forcing: force the target's node count in training (see above).
        boundary_weight: weight of the forced decisions' negative log-likelihood.
        optimizer: ``parameters -> Optimizer`` (default Adam, lr 1e-3).
        lr_scheduler: ``optimizer -> LRScheduler``, stepped every epoch (``None``: none).
        init_head_prior: before training from scratch, set the byte head's output bias
            to the training answers' byte frequencies
            (:meth:`~pyg_grapheme.nn.ByteHead.init_output_prior`). Off by default: a
            model that starts at the answers' marginal sits where the gradient of every
            shared weight averages out over the questions (measured: place value held
            at chance with it, docs/model.md); memorising small sets can be faster with it.
        num_examples: decoded examples logged per validation epoch.
    """

    network = GraphTransformNet
    flat_dropped = ("grad_clip", "warmup_epochs", "cosine", "min_lr_ratio")
    # run_positions and canvas_scale came in at 0 / 1, then became 32 / 0.02; pool_tau
    # was 1 until it became 0.5; relative_positions came in at 0, then became 32
    # (checkpoints since spell them out, as every argument)
    network_defaults_before = {"run_positions": 0, "canvas_scale": 1.0, "pool_tau": 1.0,
                               "relative_positions": 0, "canvas_align": "left"}

    def __init__(
        self,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        segmentation_weight: float = 1.0,
        ce_weight: float = 0.0,
        segment_forcing: bool = False,
        boundary_weight: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        init_head_prior: bool = False,
        num_examples: int = 4,
    ) -> None:
        super().__init__()
        self._save_hparams()
        self.model = GraphTransformNet() if model is None else model
        self.loss = loss
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.val_cer = CharErrorRate()
        self.examples: list[tuple[str, str, str]] = []

    @classmethod
    def _upgrade_flat(cls, flat: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
        weights = {k: hparams.pop(k) for k in ("alpha", "beta", "gamma", "reg") if k in hparams}
        if max(weights.get(k, 0.0) for k in ("alpha", "beta", "gamma")) > 0:
            hparams["loss"] = {"class_path": class_path(StructuralLoss), "init_args": weights}
        if flat.get("warmup_epochs") or flat.get("cosine"):
            warnings.warn(
                "the checkpoint's warm-up/cosine schedule (warmup_epochs, cosine) is not "
                "carried over: pass lr_scheduler (e.g. torch.optim.lr_scheduler.LinearLR "
                "or CosineAnnealingLR)", UserWarning, stacklevel=3)
        return hparams

    def forward(self, inputs):
        return self.model(inputs)

    def _step(self, batch, stage: str):
        inputs, targets = split_pair_batch(batch)
        n = batch.num_graphs
        hp = self.hparams
        tgt_nodes = torch.bincount(targets.batch, minlength=n)
        forced = hp.segment_forcing and stage == "train"
        pred = self.model(inputs, num_out=tgt_nodes if forced else None)
        stats: dict[str, Tensor] = {}
        total = pred.logits.new_zeros(())
        if hp.segmentation_weight > 0:
            seg = segmentation_nll(
                pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit, targets.x,
                targets.batch, n, align=getattr(self.model, "canvas_align", "left"),
            )
            stats[f"{stage}_segmentation_nll"] = seg
            total = total + hp.segmentation_weight * seg
        parts: dict[str, Tensor] = {}
        if self.loss is not None or hp.ce_weight > 0:
            # without a structural loss, the cross-entropy's plan comes from a zero-weight one
            loss_fn = self.loss if self.loss is not None else _PLAN_ONLY
            loss, parts = loss_fn(pred, one_hot_bytes(targets), return_components=True)
            if self.loss is not None:
                total = total + loss
                stats[f"{stage}_structural_loss"] = loss
                for name in ("node", "edge", "clique"):
                    if name in parts:
                        stats[f"{stage}_{name}"] = parts[name].mean()
        if hp.ce_weight > 0:
            ce = aligned_cross_entropy(pred, targets, parts["plan_cross_entropy"])
            stats[f"{stage}_cross_entropy"] = ce
            total = total + hp.ce_weight * ce
        if forced and hp.boundary_weight > 0 and pred.log_prob.numel():
            nll = -pred.log_prob.mean()
            stats[f"{stage}_boundary_nll"] = nll
            total = total + hp.boundary_weight * nll
        if not torch.isfinite(total):
            raise FloatingPointError(f"{stage} loss is not finite ({total.item()})")
        stats[f"{stage}_loss"] = total
        out_nodes = torch.bincount(pred.batch, minlength=n).float()
        tgt_nodes = tgt_nodes.float()
        stats[f"{stage}_out_nodes"] = out_nodes.mean()
        stats[f"{stage}_target_nodes"] = tgt_nodes.mean()
        stats[f"{stage}_node_count_error"] = (out_nodes - tgt_nodes).abs().mean()
        if pred.merge_prob.numel():
            stats[f"{stage}_merge_fraction"] = pred.merged.float().mean()
            stats[f"{stage}_merge_prob"] = pred.merge_prob.mean()
        if stage == "train":
            stats["theta"] = self.model.theta
        self.log_step_stats(stage, stats, n, prog_bar=(f"{stage}_loss",))
        return total, pred, targets

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before load_state_dict: a checkpoint of one layer form
        # (``block``) loaded as the other gets the fix named, not a list of missing keys.
        keys = checkpoint.get("state_dict", {})
        forms = {"gps": "model.enc.0.conv.", "pre_ln": "model.enc.0.local."}
        built = getattr(self.model, "block", None)
        layers = next((f for f, p in forms.items() if any(k.startswith(p) for k in keys)),
                      built)  # no encoder layers: nothing to tell apart
        if built is not None and layers != built:
            raise ValueError(
                f"this checkpoint holds block={layers!r} layers but the model was built "
                f"with block={built!r}; load it with block={layers!r} (e.g. "
                f"GraphemeModule.load_from_checkpoint(path, model=GraphTransformNet("
                f"block={layers!r}, ...)) or --model.model.block {layers})"
            )

    def setup(self, stage: str) -> None:
        """Before training: refuse data the model cannot produce, naming the pairs."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if stage != "fit" or datamodule is None or not hasattr(datamodule, "_dataset"):
            return
        for split in ("train", "val"):
            dataset = datamodule._dataset(split)
            if dataset is not None:
                check_answer_lengths(dataset, self.model.max_answer_length, split)
        if self.hparams.init_head_prior:
            self.init_head_prior()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch, batch_idx: int, stage: str) -> None:
        _, pred, targets = self._step(batch, stage)
        answers = decode_graphs(pred)
        truth = graphs_to_texts(targets)
        exact = sum(a == t for a, t in zip(answers, truth, strict=True)) / max(len(truth), 1)
        self.log(f"{stage}_exact_match", exact, batch_size=len(truth), prog_bar=True,
                 sync_dist=True)
        self.val_cer.update(answers, truth)
        self.log(f"{stage}_cer", self.val_cer, batch_size=len(truth), on_epoch=True)
        questions = graphs_to_texts(split_pair_batch(batch)[0])
        self.examples += list(zip(questions, answers, truth, strict=True))

    def on_validation_epoch_start(self) -> None:
        self.examples = []

    def on_validation_epoch_end(self) -> None:
        if self.hparams.num_examples and self.examples and not self.trainer.sanity_checking:
            shown = "; ".join(f"{q!r} -> {a!r} (want {t!r})"
                              for q, a, t in self.examples[: self.hparams.num_examples])
            self.print(f"epoch {self.current_epoch}: {shown}")

    def on_test_epoch_start(self) -> None:
        self.examples = []

    def predict_step(self, batch, batch_idx: int) -> list[str]:
        inputs = split_pair_batch(batch)[0] if "x_s" in batch else batch
        return decode_graphs(self.model(inputs))

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:  # one foreach norm (Lightning's grad_norm: a Python float per tensor)
            self.log_step_stats("train", {"grad_norm": torch.nn.utils.get_total_norm(grads)}, 1)


def check_answer_lengths(dataset, cap: int, split: str = "train") -> None:
    """Raise a ``ValueError`` naming the pairs of ``dataset`` whose target the model cannot
    produce: longer than ``cap`` graphemes (the canvas), or empty."""
    slices = getattr(dataset, "slices", None)
    if slices is not None and "x_t" in slices and getattr(dataset, "_indices", None) is None:
        lengths = torch.diff(slices["x_t"]).tolist()
    else:
        lengths = [int(d.x_t.size(0)) for d in dataset]
    _warn_wide_graphemes(dataset, split)
    bad = [(i, m) for i, m in enumerate(lengths) if m > cap or m == 0]
    if not bad:
        return
    shown = ", ".join(f"#{i} ({m} graphemes)" for i, m in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise ValueError(
        f"{len(bad)} {split} pair(s) cannot be produced: answers must have 1 to {cap} "
        f"graphemes (max_answer_length); {shown}{more}. Raise --model.model.max_answer_length "
        "or drop those pairs"
    )


def _warn_wide_graphemes(dataset, split: str) -> None:
    """Warn (once per split, naming pairs) about answers with graphemes of more than
    ``GRAPHEME_WIDTH`` UTF-8 bytes: the byte head has that many slots, so such a grapheme
    (a ZWJ family, an Indic conjunct, a subdivision flag) can only come out truncated."""
    data = getattr(dataset, "_data", None)
    if data is None or getattr(data, "grapheme_len_t", None) is None:
        return
    wide = data.grapheme_len_t > GRAPHEME_WIDTH
    if not bool(wide.any()):
        return
    slices = dataset.slices["grapheme_len_t"]
    pairs = torch.unique(torch.bucketize(wide.nonzero().view(-1), slices[1:], right=True))
    shown = ", ".join(f"#{int(i)}" for i in pairs[:5])
    more = f" and {pairs.numel() - 5} more" if pairs.numel() > 5 else ""
    warnings.warn(
        f"{pairs.numel()} {split} pair(s) have answer graphemes of more than {GRAPHEME_WIDTH} "
        f"UTF-8 bytes ({shown}{more}); the byte head has {GRAPHEME_WIDTH} slots, so those "
        "graphemes can only be produced truncated",
        stacklevel=2,
    )
