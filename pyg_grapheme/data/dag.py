r"""Text -> DAG: arithmetic with shared subexpressions, whose answer graph is a DAG.

A question binds each subexpression used more than once to a name and uses the name::

    a=(+ 3 4);(- a (* a 2))

Its target is the expression **DAG**: one node per operator or number *written* in the
question, so ``a``'s subexpression is one node ``+`` with two parents (``-`` and
``*``); names, ``=`` and ``;`` are not nodes (they are references).

**Argument order.** A DAG breaks the expression trees' order edge (first -> second
argument, :mod:`pyg_grapheme.data.expression`): a shared node can be the first argument
of one parent and the second of another, or both arguments of one (``(* a a)``, a
multi-edge), and an order edge between siblings collides with a parent edge when one
sibling is inside the other (``(- a (* a 2))``: ``a -> *`` would be an order edge while
``* -> a`` is a parent edge). A graph-to-graph loss sees one unlabelled adjacency, so
the position has to be in the graph, per (parent, argument) pair: each operator gets a
**port node** for its second argument, labelled ``(`` and the operator (``(+``; every
operator has exactly one ``(`` in the question, right before it, so the model can always
emit that node by keeping that token and labelling it)::

    op -> arg0        op -> port        port -> arg1

Why the port carries the operator: with ports all labelled ``(``, the node matching
cannot tell the ``k`` ports of a question apart until the edges are learnt, the plan
spreads each over all ``k``, and the edge term's gradient on every ``op -> port`` edge is
``1 - 2/k > 0`` (push down, for ``k >= 3``): measured, every predicted edge died (edge
term = the target's edge count, docs/expression.md). Level 1 therefore has distinct
labels within a question (distinct operators and numbers), so labels alone fix the
matching and the edge term's gradient is exact.

A port has one parent and one child, so shared arguments, ``(* a a)`` and nesting all
stay simple graphs, and an ordered DAG is recovered from the labelled digraph alone:
exact match (labelled-graph isomorphism, networkx, :func:`graph_exact_match`) means the
same ordered DAG.

**Canonical text.** :func:`dag_to_text` writes an ordered DAG as text: the nodes with two
or more references are bound, in the post-order of a depth-first walk from the root in
argument order (so a binding only uses earlier ones), named ``a``, ``b``, ... in that
order; everything else is written inline. The generator writes every question with it,
so :func:`decode_dag` of a predicted graph equals the question exactly when the graph
is the question's DAG (decoded-text exact match).

**Data.** :func:`generate_dag_task` draws ``level`` 1 (one shared subexpression
``(op m n)``, used 2-3 times in a body of 1-2 more operators; every label distinct
within a question) and ``level`` 2 (two shared subexpressions, labels may repeat),
seeded, disjoint by DAG (= by canonical text) across splits, as QA records
``{"input": text, "target": text, "id", "level", "labels", "edges"}``
(:func:`write_dag_task` writes ``train/val/test.jsonl``; :func:`read_dag_jsonl` reads
them back through :func:`~pyg_grapheme.data.read_pairs`' checks).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.data import Data

from pyg_grapheme.data.curriculum import SPLITS, write_splits
from pyg_grapheme.data.expression import (
    OPERATORS,
    graph_exact_match,
    labelled_graph,
)
from pyg_grapheme.data.formats import read_pairs
from pyg_grapheme.data.graphemes import text_to_graph
from pyg_grapheme.data.pair import PairData

__all__ = [
    "DAG_LEVELS",
    "DEFAULT_DAG_SIZES",
    "PORT",
    "Dag",
    "dag_graph",
    "dag_pairs",
    "dag_to_text",
    "decode_dag",
    "generate_dag_task",
    "graph_exact_match",
    "graph_to_dag",
    "parse_dag",
    "read_dag_jsonl",
    "write_dag_task",
]

#: Prefix of a second-argument port node's label (``(`` + its operator, e.g. ``(+``).
PORT = "("
DAG_LEVELS = (1, 2)
#: Default (train, val, test) sizes per level.
DEFAULT_DAG_SIZES: dict[int, tuple[int, int, int]] = {1: (3000, 300, 300), 2: (3000, 300, 300)}
_NUMBERS = range(1, 13)
_NAMES = "abcdefghijklmnopqrstuvwxyz"
_TOKEN = re.compile(r"\s*(?:(\d+)|([a-z]+)|(.))")


class Dag:
    """An ordered DAG: ``labels[i]`` (an operator or a number), ``args[i]`` (the ordered
    argument node ids, ``[]`` for a number) and the ``root``. Node ids are arbitrary."""

    __slots__ = ("labels", "args", "root")

    def __init__(self, labels: list[str], args: list[list[int]], root: int) -> None:
        self.labels, self.args, self.root = labels, args, root

    def __repr__(self) -> str:
        return f"Dag({dag_to_text(self)!r})"


def dag_to_text(dag: Dag) -> str:
    """The canonical text of an ordered DAG (module docstring): nodes referenced two or
    more times are bound (``a=...;``) in the post-order of a walk from the root."""
    refs = [0] * len(dag.labels)
    for a in dag.args:
        for c in a:
            refs[c] += 1
    order: list[int] = []
    seen: set[int] = set()

    def walk(v: int) -> None:  # post-order of first visits
        if v in seen:
            return
        seen.add(v)
        for c in dag.args[v]:
            walk(c)
        if refs[v] >= 2:
            order.append(v)

    walk(dag.root)
    if len(order) > len(_NAMES):
        raise ValueError(f"at most {len(_NAMES)} shared nodes can be named, got {len(order)}")
    name = {v: _NAMES[k] for k, v in enumerate(order)}

    def inline(v: int, top: bool = False) -> str:
        if v in name and not top:
            return name[v]
        if not dag.args[v]:
            return dag.labels[v]
        return f"({dag.labels[v]} " + " ".join(inline(c) for c in dag.args[v]) + ")"

    return "".join(f"{name[v]}={inline(v, True)};" for v in order) + inline(dag.root, True)


def parse_dag(text: str) -> Dag:
    """Parse ``name=expr;...;expr`` (Polish notation, integers, ``+ - *``, names bound
    before use) into a :class:`Dag` whose node ids follow the text (the ``k``-th
    operator or number written is node ``k``); every reference to a name is the bound
    node itself."""
    tokens: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.end() == m.start() or not m.group(0).strip():
            break
        tokens.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    if text[pos:].strip():
        raise ValueError(f"cannot read {text[pos:]!r} in {text!r}")
    labels: list[str] = []
    args: list[list[int]] = []
    env: dict[str, int] = {}
    i = 0

    def fail(what: str) -> ValueError:
        got = tokens[i] if i < len(tokens) else "the end"
        return ValueError(f"expected {what} in {text!r}, got {got!r}")

    def expr() -> int:
        nonlocal i
        if i >= len(tokens):
            raise fail("an expression")
        tok = tokens[i]
        i += 1
        if tok.isdigit():
            labels.append(tok)
            args.append([])
            return len(labels) - 1
        if tok.isalpha():
            if tok not in env:
                raise ValueError(f"name {tok!r} used before it is bound in {text!r}")
            return env[tok]
        if tok != "(":
            i -= 1
            raise fail("a number, a name or '('")
        if i >= len(tokens) or tokens[i] not in OPERATORS:
            raise fail(f"an operator {OPERATORS}")
        node = len(labels)
        labels.append(tokens[i])
        args.append([])
        i += 1
        args[node] = [expr(), expr()]
        if i >= len(tokens) or tokens[i] != ")":
            raise fail("')'")
        i += 1
        return node

    while i + 1 < len(tokens) and tokens[i].isalpha() and tokens[i + 1] == "=":
        name = tokens[i]
        if name in env:
            raise ValueError(f"name {name!r} bound twice in {text!r}")
        i += 2
        env[name] = expr()
        if i >= len(tokens) or tokens[i] != ";":
            raise fail("';'")
        i += 1
    root = expr()
    if i != len(tokens):
        raise fail("the end")
    return Dag(labels, args, root)


def _port_graph(dag: Dag) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Labels and ``(source, target, kind)`` edges of :func:`dag_graph`, plain Python."""
    labels = list(dag.labels)
    edges: list[tuple[int, int, int]] = []
    for v, a in enumerate(dag.args):
        if not a:
            continue
        if len(a) != 2:
            raise ValueError(f"operator {dag.labels[v]!r} needs 2 arguments, got {len(a)}")
        port = len(labels)
        labels.append(PORT + dag.labels[v])
        edges += [(v, a[0], 0), (v, port, 2), (port, a[1], 1)]
    return labels, edges


def dag_graph(dag: Dag) -> Data:
    """The target graph of an ordered DAG: its nodes (in id order) then one port node
    per operator (in the operator's order), ``x`` byte slots of the labels, edges
    ``op -> arg0``, ``op -> port``, ``port -> arg1``; ``edge_attr`` (``long [E]``): 0, 2,
    1 for those three kinds (for reading; the loss sees only the adjacency)."""
    return labelled_graph(*_port_graph(dag))


def graph_to_dag(labels: Sequence[str], edge_index: torch.Tensor | list) -> Dag:
    """Read an ordered DAG back from a (predicted, hard) port graph; raises
    ``ValueError`` naming the first defect (a wrong label, an operator without exactly
    one port and one other child, a port without one parent and one child, a number with
    children, no single root, a cycle, a node the root does not reach)."""
    pairs = edge_index.t().tolist() if isinstance(edge_index, torch.Tensor) else list(edge_index)
    n = len(labels)
    out: list[list[int]] = [[] for _ in range(n)]
    inn: list[list[int]] = [[] for _ in range(n)]
    for s, d in pairs:
        if s == d:
            raise ValueError(f"self-loop at node {s}")
        out[s].append(d)
        inn[d].append(s)
    is_port = [len(lab) == 2 and lab[0] == PORT and lab[1] in OPERATORS for lab in labels]
    for v, lab in enumerate(labels):
        if not (lab in OPERATORS or is_port[v] or lab.isdigit()):
            raise ValueError(f"node {v} has label {lab!r}, not an operator, number or port")
    args: list[list[int]] = [[] for _ in range(n)]
    # numbers and ports first: an operator below reads its port's child
    for v, lab in enumerate(labels):
        if lab.isdigit() and out[v]:
            raise ValueError(f"number {lab!r} (node {v}) has children")
        if is_port[v]:
            if len(inn[v]) != 1 or len(out[v]) != 1 or labels[inn[v][0]] != lab[1]:
                raise ValueError(f"port {lab!r} (node {v}) needs one parent {lab[1]!r} "
                                 "and one child")
    for v, lab in enumerate(labels):
        if lab in OPERATORS:
            ports = [c for c in out[v] if is_port[c]]
            others = [c for c in out[v] if not is_port[c]]
            if len(ports) != 1 or len(others) != 1:
                raise ValueError(f"operator {lab!r} (node {v}) needs one port and one "
                                 f"first argument, got {len(ports)} and {len(others)}")
            second = out[ports[0]][0]
            if is_port[second]:
                raise ValueError(f"port {ports[0]} points to a port")
            args[v] = [others[0], second]
    roots = [v for v in range(n) if not inn[v]]
    if len(roots) != 1:
        raise ValueError(f"need exactly one root, got {len(roots)}")
    state = [0] * n  # 0 new, 1 on the stack, 2 done

    def visit(v: int) -> None:  # iterative would be longer; depth <= n is small here
        if state[v] == 1:
            raise ValueError(f"cycle through node {v}")
        if state[v] == 2:
            return
        state[v] = 1
        for c in out[v]:
            visit(c)
        state[v] = 2

    visit(roots[0])
    if not all(state):
        raise ValueError("not every node is reachable from the root")
    keep = [v for v in range(n) if not is_port[v]]
    new = {v: k for k, v in enumerate(keep)}
    return Dag([labels[v] for v in keep], [[new[c] for c in args[v]] for v in keep],
               new[roots[0]])


def decode_dag(labels: Sequence[str], edge_index: torch.Tensor | list) -> str:
    """The canonical text of a (predicted) port graph; a graph that is not an ordered
    port DAG decodes to ``"?"`` followed by the defect, never an exception."""
    if not labels:
        return "?empty graph"
    try:
        return dag_to_text(graph_to_dag(labels, edge_index))
    except (ValueError, RecursionError) as err:
        return f"?{err}"


# ------------------------------------------------------------------------- generator
def _leaf_or(rng: random.Random, names: list[str], p_name: float) -> str:
    return rng.choice(names) if names and rng.random() < p_name else str(rng.choice(_NUMBERS))


def _random_expr(rng: random.Random, names: list[str], ops: int) -> str:
    """A random Polish expression of ``ops`` operators over numbers and ``names``."""
    if ops == 0:
        return _leaf_or(rng, names, 0.6)
    left = rng.randint(0, ops - 1)
    return (f"({rng.choice(OPERATORS)} {_random_expr(rng, names, left)} "
            f"{_random_expr(rng, names, ops - 1 - left)})")


def _draw(rng: random.Random, level: int) -> str:
    """One canonical question of ``level`` (redrawn until every binding is shared)."""
    while True:
        names: list[str] = []
        binds = []
        for k in range(level):
            ops = 1 if k == 0 else rng.randint(1, 2)
            e = _random_expr(rng, names, ops)
            binds.append(f"{_NAMES[k]}={e};")
            names.append(_NAMES[k])
        body = _random_expr(rng, names, rng.randint(1, 2 if level == 1 else 3))
        dag = parse_dag("".join(binds) + body)
        text = dag_to_text(dag)
        refs = [0] * len(dag.labels)
        for a in dag.args:
            for c in a:
                refs[c] += 1
        shared = sum(r >= 2 for r in refs)
        # exactly `level` shared operator nodes, numbers never shared
        ok = shared == level and all(r < 2 or dag.args[v] for v, r in enumerate(refs))
        if ok and (level > 1 or len(set(dag.labels)) == len(dag.labels)):
            return text


def _record(level: int, number: int, text: str) -> dict:
    labels, edges = _port_graph(parse_dag(text))
    return {"id": f"D{level}-{number:05d}", "input": text, "target": text, "level": level,
            "labels": labels, "edges": [[s, d] for s, d, _ in edges]}


def generate_dag_task(
    level: int = 1, seed: int = 0, sizes: Sequence[int] | None = None,
) -> dict[str, list[dict]]:
    """The ``{"train", "val", "test"}`` QA records of one level, drawn from
    ``random.Random(f"dag{level}-{seed}")``: distinct canonical texts (= distinct DAGs),
    filled into test, then val, then train (a bigger train split keeps val and test)."""
    if level not in DAG_LEVELS:
        raise ValueError(f"unknown DAG level {level!r}; known levels: {list(DAG_LEVELS)}")
    sizes = tuple(DEFAULT_DAG_SIZES[level] if sizes is None else sizes)
    if len(sizes) != 3 or any(not isinstance(n, int) or n < 0 for n in sizes):
        raise ValueError(f"sizes must be three non-negative integers, got {sizes!r}")
    rng = random.Random(f"dag{level}-{seed}")
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    number = 0
    for split in ("test", "val", "train"):
        n = sizes[SPLITS.index(split)]
        records: list[dict] = []
        misses = 0
        while len(records) < n:
            text = _draw(rng, level)
            if text in seen:
                misses += 1
                if misses > 100 * n + 1000:
                    raise ValueError(f"level {level} ran out of distinct DAGs for {sizes}")
                continue
            seen.add(text)
            number += 1
            records.append(_record(level, number, text))
        out[split] = records
    return {s: out[s] for s in SPLITS}


def write_dag_task(
    out: str | os.PathLike, level: int = 1, seed: int = 0, sizes: Sequence[int] | None = None,
) -> dict[str, Path]:
    """Write ``out/train.jsonl``, ``val.jsonl`` and ``test.jsonl``; returns their paths."""
    return write_splits(out, generate_dag_task(level, seed, sizes))


def _pair(text: str, level: int) -> PairData:
    pair = PairData.from_graphs(text_to_graph(text), dag_graph(parse_dag(text)))
    pair.level = torch.tensor([level])
    return pair


def dag_pairs(level: int, split: str, *, seed: int = 0,
              sizes: Sequence[int] | None = None) -> list[PairData]:
    """The ``split`` of :func:`generate_dag_task` as (question text graph, port DAG)
    pairs (``x_s``/``edge_index_s``/... of the question, ``x_t``/``edge_index_t``/
    ``edge_attr_t`` of the DAG, ``level`` ``long [1]``)."""
    return [_pair(r["input"], level) for r in generate_dag_task(level, seed, sizes)[split]]


def read_dag_jsonl(path: str | os.PathLike) -> list[PairData]:
    """Pairs from a QA JSONL file of DAG questions (:func:`write_dag_task`'s files, or
    any whose ``input`` is a canonical DAG text; ``level`` from the record, else 1).
    Raises ``ValueError`` naming ``file:line`` for a text that is not one."""
    read_pairs(path)  # the QA format's own checks, with file:line errors
    out = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            try:
                if dag_to_text(parse_dag(r["input"])) != r["input"]:
                    raise ValueError(f"{r['input']!r} is not in canonical form")
                out.append(_pair(r["input"], int(r.get("level", 1))))
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    return out
