"""The aligned cross-entropy and segmentation forcing of GraphemeModule."""

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.data.pair import PairData
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn import GraphTransformNet, one_hot_bytes
from pyg_grapheme.training import GraphemeModule
from pyg_grapheme.training.module import aligned_cross_entropy

QUESTIONS = ["What colour is the sky?", "How many legs?", "hi"]
ANSWERS = ["blue", "4", "hello"]  # the last answer is longer than its question


def pair_batch():
    pairs = []
    for q, a in zip(QUESTIONS, ANSWERS, strict=True):
        s, t = text_to_graph(q), text_to_graph(a)
        pairs.append(PairData(x_s=s.x, edge_index_s=s.edge_index, x_t=t.x,
                              edge_index_t=t.edge_index))
    return Batch.from_data_list(pairs, follow_batch=["x_s", "x_t"])


def graphs(texts):
    return Batch.from_data_list([text_to_graph(t) for t in texts])


def test_equal_lengths_align_in_reading_order_and_others_use_the_plan():
    torch.manual_seed(0)
    module = GraphemeModule(GraphTransformNet(hidden=16, heads=2, max_answer_length=8))
    inputs, targets = graphs(QUESTIONS), graphs(ANSWERS)
    pred = module.model(inputs, num_out=torch.tensor([4, 1, 2]))
    counts = torch.bincount(pred.batch, minlength=3).tolist()
    assert counts == [4, 1, 2]  # the last pair's lengths differ: the plan aligns it
    _, parts = structural_loss(pred, one_hot_bytes(targets), return_components=True)
    got = aligned_cross_entropy(pred, targets, parts["plan_cross_entropy"])

    want = []
    for g in range(2):  # lengths match: node i against grapheme i
        logits = pred.logits[pred.batch == g]
        slots = targets.x[targets.batch == g].long()
        want.append(F.cross_entropy(logits.reshape(-1, 256), slots.reshape(-1)))
    plan = parts["plan_cross_entropy"](pred.logits, one_hot_bytes(targets).x, reduction="none")
    want.append(plan[2])
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-6)


def test_training_step_forces_the_target_count_and_validation_does_not():
    torch.manual_seed(0)
    # pool_threshold 0.9999: merges nothing unforced
    net = GraphTransformNet(hidden=16, heads=2, max_answer_length=8, pool_threshold=0.9999)
    module = GraphemeModule(net, segment_forcing=True, ce_weight=1.0)
    batch = pair_batch()
    _, pred, targets = module._step(batch, "train")
    counts = torch.bincount(pred.batch, minlength=3)
    assert counts.tolist() == [4, 1, 5]  # "hello" is longer than its question "hi"
    _, pred, _ = module._step(batch, "val")
    counts = torch.bincount(pred.batch, minlength=3)
    assert counts.tolist() == [8, 8, 8]


def test_data_the_model_cannot_produce_is_refused_before_training(tmp_path):
    from pyg_grapheme.data import TextPairDataset
    from pyg_grapheme.training.module import check_answer_lengths

    path = tmp_path / "long.jsonl"
    path.write_text('{"input": "7", "target": "seven"}\n{"input": "1", "target": "one"}\n'
                    '{"input": "x", "target": "a very long answer"}\n')
    data = TextPairDataset(tmp_path / "cache", path)
    check_answer_lengths(data, 18)
    with pytest.raises(ValueError, match=r"1 train pair\(s\) .* 1 to 5 graphemes .*#2 \(18 gr"):
        check_answer_lengths(data, 5)
    with pytest.raises(ValueError, match=r"2 val pair\(s\) .*#0 \(5 graphemes\)"):
        check_answer_lengths(data, 4, "val")


def test_gradients_are_clipped_by_the_trainer(tmp_path):
    import lightning as L

    from pyg_grapheme.training import GraphemeDataModule

    norms = {}

    class After(L.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            norms["before"] = total_norm(module)

        def on_train_batch_end(self, trainer, module, *args):
            norms["after"] = total_norm(module)

    def total_norm(module):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    L.seed_everything(0)
    module = GraphemeModule(GraphTransformNet(hidden=16, heads=2, max_answer_length=8))
    data = GraphemeDataModule(train_file="kindergarten", batch_size=128,
                              root=str(tmp_path / "cache"))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[After()], gradient_clip_val=0.5)
    trainer.fit(module, datamodule=data)
    assert norms["before"] > 0.5
    assert norms["after"] == pytest.approx(0.5, rel=1e-4)


def test_answers_with_graphemes_wider_than_the_head_are_named(tmp_path):
    from pyg_grapheme.data import TextPairDataset
    from pyg_grapheme.training.module import check_answer_lengths

    path = tmp_path / "wide.jsonl"
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # one grapheme, 18 bytes
    path.write_text(f'{{"input": "a", "target": "ok"}}\n{{"input": "b", "target": "{family}"}}\n',
                    encoding="utf-8")
    data = TextPairDataset(tmp_path / "cache", path)
    with pytest.warns(UserWarning, match=r"1 train pair\(s\) .* more than 8 UTF-8 bytes \(#1\)"):
        check_answer_lengths(data, 8)


def test_bf16_mixed_precision_trains_with_finite_losses(tmp_path):
    """Issue 16: --trainer.precision bf16-mixed used to give NaN gradients after step 1."""
    import lightning as L

    from pyg_grapheme.training import GraphemeDataModule

    L.seed_everything(0)
    module = GraphemeModule(GraphTransformNet(hidden=16, heads=2, max_answer_length=16),
                            num_examples=0)
    data = GraphemeDataModule(train_file="kindergarten", batch_size=32,
                              root=str(tmp_path / "cache"))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", precision="bf16-mixed",
                        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    losses = trainer.logged_metrics
    assert torch.isfinite(losses["train_loss"]) and torch.isfinite(losses["val_loss"])
    assert all(torch.isfinite(p).all() for p in module.parameters())
