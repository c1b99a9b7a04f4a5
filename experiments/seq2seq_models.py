"""Byte-level seq2seq baselines and the Lightning harness shared with the graph model.

* bytes: UTF-8 byte ids 0..255 plus ``PAD``/``BOS``/``EOS``; :class:`Tensors` pads a split.
* models: :class:`Seq2Seq` (bidirectional GRU encoder, GRU decoder with Luong attention)
  and :class:`TransformerSeq2Seq` (pre-LN encoder-decoder, learned positions); both have
  ``forward(src, src_len, tgt_in)`` (teacher-forced logits) and
  ``greedy(src, src_len, max_len)`` (batched, stops at ``EOS`` or ``max_len``).
* :class:`Seq2SeqModule` / :class:`ByteDataModule`: either model as a ``LightningModule``.
* harness: :class:`CpuBudget` (stop after ``budget_s`` CPU seconds), :class:`BestCheckpoint`
  (keep the weights of the best ``val_exact_match``, in memory), :class:`EMAWeights` (an
  option: validate and keep a moving average of the weights) and :func:`fit`, the one
  ``Trainer`` set-up all three models of ``baseline_seq2seq.py`` are trained with.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, WeightAveraging
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from torchmetrics.text import CharErrorRate

Pair = tuple[str, str]

PAD, BOS, EOS = 256, 257, 258
VOCAB = 259

# --------------------------------------------------------------------------- bytes


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids: Sequence[int]) -> str:
    """Bytes up to the first EOS; special symbols dropped, invalid UTF-8 replaced."""
    out = bytearray()
    for i in ids:
        if i == EOS:
            break
        if i < 256:
            out.append(i)
    return out.decode("utf-8", errors="replace")


def _pad(rows: list[list[int]]) -> Tensor:
    width = max(1, max((len(r) for r in rows), default=0))
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows], dtype=torch.long)


@dataclass
class Tensors:
    """A split as padded tensors: source bytes, BOS+target (decoder input), target+EOS."""

    src: Tensor
    src_len: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    @classmethod
    def from_pairs(cls, pairs: Sequence[Pair]) -> Tensors:
        src = [encode(q) for q, _ in pairs]
        tgt = [encode(a) for _, a in pairs]
        return cls(
            _pad(src),
            torch.tensor([len(s) for s in src]),
            _pad([[BOS] + t for t in tgt]),
            _pad([t + [EOS] for t in tgt]),
        )

    def __len__(self) -> int:
        return self.src.size(0)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Rows ``idx``, trimmed to their longest source/target (less padding, less work).
        An empty source keeps one PAD column (its length is reported as 0)."""
        src_len = self.src_len[idx]
        tgt_out = self.tgt_out[idx]
        t = int((tgt_out != PAD).sum(1).max())
        s = max(int(src_len.max()), 1)
        return self.src[idx, :s], src_len, self.tgt_in[idx, :t], tgt_out[:, :t]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- GRU


class Seq2Seq(nn.Module):
    """Bidirectional-GRU encoder, GRU decoder with Luong general attention.

    Args:
        hidden: GRU size (each encoder direction and the decoder).
        embed: byte embedding size (shared by encoder and decoder).
        dropout: dropout on embeddings and on the attentional hidden state.
    """

    def __init__(self, hidden: int = 128, embed: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed, padding_idx=PAD)
        self.encoder = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.keys = nn.Linear(2 * hidden, hidden)  # encoder states -> attention memory
        self.bridge = nn.Linear(2 * hidden, hidden)  # final encoder states -> decoder h0
        self.decoder = nn.GRU(embed, hidden, batch_first=True)
        self.combine = nn.Linear(2 * hidden, hidden)  # [decoder state; context]
        self.out = nn.Linear(hidden, VOCAB)
        self.drop = nn.Dropout(dropout)

    def encode(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lengths = src_len.clamp(min=1).cpu()  # an empty question reads one PAD
        packed = pack_padded_sequence(
            self.drop(self.embed(src)), lengths, batch_first=True, enforce_sorted=False
        )
        states, h = self.encoder(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=src.size(1))
        h0 = torch.tanh(self.bridge(torch.cat([h[0], h[1]], dim=-1))).unsqueeze(0)
        pad_mask = torch.arange(src.size(1), device=src.device) >= lengths.to(src.device)[:, None]
        return self.keys(states), pad_mask, h0

    def attend(self, dec: Tensor, memory: Tensor, pad_mask: Tensor) -> Tensor:
        """Logits ``[B, T, VOCAB]`` from decoder states ``[B, T, H]``."""
        scores = dec @ memory.transpose(1, 2)  # [B, T, S]
        scores = scores.masked_fill(pad_mask.unsqueeze(1), float("-inf"))
        context = scores.softmax(-1) @ memory
        att = torch.tanh(self.combine(torch.cat([dec, context], dim=-1)))
        return self.out(self.drop(att))

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits for every target position."""
        memory, pad_mask, h0 = self.encode(src, src_len)
        dec, _ = self.decoder(self.drop(self.embed(tgt_in)), h0)
        return self.attend(dec, memory, pad_mask)

    @torch.no_grad()
    def greedy(self, src: Tensor, src_len: Tensor, max_len: int) -> list[list[int]]:
        """At most ``max_len`` symbols per row; a row that has produced EOS gets PAD after
        it, and decoding stops once every row has."""
        memory, pad_mask, h = self.encode(src, src_len)
        token = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        steps = []
        for _ in range(max_len):
            dec, h = self.decoder(self.embed(token), h)
            token = self.attend(dec, memory, pad_mask).argmax(-1)
            token = token.masked_fill(done.unsqueeze(1), PAD)
            steps.append(token)
            done |= token.squeeze(1) == EOS
            if bool(done.all()):
                break
        if not steps:
            return [[] for _ in range(src.size(0))]
        return torch.cat(steps, dim=1).tolist()


def seq2seq_parameters(hidden: int, embed: int = 64) -> int:
    """Closed form of ``count_parameters(Seq2Seq(hidden, embed))`` (no model built)."""
    h, e = hidden, embed
    gru = 3 * h * (e + h) + 6 * h  # one direction: input and hidden weights, two biases
    linear_2h_h = 2 * h * h + h  # keys, bridge, combine
    return VOCAB * e + 3 * gru + 3 * linear_2h_h + h * VOCAB + VOCAB


def gru_hidden_for(params: int, embed: int = 64) -> int:
    """The GRU hidden size whose :class:`Seq2Seq` parameter count is closest to ``params``."""
    return min(range(8, 2049), key=lambda h: abs(seq2seq_parameters(h, embed) - params))


# --------------------------------------------------------------------------- Transformer


class TransformerSeq2Seq(nn.Module):
    """Pre-LN Transformer encoder-decoder over bytes with learned positional embeddings.

    A byte embedding shared by encoder and decoder, separate learned position tables for
    source and decoder input (all three initialised N(0, 0.02), GPT-2 style, and added
    unscaled: on kindergarten this memorised the 65 pairs in 103 epochs, where N(0, 1)
    tables with the embedding scaled by ``sqrt(dim)`` reached 0.83 in 141; seed 0, one
    run each), ``enc_layers`` + ``dec_layers`` pre-LN layers (``norm_first=True``, with
    the final LayerNorms of :class:`torch.nn.Transformer`), an untied output projection.

    Positions at or beyond ``max_pos`` (a question longer than the table, or a decoding
    longer than it) reuse the table's last row, with a warning, rather than fail.

    Args:
        dim: model width (divisible by ``heads``). ff: feed-forward width (default
            ``4 * dim``). heads: attention heads. enc_layers, dec_layers: depth.
        max_pos: rows of each position table. dropout: in every layer and on the input.
    """

    def __init__(
        self,
        dim: int = 128,
        ff: int | None = None,
        heads: int = 4,
        enc_layers: int = 2,
        dec_layers: int = 2,
        max_pos: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        ff = 4 * dim if ff is None else ff
        self.dim, self.max_pos = dim, max_pos
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.src_pos = nn.Embedding(max_pos, dim)
        self.tgt_pos = nn.Embedding(max_pos, dim)
        kw = dict(d_model=dim, nhead=heads, dim_feedforward=ff, dropout=dropout,
                  batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**kw), enc_layers, norm=nn.LayerNorm(dim),
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**kw), dec_layers, norm=nn.LayerNorm(dim)
        )
        self.out = nn.Linear(dim, VOCAB)
        self.drop = nn.Dropout(dropout)
        self._warned = False
        with torch.no_grad():
            for table in (self.embed, self.src_pos, self.tgt_pos):
                table.weight.normal_(0.0, 0.02)
            self.embed.weight[PAD].zero_()

    def _positions(self, length: int, device: torch.device) -> Tensor:
        pos = torch.arange(length, device=device)
        if length > self.max_pos:
            if not self._warned:
                warnings.warn(
                    f"sequence of {length} positions is longer than the learned position "
                    f"table ({self.max_pos}); positions beyond it reuse the last one",
                    stacklevel=3,
                )
                self._warned = True
            pos = pos.clamp(max=self.max_pos - 1)
        return pos

    def _embed(self, ids: Tensor, table: nn.Embedding) -> Tensor:
        return self.drop(self.embed(ids) + table(self._positions(ids.size(1), ids.device)))

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        pad_mask = src == PAD
        pad_mask[:, 0] = False  # an empty question still has one key to attend to
        return self.encoder(self._embed(src, self.src_pos), src_key_padding_mask=pad_mask), \
            pad_mask

    def _decode(self, tgt_in: Tensor, memory: Tensor, pad_mask: Tensor) -> Tensor:
        t = tgt_in.size(1)
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tgt_in.device), 1)
        h = self.decoder(
            self._embed(tgt_in, self.tgt_pos), memory, tgt_mask=causal,
            tgt_key_padding_mask=tgt_in == PAD, memory_key_padding_mask=pad_mask,
        )
        return self.out(h)

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits ``[B, T, VOCAB]`` (``src_len`` unused: PAD marks padding)."""
        memory, pad_mask = self.encode(src)
        return self._decode(tgt_in, memory, pad_mask)

    @torch.no_grad()
    def greedy(self, src: Tensor, src_len: Tensor, max_len: int) -> list[list[int]]:
        """Batched greedy decoding: at most ``max_len`` symbols a row, PAD after a row's
        EOS, stops once every row has produced EOS."""
        memory, pad_mask = self.encode(src)
        ys = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            # Finished rows feed PAD, which the key-padding mask hides from later steps.
            token = self._decode(ys, memory, pad_mask)[:, -1].argmax(-1)
            token = token.masked_fill(done, PAD)
            ys = torch.cat([ys, token[:, None]], dim=1)
            done |= token == EOS
            if bool(done.all()):
                break
        return ys[:, 1:].tolist()


def transformer_parameters(
    dim: int, ff: int | None = None, enc_layers: int = 2, dec_layers: int = 2,
    max_pos: int = 128,
) -> int:
    """Closed form of ``count_parameters(TransformerSeq2Seq(...))`` (heads do not count)."""
    d = dim
    f = 4 * d if ff is None else ff
    attn = 4 * d * d + 4 * d  # in_proj (3d x d + 3d) and out_proj
    mlp = 2 * d * f + f + d
    enc = attn + mlp + 2 * 2 * d  # two LayerNorms
    dec = 2 * attn + mlp + 3 * 2 * d
    return (VOCAB * d + 2 * max_pos * d + enc_layers * enc + dec_layers * dec + 2 * 2 * d
            + d * VOCAB + VOCAB)


def transformer_dim_for(
    params: int, heads: int = 4, enc_layers: int = 2, dec_layers: int = 2, max_pos: int = 128,
) -> int:
    """The width (a multiple of ``heads``, feed-forward ``4 * dim``) whose parameter count
    is closest to ``params``."""
    return min(
        range(heads, 2049, heads),
        key=lambda d: abs(transformer_parameters(d, None, enc_layers, dec_layers, max_pos)
                          - params),
    )


# --------------------------------------------------------------------------- scoring


def score(answers: Sequence[str], targets: Sequence[str]) -> tuple[float, float]:
    """Exact match and character error rate (CER over code points)."""
    exact = sum(a == t for a, t in zip(answers, targets, strict=True)) / max(len(targets), 1)
    cer = float(CharErrorRate()(list(answers), list(targets))) if targets else 0.0
    return exact, cer


# --------------------------------------------------------------------------- Lightning


class Seq2SeqModule(L.LightningModule):
    """A byte seq2seq model (:class:`Seq2Seq` or :class:`TransformerSeq2Seq`) trained with
    teacher forcing and cross-entropy; validation logs ``val_exact_match`` of greedy
    answers, as :class:`~pyg_grapheme.training.GraphemeModule` does.

    Args:
        model: the network. lr: Adam learning rate. max_len: greedy decoding limit.
        fused_adam: torch's fused Adam (``fused=True``) instead of its default.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, max_len: int = 64,
                 fused_adam: bool = False) -> None:
        super().__init__()
        self.model, self.lr, self.max_len = model, lr, max_len
        self.fused_adam = fused_adam

    def training_step(self, batch, batch_idx: int) -> Tensor:
        src, src_len, tgt_in, tgt_out = batch
        logits = self.model(src, src_len, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=src.size(0))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        src, src_len, _, tgt_out = batch
        answers = [decode(ids) for ids in self.model.greedy(src, src_len, self.max_len)]
        truth = [decode(ids) for ids in tgt_out.tolist()]
        exact = sum(a == t for a, t in zip(answers, truth, strict=True)) / len(truth)
        self.log("val_exact_match", exact, batch_size=len(truth), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr,
                                fused=True if self.fused_adam else None)

    def answer(self, questions: Sequence[str], chunk: int = 256) -> list[str]:
        """Greedy answers (eval mode), ``chunk`` questions at a time."""
        self.model.eval()
        data = Tensors.from_pairs([(q, "") for q in questions])
        out: list[str] = []
        for start in range(0, len(questions), chunk):
            idx = torch.arange(start, min(start + chunk, len(questions)))
            src, src_len, _, _ = data.batch(idx)
            out += [decode(ids) for ids in self.model.greedy(src, src_len, self.max_len)]
        return out


class ByteDataModule(L.LightningDataModule):
    """Train and validation splits as padded byte tensors (shuffled training batches)."""

    def __init__(self, train: Sequence[Pair], val: Sequence[Pair], batch_size: int = 32) -> None:
        super().__init__()
        self.train, self.val = Tensors.from_pairs(train), Tensors.from_pairs(val)
        self.batch_size = batch_size

    def _loader(self, data: Tensors, shuffle: bool) -> DataLoader:
        return DataLoader(range(len(data)), batch_size=self.batch_size, shuffle=shuffle,
                          collate_fn=lambda idx: data.batch(torch.tensor(idx)))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)


def max_answer_len(pairs: Sequence[Pair], slack: int = 8) -> int:
    """Greedy limit: the longest answer in bytes, plus EOS and ``slack``."""
    return max((len(encode(a)) for _, a in pairs), default=0) + 1 + slack


# --------------------------------------------------------------------------- harness


class CpuBudget(Callback):
    """Stop training once ``budget_s`` CPU seconds (``time.process_time``) have passed
    since ``on_fit_start`` (after data preparation): checked after every training batch
    and every validation, so training plus the per-epoch validation count. Also records
    the epochs run, the first epoch whose ``val_exact_match`` was 1.0 and the CPU seconds
    used, and logs progress every ``log_every`` epochs.
    """

    def __init__(self, budget_s: float, log: Callable[[str], None] | None = None,
                 label: str = "", log_every: int = 10) -> None:
        self.budget_s, self.printer, self.label, self.log_every = budget_s, log, label, log_every
        self.start = time.process_time()
        self.cpu_s = 0.0
        self.epochs = 0
        self.to_perfect: int | None = None

    def used(self) -> float:
        return time.process_time() - self.start

    def _check(self, trainer: L.Trainer) -> None:
        if self.used() >= self.budget_s:
            trainer.should_stop = True

    def on_fit_start(self, trainer, module) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer, *args) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        self.epochs = trainer.current_epoch + 1
        exact = float(trainer.callback_metrics.get("val_exact_match", -1.0))
        if exact == 1.0 and self.to_perfect is None:
            self.to_perfect = self.epochs
        if self.printer and (self.epochs % self.log_every == 0 or exact == 1.0):
            self.printer(f"  {self.label} epoch {self.epochs:4d}  val exact {exact:.3f}  "
                     f"cpu {self.used():6.1f}s")
        self._check(trainer)

    def on_fit_end(self, trainer, module) -> None:
        self.cpu_s = self.used()


class BestCheckpoint(Callback):
    """In-memory ``ModelCheckpoint(monitor=..., mode="max", save_top_k=1)``: after each
    validation, copy the module's weights if ``monitor`` is strictly above the best so
    far (so the earliest of equal epochs wins, as with Lightning's checkpoint);
    :meth:`restore` loads them back."""

    def __init__(self, monitor: str = "val_exact_match") -> None:
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch: int | None = None
        self.state: dict[str, Tensor] | None = None

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value > self.best:
            self.best, self.best_epoch = value, trainer.current_epoch + 1
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def restore(self, module: nn.Module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)


class EMAWeights(WeightAveraging):
    """An exponential moving average of the weights (Lightning's ``WeightAveraging``
    with torch's EMA update, ``avg <- decay * avg + (1 - decay) * w`` after every optimizer
    step): every validation, and so :class:`BestCheckpoint`, sees the averaged weights.

    Lightning swaps the training weights back in ``on_validation_epoch_end``, before the
    epoch's ``val_exact_match`` reaches ``callback_metrics``; here they come back in
    ``on_validation_end``, after :class:`BestCheckpoint` (listed before this callback) has
    copied the weights the metric belongs to.

    Parameters only (``use_buffers=False``): buffers are not weights, and an average of an
    integer buffer truncates (the graph model's uint8 category table would be rewritten).
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        super().__init__(use_buffers=False, multi_avg_fn=get_ema_multi_avg_fn(decay))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pass  # the averaged weights stay until on_validation_end

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)


@dataclass
class FitStats:
    cpu_s: float
    epochs: int
    to_perfect: int | None
    best_epoch: int | None
    best_val_exact: float


def quiet_lightning() -> None:
    """Lightning's start-up notes and the few-workers hint are noise here."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*")
    warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")


def fit(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    *,
    budget_s: float,
    max_epochs: int = 100_000,
    memorise: bool = False,
    grad_clip: float = 1.0,
    log: Callable[[str], None] | None = print,
    label: str = "",
    callbacks: Sequence[Callback] = (),
    ema: float = 0.0,
) -> FitStats:
    """Train ``module`` with the one harness every model of the comparison shares.

    A Lightning ``Trainer`` on one CPU device with gradient clipping (2-norm, ``grad_clip``),
    validation every epoch (no sanity pass), :class:`CpuBudget` and :class:`BestCheckpoint`
    on ``val_exact_match``; on a memorisation task (validation set = training set) an
    ``EarlyStopping`` stops at 100% exact match. ``max_time`` (wall clock, 10x the budget,
    at least a minute) is only a safety net: on a shared machine wall time also counts
    other processes. The best checkpoint is loaded back into ``module`` before returning.
    ``callbacks`` are added to the harness's own (a measurement's timers). ``ema > 0``
    validates, keeps and returns a moving average of the weights with that decay per step
    (:class:`EMAWeights`) instead of the weights themselves.
    """
    quiet_lightning()
    budget = CpuBudget(budget_s, log=log, label=label)
    best = BestCheckpoint("val_exact_match")
    callbacks = [budget, best, *callbacks]
    if ema:
        callbacks.append(EMAWeights(ema))  # after `best`: see EMAWeights
    if memorise:
        # EarlyStopping stops once the monitor is strictly above the threshold.
        callbacks.append(EarlyStopping(monitor="val_exact_match", mode="max",
                                       stopping_threshold=1.0 - 1e-6, patience=10**9))
    with tempfile.TemporaryDirectory(prefix="baseline-fit-") as tmp:
        trainer = L.Trainer(
            max_time=timedelta(seconds=max(10 * budget_s, 60)),
            max_epochs=max_epochs,
            accelerator="cpu",
            devices=1,
            deterministic=True,
            gradient_clip_val=grad_clip,
            gradient_clip_algorithm="norm",
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            logger=False,
            num_sanity_val_steps=0,
            callbacks=callbacks,
            default_root_dir=tmp,
        )
        trainer.fit(module, datamodule=datamodule)
    best.restore(module)
    return FitStats(budget.cpu_s, budget.epochs, budget.to_perfect, best.best_epoch,
                    best.best)
