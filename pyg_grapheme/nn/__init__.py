"""pyg_grapheme.nn: PyG layers (encoder, DAG convolution, pooling, byte head) and the model."""

from pyg_grapheme.nn.blocks import GatedMessagePassing, PreNormGraphBlock
from pyg_grapheme.nn.components import connected_components
from pyg_grapheme.nn.dag_conv import DAGConv
from pyg_grapheme.nn.dag_gru import DAGGRU
from pyg_grapheme.nn.encoder import GraphemeEncoder
from pyg_grapheme.nn.head import ByteHead, one_hot_bytes
from pyg_grapheme.nn.pool import PoolOutput, ThresholdMergePool, UnpoolInfo
from pyg_grapheme.nn.relative_position import RelativePositionBias
from pyg_grapheme.nn.transform_net import GraphTransformNet, decode_graphs

__all__ = [
    "GatedMessagePassing",
    "PreNormGraphBlock",
    "ByteHead",
    "DAGConv",
    "DAGGRU",
    "GraphTransformNet",
    "GraphemeEncoder",
    "PoolOutput",
    "RelativePositionBias",
    "ThresholdMergePool",
    "UnpoolInfo",
    "connected_components",
    "decode_graphs",
    "one_hot_bytes",
]

from pyg_grapheme.nn.edge_head import EdgeHead, EdgeHeadOutput, all_pairs  # noqa: E402

__all__ += ["EdgeHead", "EdgeHeadOutput", "all_pairs"]

from pyg_grapheme.nn.expression_net import ExpressionNet, hard_graphs  # noqa: E402

__all__ += ["ExpressionNet", "hard_graphs"]
