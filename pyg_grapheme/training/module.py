"""GraphemeModule: the LightningModule that trains GraphTransformNet with the structural loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm
from torch import Tensor
from torchmetrics.text import CharErrorRate

from pyg_grapheme.data.graphemes import graphs_to_texts
from pyg_grapheme.data.pair import split_pair_batch
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn.head import one_hot_bytes
from pyg_grapheme.nn.transform_net import GraphTransformNet, decode_graphs


class GraphemeModule(L.LightningModule):
    r"""Train :class:`~pyg_grapheme.nn.GraphTransformNet` on (input, target) text pairs.

    The training loss is

    .. math::
        \mathcal{L} = \mathrm{structural\_loss}(f_\theta(G_{in}), \mathrm{onehot}(G_{tgt}))
        + \lambda_{ce} \sum_{ij} \bar{P}_{ij}\, \mathrm{CE}(\hat{y}_i, y_j)

    where the second term is a cross-entropy on the byte head, weighted by the (detached)
    node transport plan of the structural loss: the plan says which prediction should
    become which target grapheme, and cross-entropy gives the byte head a gradient that
    does not vanish when a prediction is far off (``ce_weight = 0`` switches it off).

    Args:
        hidden, dag_layers, gat_layers, heads, post_layers, attention_distances,
            pool_similarity, pool_tau, pool_threshold, pool_proj_channels,
            dropout: :class:`GraphTransformNet`.
        alpha, beta, gamma, reg: :func:`~pyg_grapheme.loss.structural_loss` weights and
            entropic regularisation.
        ce_weight: weight of the plan-weighted cross-entropy.
        lr, weight_decay: Adam.
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
        pool_tau: float = 4.0,
        pool_threshold: float = 0.5,
        pool_proj_channels: int | None = None,
        dropout: float = 0.0,
        alpha: float = 1.0,
        beta: float = 0.5,
        gamma: float = 2.0,
        reg: float = 0.05,
        ce_weight: float = 10.0,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
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
        pred = self.model(inputs)
        target = one_hot_bytes(targets)
        hp = self.hparams
        loss, parts = structural_loss(
            pred, target, alpha=hp.alpha, beta=hp.beta, gamma=hp.gamma, reg=hp.reg,
            reduction="mean", return_components=True,
        )
        total = loss
        if hp.ce_weight > 0:
            total = total + hp.ce_weight * parts["plan_cross_entropy"](pred.logits, target.x)
        if not torch.isfinite(total):
            raise FloatingPointError(f"{stage} loss is not finite ({total.item()})")
        n = batch.num_graphs
        log = dict(batch_size=n, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}_loss", total, prog_bar=True, **log)
        self.log(f"{stage}_structural_loss", loss, **log)
        for name in ("node", "edge", "clique"):
            self.log(f"{stage}_{name}", parts[name].mean(), **log)
        out_nodes = torch.bincount(pred.batch, minlength=n).float()
        tgt_nodes = torch.bincount(targets.batch, minlength=n).float()
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

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
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
