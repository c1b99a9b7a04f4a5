r"""Text -> expression graph: the math curriculum's questions with their trees as targets.

A question ``(+ (* 3 4) 5)`` (the curriculum's ``input_polish``) is the input, read as a
text graph (:func:`~pyg_grapheme.text_to_graph`); its target is the expression tree of
``input_expr`` as a PyG graph:

- **nodes:** one per operator or number, in pre-order (the order the tokens are read),
  ``x`` the label's UTF-8 bytes in the byte-slot format of
  :mod:`pyg_grapheme.data.graphemes` (``uint8 [n, GRAPHEME_WIDTH]``, byte + 1, 0 = end),
  so a multi-digit number such as ``16`` is *one* node, and a byte head's distributions
  compare with it directly;
- **edges:** ``parent -> child`` for every argument, plus one *order edge*
  ``child_k -> child_{k+1}`` between consecutive arguments of the same operator. The
  order edges put the argument position into the adjacency itself, which is all a
  graph-to-graph loss sees: ``(- 7 3)`` and ``(- 3 7)`` would otherwise be the same
  graph. ``edge_attr`` (``long [E]``) names each edge's kind: ``k`` for the
  ``k``-th argument (0, 1), :data:`ORDER` for an order edge.

:func:`tree_to_polish` decodes such a graph (a predicted one too) back to Polish
notation, so the decoded text equals the question exactly when the graph is the tree.
:func:`graph_exact_match` compares two labelled graphs up to isomorphism (networkx).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch_geometric.data import Data

from pyg_grapheme.data.curriculum import generate_curriculum
from pyg_grapheme.data.graphemes import GRAPHEME_WIDTH, PAD, decode_slots, text_to_graph
from pyg_grapheme.data.pair import PairData

__all__ = [
    "ORDER",
    "OPERATORS",
    "expression_graph",
    "expression_pairs",
    "graph_exact_match",
    "label_bytes",
    "node_labels",
    "parse_polish",
    "tree_to_polish",
]

#: ``edge_attr`` of an order edge (argument ``k`` -> argument ``k + 1``).
ORDER = 2
OPERATORS = ("+", "-", "*")
_JSON_OPS = {"Add": "+", "Sub": "-", "Mul": "*"}

# An expression: an int (a leaf) or a tuple (op, left, right), as in the curriculum.
Expr = int | tuple


def expr_from_json(node: dict) -> Expr:
    """The curriculum's ``input_expr`` JSON as an :data:`Expr`."""
    if "Value" in node:
        return int(node["Value"]["Integer"])
    op = node["BinOp"]
    return (_JSON_OPS[op["op"]], expr_from_json(op["left"]), expr_from_json(op["right"]))


def parse_polish(text: str) -> Expr:
    """Parse ``(op a b)`` Polish notation (integers, ``+ - *``)."""
    tokens = text.replace("(", " ( ").replace(")", " ) ").split()
    pos = 0

    def read() -> Expr:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"unexpected end of expression in {text!r}")
        tok = tokens[pos]
        pos += 1
        if tok != "(":
            if not tok.lstrip("-").isdigit():
                raise ValueError(f"expected a number or '(' in {text!r}, got {tok!r}")
            return int(tok)
        op = tokens[pos] if pos < len(tokens) else ""
        if op not in OPERATORS:
            raise ValueError(f"expected an operator {OPERATORS} in {text!r}, got {op!r}")
        pos += 1
        out = (op, read(), read())
        if pos >= len(tokens) or tokens[pos] != ")":
            raise ValueError(f"expected ')' in {text!r}")
        pos += 1
        return out

    expr = read()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in {text!r}")
    return expr


def polish(e: Expr) -> str:
    """Polish notation of an expression, the curriculum's spelling."""
    return str(e) if isinstance(e, int) else f"({e[0]} {polish(e[1])} {polish(e[2])})"


def label_bytes(labels: list[str]) -> torch.Tensor:
    """Byte slots (``uint8 [n, GRAPHEME_WIDTH]``, byte + 1, 0 = end) of node labels."""
    x = torch.full((len(labels), GRAPHEME_WIDTH), PAD, dtype=torch.uint8)
    for i, label in enumerate(labels):
        raw = label.encode("utf-8")
        if not 0 < len(raw) <= GRAPHEME_WIDTH:
            raise ValueError(f"label {label!r} must have 1 to {GRAPHEME_WIDTH} UTF-8 bytes")
        x[i, : len(raw)] = torch.tensor(list(raw), dtype=torch.uint8) + 1
    return x


def node_labels(x: torch.Tensor) -> list[str]:
    """Labels of byte-slot rows (targets' ``x`` or a model's argmax classes)."""
    return [decode_slots(row.unsqueeze(0)).decode("utf-8", errors="replace") for row in x]


def expression_graph(expr: Expr) -> Data:
    """The tree of ``expr`` (see the module docstring): ``x``, ``edge_index``,
    ``edge_attr`` and ``num_nodes``, nodes in pre-order."""
    labels: list[str] = []
    edges: list[tuple[int, int, int]] = []

    def visit(e: Expr) -> int:
        i = len(labels)
        labels.append(str(e) if isinstance(e, int) else e[0])
        if not isinstance(e, int):
            args = [visit(a) for a in e[1:]]
            edges.extend((i, a, k) for k, a in enumerate(args))
            edges.extend((a, b, ORDER) for a, b in zip(args, args[1:], strict=False))
        return i

    visit(expr)
    return labelled_graph(labels, edges)


def labelled_graph(labels: Sequence[str], edges: Sequence[tuple[int, int, int]]) -> Data:
    """A ``Data`` with one node per label (``x``: its byte slots) and the edges
    ``(src, dst, kind)`` as ``edge_index`` ``[2, E]`` and ``edge_attr`` ``long [E]``."""
    if edges:
        t = torch.tensor(edges, dtype=torch.long).t()
        edge_index, edge_attr = t[:2].contiguous(), t[2].contiguous()
    else:
        edge_index = torch.zeros(2, 0, dtype=torch.long)
        edge_attr = torch.zeros(0, dtype=torch.long)
    return Data(x=label_bytes(list(labels)), edge_index=edge_index, edge_attr=edge_attr,
                num_nodes=len(labels))


def tree_to_polish(labels: list[str], edge_index: torch.Tensor | list) -> str:
    """Decode an expression graph (target or predicted, hard edges) to Polish notation.

    The root is the node without incoming edges; the arguments of a node ``p`` are its
    out-neighbours ``y`` whose every in-neighbour is ``p`` or another out-neighbour of
    ``p`` (this tells a child from ``p``'s own next sibling, which ``p`` points to by an
    order edge), ordered by the order edges among them. A graph that is not such a tree
    (no single root, a cycle, a wrong argument count) still decodes to some text,
    marked with ``?``, never an exception; it just does not match.
    """
    pairs = edge_index.t().tolist() if isinstance(edge_index, torch.Tensor) else list(edge_index)
    n = len(labels)
    out: list[set[int]] = [set() for _ in range(n)]
    inn: list[set[int]] = [set() for _ in range(n)]
    for s, d in pairs:
        if s != d:
            out[s].add(d)
            inn[d].add(s)
    roots = [i for i in range(n) if not inn[i]]
    if not roots:
        return "?"

    def args(p: int) -> list[int]:
        kids = [y for y in out[p] if inn[y] <= out[p] | {p}]
        # first argument: no order edge from a sibling; then follow the order edges
        return sorted(kids, key=lambda y: (len(inn[y] & set(kids)), y))

    def render(i: int, depth: int) -> str:
        if depth > n:
            return "?"
        kids = args(i)
        if labels[i] in OPERATORS:
            inner = " ".join(render(k, depth + 1) for k in kids)
            text = f"({labels[i]} {inner})"
            return text if len(kids) == 2 else "?" + text
        return labels[i] if not kids else "?" + labels[i]

    text = render(roots[0], 0)
    return text if len(roots) == 1 else "?" + text


def graph_exact_match(labels_a: list[str], edges_a, labels_b: list[str], edges_b) -> bool:
    """Whether two labelled directed graphs are the same up to renumbering (networkx
    isomorphism with equal labels; edges as ``[2, E]`` tensors or pair lists)."""
    import networkx as nx

    def graph(labels, edges) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from((i, {"label": lab}) for i, lab in enumerate(labels))
        pairs = edges.t().tolist() if isinstance(edges, torch.Tensor) else edges
        g.add_edges_from(pairs)
        return g

    if len(labels_a) != len(labels_b) or sorted(labels_a) != sorted(labels_b):
        return False
    ga, gb = graph(labels_a, edges_a), graph(labels_b, edges_b)
    if ga.number_of_edges() != gb.number_of_edges():
        return False
    return nx.is_isomorphic(ga, gb, node_match=lambda u, v: u["label"] == v["label"])


def expression_pairs(
    level: int, split: str, *, seed: int = 0, sizes: tuple[int, int, int] | None = None,
) -> list[PairData]:
    """The curriculum ``level``'s ``split`` as (question text graph, expression graph)
    pairs: ``x_s``/``edge_index_s``/``grapheme_len_s``/``text_bytes_s`` of the question,
    ``x_t``/``edge_index_t``/``edge_attr_t`` of its tree, and
    ``level`` (``long [1]``)."""
    records = generate_curriculum(level, seed, sizes)[split]
    out = []
    for r in records:
        expr = expr_from_json(r["input_expr"])
        pair = PairData.from_graphs(text_to_graph(r["input_polish"]),
                                    expression_graph(expr))
        pair.level = torch.tensor([level])
        out.append(pair)
    return out
