"""Lightning training: the only part of pyg_grapheme that imports lightning."""

from pyg_grapheme.training.callbacks import TrainingReport
from pyg_grapheme.training.datamodule import GraphemeDataModule
from pyg_grapheme.training.module import GraphemeModule

__all__ = ["GraphemeDataModule", "GraphemeModule", "TrainingReport"]

from pyg_grapheme.training.expression_module import (  # noqa: E402
    ExpressionDataModule,
    ExpressionModule,
)

__all__ += ["ExpressionDataModule", "ExpressionModule"]
