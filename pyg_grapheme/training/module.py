"""GraphemeModule: the LightningModule that trains GraphTransformNet with the structural loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import grad_norm
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.utils import scatter
from torchmetrics.text import CharErrorRate

from pyg_grapheme.data.graphemes import graphs_to_texts
from pyg_grapheme.data.pair import split_pair_batch
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn.head import one_hot_bytes
from pyg_grapheme.nn.transform_net import GraphTransformNet, decode_graphs


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


class GraphemeModule(L.LightningModule):
    r"""Train :class:`~pyg_grapheme.nn.GraphTransformNet` on (input, target) text pairs.

    The training loss is

    .. math::
        \mathcal{L} = \mathrm{structural\_loss}(f_\theta(G_{in}), \mathrm{onehot}(G_{tgt}))
        + \lambda_{ce}\, \mathrm{CE}_{\text{aligned}}
        - \lambda_{b}\, \overline{\log P(m)}

    - **Segmentation forcing** (``segment_forcing=True``, training only; the analogue
      of teacher forcing): the merge pool is told how many nodes each answer has (the
      target's grapheme count) and cuts the chain where *its own* merge logits are lowest
      (:func:`~pyg_grapheme.nn.merge_pool.forced_merges`). The last term, the mean
      log-likelihood of those decisions under the pool's :math:`\mathrm{Bernoulli}(p_e)`,
      teaches the threshold to make the same cuts unaided; validation, test and
      prediction always threshold. Without forcing, the pool's expected-count gradient
      has to find the count, and on this task it over-merges to one node
      (``../shared/reference/anchors.md`` section 7; README, "Training").
    - :math:`\mathrm{CE}_{\text{aligned}}` is the byte head's cross-entropy against the
      target grapheme each output node is aligned with: in reading order (node :math:`i`
      with grapheme :math:`i`) for every pair whose output has the target's length, the
      monotone alignment of two chains of equal length; weighted by the (detached)
      node transport plan of the structural loss for the other pairs. Cross-entropy
      gives the head a gradient that does not vanish when a prediction is far off
      (``ce_weight = 0`` switches it off).

    Args:
        hidden, dag_layers, gat_layers, heads, post_layers, attention_distances,
            pool_similarity, pool_tau, pool_threshold, pool_proj_channels,
            dropout: :class:`GraphTransformNet`.
        alpha, beta, gamma, reg: :func:`~pyg_grapheme.loss.structural_loss` weights and
            entropic regularisation.
        ce_weight: weight of the aligned cross-entropy.
        segment_forcing: force the target's node count in training (see above).
        boundary_weight: weight of the forced decisions' negative log-likelihood.
        lr, betas, weight_decay: Adam (``beta2 = 0.98``: memorisation of the
            kindergarten set took 270-290 full-batch epochs on 3 seeds, against 310-380
            with 0.999).
        grad_clip: clip the gradient's total 2-norm to this (``None``: off), unless the
            ``Trainer`` sets ``gradient_clip_val``, which wins. Measured on kindergarten,
            batch 32: exact match 0.585 at epoch 100 with clipping at 1, 0.0 without;
            full batch: every answer right from epoch 230 with it, 310 without.
        warmup_epochs: linear warm-up of the learning rate (0: none).
        cosine: cosine decay to ``lr * min_lr_ratio`` over ``max_epochs`` after warm-up.
        num_examples: decoded examples logged per validation epoch.
    """

    def __init__(
        self,
        hidden: int = 128,
        dag_layers: int = 2,
        gat_layers: int = 2,
        heads: int = 4,
        post_layers: int = 1,
        attention_distances: Sequence[int] = (1, 2, 4, 8, 16),
        pool_similarity: str = "half_cosine",
        pool_tau: float = 1.0,
        pool_threshold: float = 0.5,
        pool_proj_channels: int | None = 32,
        dropout: float = 0.0,
        alpha: float = 1.0,
        beta: float = 0.5,
        gamma: float = 2.0,
        reg: float = 0.05,
        ce_weight: float = 10.0,
        segment_forcing: bool = True,
        boundary_weight: float = 1.0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.98),
        weight_decay: float = 0.0,
        grad_clip: float | None = 1.0,
        warmup_epochs: int = 0,
        cosine: bool = False,
        min_lr_ratio: float = 0.1,
        num_examples: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = GraphTransformNet(
            hidden=hidden,
            dag_layers=dag_layers,
            gat_layers=gat_layers,
            heads=heads,
            post_layers=post_layers,
            attention_distances=tuple(attention_distances),
            pool_similarity=pool_similarity,
            pool_tau=pool_tau,
            pool_threshold=pool_threshold,
            pool_proj_channels=pool_proj_channels,
            dropout=dropout,
        )
        self.val_cer = CharErrorRate()
        self.examples: list[tuple[str, str, str]] = []

    def forward(self, inputs):
        return self.model(inputs)

    def _step(self, batch, stage: str):
        inputs, targets = split_pair_batch(batch)
        n = batch.num_graphs
        hp = self.hparams
        tgt_nodes = torch.bincount(targets.batch, minlength=n)
        forced = hp.segment_forcing and stage == "train"
        pred = self.model(inputs, num_out=tgt_nodes if forced else None)
        target = one_hot_bytes(targets)
        loss, parts = structural_loss(
            pred, target, alpha=hp.alpha, beta=hp.beta, gamma=hp.gamma, reg=hp.reg,
            reduction="mean", return_components=True,
        )
        total = loss
        log = dict(batch_size=n, on_step=False, on_epoch=True, sync_dist=True)
        if hp.ce_weight > 0:
            ce = aligned_cross_entropy(pred, targets, parts["plan_cross_entropy"])
            self.log(f"{stage}_cross_entropy", ce, **log)
            total = total + hp.ce_weight * ce
        if forced and hp.boundary_weight > 0 and pred.log_prob.numel():
            nll = -pred.log_prob.mean()
            self.log(f"{stage}_boundary_nll", nll, **log)
            total = total + hp.boundary_weight * nll
        if not torch.isfinite(total):
            raise FloatingPointError(f"{stage} loss is not finite ({total.item()})")
        self.log(f"{stage}_loss", total, prog_bar=True, **log)
        self.log(f"{stage}_structural_loss", loss, **log)
        for name in ("node", "edge", "clique"):
            self.log(f"{stage}_{name}", parts[name].mean(), **log)
        out_nodes = torch.bincount(pred.batch, minlength=n).float()
        tgt_nodes = tgt_nodes.float()
        self.log(f"{stage}_out_nodes", out_nodes.mean(), **log)
        self.log(f"{stage}_target_nodes", tgt_nodes.mean(), **log)
        self.log(f"{stage}_node_count_error", (out_nodes - tgt_nodes).abs().mean(), **log)
        if pred.merge_prob.numel():
            self.log(f"{stage}_merge_fraction", pred.merged.float().mean(), **log)
            self.log(f"{stage}_merge_prob", pred.merge_prob.mean(), **log)
        return total, pred, targets

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch, "train")
        self.log("theta", self.model.theta.detach(), on_step=False, on_epoch=True,
                 batch_size=batch.num_graphs)
        return loss

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
        norms = grad_norm(self.model, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("grad_norm", norms["grad_2.0_norm_total"], on_step=False, on_epoch=True,
                     batch_size=1)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if gradient_clip_val is None and self.hparams.grad_clip:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.grad_clip, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(
            self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        if not hp.warmup_epochs and not hp.cosine:
            return opt
        max_epochs = max(int(self.trainer.max_epochs or 1), 1) if self._trainer else 1

        def factor(epoch: int) -> float:
            if epoch < hp.warmup_epochs:
                return (epoch + 1) / hp.warmup_epochs
            if not hp.cosine:
                return 1.0
            t = (epoch - hp.warmup_epochs) / max(max_epochs - hp.warmup_epochs, 1)
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
