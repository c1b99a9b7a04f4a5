"""Text graphs, pairs, data formats and datasets (imports neither ``nn`` nor ``loss``)."""

from pyg_grapheme.data.datasets import (
    KindergartenDataset,
    MathCurriculumDataset,
    TaskDataset,
    TextPairDataset,
    kindergarten_path,
    resolve_dataset,
)
from pyg_grapheme.data.formats import DataFormatError, detect_format, read_pairs
from pyg_grapheme.data.graphemes import (
    GRAPHEME_WIDTH,
    NUM_BYTE_CLASSES,
    PAD,
    graph_to_text,
    graphs_to_texts,
    text_to_graph,
)
from pyg_grapheme.data.pair import FOLLOW_BATCH, PairData, split_pair_batch
from pyg_grapheme.data.tasks import TASKS, generate_task, write_task
from pyg_grapheme.data.transforms import TextToGraph

__all__ = [
    "DataFormatError",
    "KindergartenDataset",
    "MathCurriculumDataset",
    "TaskDataset",
    "TextPairDataset",
    "kindergarten_path",
    "resolve_dataset",
    "detect_format",
    "read_pairs",
    "GRAPHEME_WIDTH",
    "NUM_BYTE_CLASSES",
    "PAD",
    "FOLLOW_BATCH",
    "PairData",
    "TextToGraph",
    "graph_to_text",
    "graphs_to_texts",
    "split_pair_batch",
    "text_to_graph",
    "TASKS",
    "generate_task",
    "write_task",
]

from pyg_grapheme.data.expression import (  # noqa: E402
    expression_graph,
    expression_pairs,
    graph_exact_match,
    tree_to_polish,
)

__all__ += ["expression_graph", "expression_pairs", "graph_exact_match", "tree_to_polish"]

from pyg_grapheme.data.dag import (  # noqa: E402
    dag_graph,
    dag_pairs,
    dag_to_text,
    decode_dag,
    generate_dag_task,
    parse_dag,
    write_dag_task,
)

__all__ += ["dag_graph", "dag_pairs", "dag_to_text", "decode_dag", "generate_dag_task",
            "parse_dag", "write_dag_task"]
