"""Issue 12: answers longer than their questions are learnt, with thresholded decoding."""

import json

import lightning as L
import torch

from pyg_grapheme.data.tasks import number_words
from pyg_grapheme.nn import GraphTransformNet
from pyg_grapheme.training import GraphemeDataModule, GraphemeModule

NUMBERS = [3, 7, 12, 20, 45, 61, 90, 108]


def test_memorises_number_words_longer_than_the_numerals(tmp_path):
    """'45' -> 'forty-five': every answer 3-11 graphemes longer than its question; the old
    model, whose answer was a quotient of the question, could produce none of them."""
    path = tmp_path / "words.jsonl"
    pairs = [(str(n), number_words(n)) for n in NUMBERS]
    assert all(len(a) > len(q) for q, a in pairs)
    path.write_text("".join(json.dumps({"input": q, "target": a}) + "\n" for q, a in pairs))
    L.seed_everything(0)
    module = GraphemeModule(GraphTransformNet(hidden=64, heads=2, max_answer_length=24),
                            num_examples=0)
    data = GraphemeDataModule(train_file=str(path), batch_size=len(pairs), shuffle=False,
                              root=str(tmp_path / "cache"))
    trainer = L.Trainer(max_epochs=300, accelerator="cpu", logger=False, deterministic=True,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, gradient_clip_val=0.25)
    trainer.fit(module, datamodule=data)
    answers = module.model.generate([q for q, _ in pairs])
    assert answers == [a for _, a in pairs]
    lengths = [len(a) for a in answers]
    assert max(lengths) > max(len(q) for q, _ in pairs)
    assert torch.isfinite(module.model.theta)
