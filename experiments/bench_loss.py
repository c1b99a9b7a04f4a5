"""Speed, memory and finiteness of the structural loss against POT, forward + backward.

Three tables (torch threads fixed and printed; medians of interleaved runs; ratios are
against the POT loop of the same table, measured in the same run):

1. Sinkhorn: 64 pairs, n, m uniform in 5..60, 64-dim features, cost
   ||x - y||^2 / (2d), uniform marginals (zero-padded where batched), reg 0.1, exactly
   100 iterations, backward to the features. Ours (stabilised scaling, and our
   log-domain mode) vs a Python loop over ``ot.sinkhorn2`` and ``ot.batch.solve_batch``
   (log and scaling domains). "saved MB": bytes autograd keeps for backward
   (``saved_tensors_hooks``). "finite x1e3": value and gradient finite with the cost
   multiplied by 1000 (cost/reg ~ 1e4).
2. Full loss with the joint edge term on random DAGs (edge i->j, i<j, p=0.3, soft
   weights), the same dummy-augmented fused-GW problem for everyone (alpha=1, beta=1,
   10 outer steps x 100 Sinkhorn iterations, reg 0.1): ``structural_loss`` (gamma=0) vs a
   loop over ``ot.gromov.entropic_fused_gromov_wasserstein2`` and
   ``ot.batch.solve_gromov_batch``; backward to features and edge weights. Also our
   default settings (tolerance-based stopping). Every method's plan is measured with one
   yardstick (``Stationarity``): the L1 change of the plan under one more exact
   linearisation step in float64, relative to the pair's mass (0 at a stationary point,
   where the envelope gradient is exact).
   2b. Equal accuracy: on the first ``--pot-pairs`` pairs, our defaults against the POT
   loop run to its own outer tolerance (``--pot-tol``, float64: in float32 POT's scaling
   kernel underflows here; warm-started; at most ``--pot-max-iter`` outer steps), with
   the fixed-budget rows beside them, the steps each ran and the same yardstick.
3. One pair, n = m = 32..2048: time and saved-for-backward memory of our Sinkhorn
   (100 iterations) and of the full loss (defaults), and POT's batched log-domain solver
   with autodiff (up to n = 512) for the memory contrast.
4. Exactness of the gradient at the defaults (issue 10): relative error of autograd
   against central finite differences of ``structural_loss`` itself, float64, three
   predicted chains of 2, 3, 5 nodes (softmax features ``[N, 8, 256]`` or ``[N, 16]``,
   edge weights in (0.1, 0.9), positive masses) against one-hot chains of 1, 5, 3 nodes;
   coordinate-wise for edge weights and masses, along 4 random directions for features.
   And a training-like batch: 32 such chains of 3..19 nodes (byte-head features) against
   one-hot chains of +-2 nodes, defaults, float32: forward+backward time, linearisation
   steps, pairs left unconverged.

    .venv/bin/python experiments/bench_loss.py            # all tables, ~15 min
    .venv/bin/python experiments/bench_loss.py --table 2 --graph-sizes 5 12
    .venv/bin/python experiments/bench_loss.py --table 2 --repeats 3   # tables 2 and 2b
    .venv/bin/python experiments/bench_loss.py --table 4      # gradient accuracy, ~1 min
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable

import ot
import torch
from ot.batch import solve_batch, solve_gromov_batch
from torch_geometric.data import Batch, Data

from pyg_grapheme.loss import sinkhorn, structural_loss
from pyg_grapheme.loss.sinkhorn import solve as sinkhorn_solve

warnings.filterwarnings("ignore")  # POT warns about unconverged solves by design here

D = 64
REG = 0.1
ITERS = 100


# ----------------------------------------------------------------------- helpers
def saved_mb(fn: Callable[[], torch.Tensor]) -> float:
    """MB of tensors autograd saves for backward while building ``fn()``'s graph."""
    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key not in seen:  # count shared storages once
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total / 2**20


def interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in methods}
    for f in methods.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in methods.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def check(
    fn: Callable[[float], tuple[torch.Tensor, torch.Tensor]], scale: float, ref: torch.Tensor
) -> tuple[str, str]:
    """("yes"/"NO": value and gradient finite; median over pairs of (value - ref) / |ref|)."""
    try:
        value, grad = fn(scale)
    except Exception:  # a solver that raises is not finite either
        return "NO (raises)", "-"
    ok = bool(torch.isfinite(value).all()) and bool(torch.isfinite(grad).all())
    rel = ((value.detach().double() - ref) / ref.abs().clamp_min(1e-12)).median()
    return ("yes" if ok else "NO"), f"{float(rel):+.1e}"


def table(rows: list[tuple], header: tuple[str, ...]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


# -------------------------------------------------------------- table 1: Sinkhorn
def sinkhorn_problem(seed: int = 0, B: int = 64):
    g = torch.Generator().manual_seed(seed)
    ns = torch.randint(5, 61, (B,), generator=g).tolist()
    ms = torch.randint(5, 61, (B,), generator=g).tolist()
    xs = [torch.randn(n, D, generator=g) for n in ns]
    ys = [torch.randn(m, D, generator=g) for m in ms]
    return xs, ys


def pad(ts: list[torch.Tensor], L: int) -> torch.Tensor:
    out = torch.zeros(len(ts), L, ts[0].size(1))
    for k, t in enumerate(ts):
        out[k, : len(t)] = t
    return out


def sqcost(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    sq = (X * X).sum(-1).unsqueeze(-1) + (Y * Y).sum(-1).unsqueeze(-2)
    return (sq - 2 * X @ Y.transpose(-1, -2)).clamp_min(0) / (2 * D)


def table_sinkhorn(repeats: int) -> None:
    xs, ys = sinkhorn_problem()
    B, n, m = len(xs), max(map(len, xs)), max(map(len, ys))
    X, Y = pad(xs, n), pad(ys, m)
    a = torch.zeros(B, n)
    b = torch.zeros(B, m)
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        a[k, : len(x)] = 1 / len(x)
        b[k, : len(y)] = 1 / len(y)

    def ours(method: str):
        def run(scale: float = 1.0):
            Xg = X.clone().requires_grad_()
            v = sinkhorn(sqcost(Xg, Y) * scale, a, b, REG, max_iter=ITERS, tol=0, method=method)
            return v.value, v.value_linear, Xg
        return run

    def pot_loop(scale: float = 1.0):
        xg = [x.clone().requires_grad_() for x in xs]
        vals = []
        for x, y in zip(xg, ys, strict=True):
            M = sqcost(x, y) * scale
            ua = torch.full((len(x),), 1 / len(x))
            ub = torch.full((len(y),), 1 / len(y))
            vals.append(ot.sinkhorn2(ua, ub, M, REG, numItermax=ITERS, stopThr=0))
        vals = torch.stack(vals)  # sinkhorn2 returns the linear cost <P, M>
        return vals, vals, xg

    def pot_batch(method: str, grad: str):
        def run(scale: float = 1.0):
            Xg = X.clone().requires_grad_()
            res = solve_batch(sqcost(Xg, Y) * scale, REG, a=a, b=b, max_iter=ITERS, tol=0,
                              method=method, grad=grad)
            return res.value, res.value_linear, Xg
        return run

    methods = {
        "ours: stabilised scaling, envelope": ours("stabilized"),
        "ours: log domain, envelope": ours("log"),
        "POT loop over ot.sinkhorn2": pot_loop,
        "POT solve_batch log_sinkhorn, autodiff": pot_batch("log_sinkhorn", "autodiff"),
        "POT solve_batch log_sinkhorn, envelope": pot_batch("log_sinkhorn", "envelope"),
        "POT solve_batch sinkhorn (scaling), autodiff": pot_batch("sinkhorn", "autodiff"),
    }

    def fwd_bwd(run):
        def f():
            v, _, _ = run()
            v.sum().backward()
        return f

    def grad_of(run):
        def f(scale):
            v, lin, x = run(scale)
            v.sum().backward()
            g = torch.cat([t.grad.flatten() for t in x]) if isinstance(x, list) else x.grad
            return lin, g
        return f

    t = interleaved({k: fwd_bwd(r) for k, r in methods.items()}, repeats)
    base = t["POT loop over ot.sinkhorn2"]
    # Reference values: float64 log-domain Sinkhorn, the same 100 iterations.
    refs = {}
    for scale in (1.0, 1e3):
        C64 = sqcost(X.double(), Y.double()) * scale
        refs[scale] = sinkhorn(C64, a.double(), b.double(), REG, max_iter=ITERS, tol=0,
                               method="log").value_linear
    rows = []
    for k, r in methods.items():
        mb = saved_mb(lambda r=r: r()[0].sum())
        fin1, err1 = check(grad_of(r), 1.0, refs[1.0])
        fin3, err3 = check(grad_of(r), 1e3, refs[1e3])
        rows.append((k, f"{1e3 * t[k]:.1f}", f"{base / t[k]:.1f}x", f"{mb:.1f}", fin1, err1,
                     fin3, err3))
    print(f"\n### 1. Sinkhorn, {B} pairs, n,m in 5..60, d={D}, reg {REG}, {ITERS} iterations, "
          "forward+backward")
    print("(rel. diff: median over pairs of (<P,C> - ref) / ref, ref = <P,C> of float64"
          " log-domain Sinkhorn, same iterations; x1e3: the cost multiplied by 1000)")
    table(rows, ("method", "ms (median)", "vs POT loop", "saved MB", "finite", "rel. diff",
                 "finite x1e3", "rel. diff x1e3"))


# ---------------------------------------------------------- table 2: full loss
def random_dag(n: int, g: torch.Generator, p: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.triu_indices(n, n, 1)
    keep = torch.rand(i.numel(), generator=g) < p
    ei = torch.stack([i[keep], j[keep]])
    return ei, torch.rand(ei.size(1), generator=g)


def graph_problem(seed: int = 0, B: int = 64, lo: int = 5, hi: int = 60):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(B):
        n, m = (int(torch.randint(lo, hi + 1, (1,), generator=g)) for _ in range(2))
        ei, w = random_dag(n, g)
        preds.append(Data(x=torch.randn(n, D, generator=g), edge_index=ei, edge_weight=w,
                          num_nodes=n))
        ei, _ = random_dag(m, g)
        targets.append(Data(x=torch.randn(m, D, generator=g), edge_index=ei, num_nodes=m))
    return preds, targets


def augmented(pred: Data, tgt: Data, x: torch.Tensor, w: torch.Tensor):
    """The dummy-augmented FGW inputs of one pair (what structural_loss solves)."""
    n, m = pred.num_nodes, tgt.num_nodes
    f = dict(dtype=x.dtype)  # float32 in table 2; float64 for POT's tolerance runs (2b)
    M = torch.cat([torch.cat([sqcost(x, tgt.x.to(x.dtype)), torch.ones(n, 1, **f)], 1),
                   torch.cat([torch.ones(1, m, **f),
                              torch.full((1, 1), -REG * math.log(min(n, m)), **f)], 1)], 0)
    A = torch.zeros(n + 1, n + 1, dtype=w.dtype).index_put(
        (pred.edge_index[0], pred.edge_index[1]), w)
    Bt = torch.zeros(m + 1, m + 1, **f)
    Bt[tgt.edge_index[0], tgt.edge_index[1]] = 1.0
    p = torch.cat([torch.ones(n, **f), torch.tensor([float(m)], **f)])
    q = torch.cat([torch.ones(m, **f), torch.tensor([float(n)], **f)])
    return M, A, Bt, p, q


class Stationarity:
    """One yardstick of convergence for every method's plan (issue 10 item 2).

    The residual of a plan ``P`` is the L1 change of the plan under one more *exact*
    linearisation step, relative to the pair's mass: ``|Sinkhorn_reg(M + grad Q(P)) - P|_1
    / sum p``, in float64 (the Sinkhorn solve of ``pyg_grapheme.loss.sinkhorn`` to a
    marginal tolerance of 1e-10 or 20000 iterations; it is tested against POT's
    ``sinkhorn_log``). 0 at a stationary point of the entropic FGW objective, which is
    where the envelope gradient is exact. The same definition as ``structural_loss``'s own
    ``residual``, but computed here in float64 for every method alike, whatever its dtype,
    inner tolerance or stopping rule. Plans are ``[B, R, C]`` in ``structural_loss``'s
    layout (pair ``k``'s nodes first, the dummy row / column last).
    """

    def __init__(self, preds: list[Data], targets: list[Data]) -> None:
        B = len(preds)
        self.R = max(p.num_nodes for p in preds) + 1
        self.C = max(t.num_nodes for t in targets) + 1
        f64 = dict(dtype=torch.float64)
        self.M = torch.zeros(B, self.R, self.C, **f64)
        self.A = torch.zeros(B, self.R, self.R, **f64)
        self.B = torch.zeros(B, self.C, self.C, **f64)
        self.a = torch.zeros(B, self.R, **f64)
        self.b = torch.zeros(B, self.C, **f64)
        self.idx = []
        for k, (pr, tg) in enumerate(zip(preds, targets, strict=True)):
            M, A, Bt, p, q = (t.double() for t in augmented(pr, tg, pr.x, pr.edge_weight))
            r = torch.tensor([*range(pr.num_nodes), self.R - 1])
            c = torch.tensor([*range(tg.num_nodes), self.C - 1])
            self.idx.append((r, c))
            self.M[k][r[:, None], c[None]] = M
            self.A[k][r[:, None], r[None]] = A
            self.B[k][c[:, None], c[None]] = Bt
            self.a[k, r], self.b[k, c] = p, q

    def layout(self, plans: list[torch.Tensor]) -> torch.Tensor:
        """Per-pair ``[n + 1, m + 1]`` plans (dummy last) -> ``[B, R, C]``."""
        out = torch.zeros(len(plans), self.R, self.C, dtype=torch.float64)
        for k, (P, (r, c)) in enumerate(zip(plans, self.idx, strict=True)):
            out[k][r[:, None], c[None]] = P.detach().double()
        return out

    def grad_q(self, P: torch.Tensor) -> torch.Tensor:
        """grad of Q(P) = sum_ijkl (A_ik - B_jl)^2 P_ij P_kl (square loss, A and B not
        symmetric): both index orders, each (A*A) r + (B*B) c - 2 A P B^T."""
        A, Bm = self.A, self.B
        r, c = P.sum(2, keepdim=True), P.sum(1).unsqueeze(2)
        out = torch.zeros_like(P)
        for A_, B_ in ((A, Bm), (A.transpose(1, 2), Bm.transpose(1, 2))):
            out += (A_ * A_) @ r + ((B_ * B_) @ c).transpose(1, 2) \
                - 2 * A_ @ P @ B_.transpose(1, 2)
        return out

    def __call__(self, P: torch.Tensor) -> torch.Tensor:
        """``[B]`` residuals of the plans ``P`` (``[B, R, C]``); nan where ``P`` is not
        finite."""
        P = P.detach().double()
        P = torch.where(torch.isfinite(P), P, torch.nan)
        ok = torch.isfinite(P).flatten(1).all(1)
        Pc = torch.where(ok.view(-1, 1, 1), P, 0.0)
        _, _, Pn, _, _ = sinkhorn_solve(self.M + self.grad_q(Pc), self.a, self.b, REG,
                                        max_iter=20000, tol=1e-10)
        res = (Pn - Pc).abs().sum((1, 2)) / self.a.sum(1)
        return torch.where(ok, res, torch.nan)

    @staticmethod
    def summary(res: torch.Tensor) -> tuple[str, str, str]:
        """(median, max, "pairs > 1e-3 / > 1e-4 (/ not finite)")."""
        fin = res[torch.isfinite(res)]
        if fin.numel() == 0:
            return "nan", "nan", f"all {res.numel()} not finite"
        bad = res.numel() - fin.numel()
        count = f"{int((fin > 1e-3).sum())} / {int((fin > 1e-4).sum())}"
        return (f"{float(fin.median()):.1e}", f"{float(fin.max()):.1e}",
                count + (f" ({bad} nan)" if bad else ""))


def reference(preds: list[Data], targets: list[Data]) -> torch.Tensor:
    """``[B]`` unregularised objective ``<P, M> + Q(P)`` of our solver in float64, no
    annealing (POT does not anneal), run to convergence: a local optimum like the others."""
    pb = Batch.from_data_list(preds)
    tb = Batch.from_data_list(targets)
    pb.x, pb.edge_weight, tb.x = pb.x.double(), pb.edge_weight.double(), tb.x.double()
    _, parts = structural_loss(
        pb, tb, reduction="none", return_components=True, reg_init=None, max_outer=200,
        inner_iter=500, max_iter=5000, tol=1e-8, outer_tol=1e-9, alpha=1.0, beta=1.0,
        gamma=0.0, reg=REG, node_cost="sqeuclidean", edge_loss="square",
    )
    log_rho = torch.tensor([math.log(min(p.num_nodes, t.num_nodes))
                            for p, t in zip(preds, targets, strict=True)], dtype=torch.float64)
    return parts["node"] + parts["edge"] - REG * log_rho * parts["plan"][:, -1, -1]


def table_full(repeats: int, lo: int = 5, hi: int = 60, pot_pairs: int = 4,
               pot_tols: tuple[float, ...] = (1e-3,), pot_max_iter: int = 30) -> None:
    preds, targets = graph_problem(lo=lo, hi=hi)
    tb = Batch.from_data_list(targets)
    B = len(preds)
    yard = Stationarity(preds, targets)
    outer, inner = 10, ITERS
    common = dict(alpha=1.0, beta=1.0, gamma=0.0, reg=REG, node_cost="sqeuclidean",
                  edge_loss="square")

    log_rho = torch.tensor([math.log(min(p.num_nodes, t.num_nodes))
                            for p, t in zip(preds, targets, strict=True)])

    def fgw_value(v: torch.Tensor, parts: dict) -> torch.Tensor:
        """The unregularised objective <P, M> + Q(P) at our plan, M with POT's dd shift."""
        P_dd = parts["plan"][:, -1, -1]
        return (parts["node"] + parts["edge"] - REG * log_rho.to(v.dtype) * P_dd).detach()

    def ours(**kw):
        def run(scale: float = 1.0):
            pb = Batch.from_data_list(preds)
            pb.x = (pb.x * math.sqrt(scale)).requires_grad_()
            pb.edge_weight.requires_grad_()
            v, parts = structural_loss(pb, tb, reduction="none", return_components=True,
                                       **{**common, **kw})
            return v, fgw_value(v, parts), [pb.x, pb.edge_weight], parts["plan"]
        return run

    def pot_loop(scale: float = 1.0):
        leaves, vals, plans = [], [], []
        for pr, tg in zip(preds, targets, strict=True):
            x = (pr.x * math.sqrt(scale)).requires_grad_()
            w = pr.edge_weight.clone().requires_grad_()
            M, A, Bt, p, q = augmented(pr, tg, x, w)
            v, log = ot.gromov.entropic_fused_gromov_wasserstein2(
                M, A, Bt, p, q, loss_fun="square_loss", epsilon=REG / 2, alpha=0.5,
                symmetric=False, G0=torch.outer(p, q) / p.sum(), max_iter=outer, tol=0,
                numItermax=inner, stopThr=0, log=True)
            vals.append(v * 2)
            plans.append(log["T"])
            leaves += [x, w]
        vals = torch.stack(vals)  # the unregularised objective at POT's plan
        return vals, vals, leaves, yard.layout(plans)

    def pot_batch(scale: float = 1.0):
        n = max(p.num_nodes for p in preds) + 1
        m = max(t.num_nodes for t in targets) + 1
        Ms, As, Bs, ps, qs, leaves = [], [], [], [], [], []
        for pr, tg in zip(preds, targets, strict=True):
            x = (pr.x * math.sqrt(scale)).requires_grad_()
            w = pr.edge_weight.clone().requires_grad_()
            M, A, Bt, p, q = augmented(pr, tg, x, w)
            r, c = M.shape
            # zero-mass padding; the dummies are moved to the padded problem's ends
            idx_r = list(range(r - 1)) + [n - 1]
            idx_c = list(range(c - 1)) + [m - 1]
            Mp = torch.zeros(n, m).index_put((torch.tensor(idx_r)[:, None],
                                              torch.tensor(idx_c)[None, :]), M)
            Ap = torch.zeros(n, n).index_put((torch.tensor(idx_r)[:, None],
                                              torch.tensor(idx_r)[None, :]), A)
            Bp = torch.zeros(m, m)
            Bp[torch.tensor(idx_c)[:, None], torch.tensor(idx_c)[None, :]] = Bt
            Ms.append(Mp), As.append(Ap), Bs.append(Bp)
            # Padding mass 1e-9, not 0: solve_gromov_batch takes the log of the previous
            # plan, and an all-zero row gives -inf - (-inf) = nan in the next step.
            ps.append(torch.full((n,), 1e-9).index_put((torch.tensor(idx_r),), p))
            qs.append(torch.full((m,), 1e-9).index_put((torch.tensor(idx_c),), q))
            leaves += [x, w]
        res = solve_gromov_batch(
            torch.stack(As), torch.stack(Bs), reg=REG / 2, a=torch.stack(ps), b=torch.stack(qs),
            M=torch.stack(Ms), alpha=0.5, symmetric=False, max_iter=outer, tol=0,
            max_iter_inner=inner, tol_inner=0, grad="envelope",
        )
        return res.value * 2, res.value * 2, leaves, res.plan

    methods = {
        # 5 annealed + 4 stationary-phase steps + the final solve = 10 linearisations.
        "ours: structural_loss, 10 x 100 iterations": ours(outer_iter=outer, inner_iter=inner,
                                                          max_iter=inner, max_outer=outer // 2 - 1,
                                                          tol=0, outer_tol=0),
        "ours: structural_loss, defaults (tolerances)": ours(),
        "POT loop over entropic_fused_gromov_wasserstein2": pot_loop,
        "POT solve_gromov_batch (proximal), envelope": pot_batch,
    }

    def fwd_bwd(run):
        def f():
            v = run()[0]
            v.sum().backward()
        return f

    def grad_of(run):
        def f(scale):
            v, fgw, leaves, _ = run(scale)
            v.sum().backward()
            return fgw, torch.cat([t.grad.flatten() for t in leaves])
        return f

    t = interleaved({k: fwd_bwd(r) for k, r in methods.items()}, repeats)
    base = t["POT loop over entropic_fused_gromov_wasserstein2"]
    ref = reference(preds, targets)
    rows = []
    for k, r in methods.items():
        mb = saved_mb(lambda r=r: r()[0].sum())
        fin1, err1 = check(grad_of(r), 1.0, ref)
        fin3, _ = check(grad_of(r), 1e3, ref)
        rows.append((k, f"{1e3 * t[k]:.0f}", f"{base / t[k]:.1f}x", f"{mb:.1f}", fin1, err1,
                     *Stationarity.summary(yard(r()[3])), fin3))
    print(f"\n### 2. Full loss (joint node+edge alignment), {B} pairs, n,m in {lo}..{hi}, "
          f"d={D}, reg {REG}, forward+backward")
    print("(rel. diff: median over pairs of (F - ref) / ref for the unregularised objective"
          " F = <P, M> + Q(P) at each method's plan; ref: our float64 solve run to convergence"
          " without annealing, a local optimum like the others; negative = a lower objective."
          " stationarity: L1 change of the plan under one more exact linearisation step,"
          " float64, relative to the mass (class Stationarity), median / max over pairs)")
    table(rows, ("method", "ms (median)", "vs POT loop", "saved MB", "finite", "rel. diff",
                 "stationarity median", "max", "pairs > 1e-3 / 1e-4", "finite x1e3"))
    if pot_pairs > 0:
        table_equal_accuracy(preds[:pot_pairs], targets[:pot_pairs], ref[:pot_pairs], repeats,
                             pot_tols, pot_max_iter, lo, hi)


def table_equal_accuracy(preds: list[Data], targets: list[Data], ref: torch.Tensor,
                         repeats: int, pot_tols: tuple[float, ...], pot_max_iter: int,
                         lo: int, hi: int) -> None:
    """Table 2b: our defaults against POT's entropic FGW run to its own stopping rule.

    POT's ``entropic_fused_gromov_wasserstein`` stops when the Frobenius norm of one
    step's plan change (absolute, checked every 10th step) is <= ``tol``; its inner
    ``ot.sinkhorn`` (scaling domain) when the L2 column-marginal error is <= ``stopThr``.
    In float32 its kernel ``exp(-M / eps)`` underflows on these problems (dummy masses up
    to 60, linearised costs / eps of several hundred) and every plan collapses, so the
    tolerance runs are in float64 (inputs cast, gradients to the float64 leaves),
    warm-started inner solves (``warmstart=True``), at most ``pot_max_iter`` outer steps
    and 1000 Sinkhorn iterations per step, ``stopThr=1e-9`` (its default). POT's plain
    linearisation cycles between two plans on most of these pairs (its step change stays
    at 3-8 for 100 and 300 steps alike), so the cap only bounds the time; a subset of the
    pairs, as POT takes tens of seconds per cycling pair.
    """
    tb = Batch.from_data_list(targets)
    common = dict(alpha=1.0, beta=1.0, gamma=0.0, reg=REG, node_cost="sqeuclidean",
                  edge_loss="square")
    yard = Stationarity(preds, targets)
    log_rho = torch.tensor([math.log(min(p.num_nodes, t.num_nodes))
                            for p, t in zip(preds, targets, strict=True)])
    steps: dict[str, str] = {}

    def ours(name: str, **kw):
        def run():
            pb = Batch.from_data_list(preds)
            pb.x.requires_grad_()
            pb.edge_weight.requires_grad_()
            v, parts = structural_loss(pb, tb, reduction="none", return_components=True,
                                       **{**common, **kw})
            steps[name] = str(parts["outer_iter"])
            P_dd = parts["plan"][:, -1, -1]
            F = (parts["node"] + parts["edge"] - REG * log_rho * P_dd).detach()
            return v, F, parts["plan"]
        return run

    def pot(name: str, dtype: torch.dtype, **kw):
        def run():
            vals, plans, n_steps = [], [], []
            for pr, tg in zip(preds, targets, strict=True):
                x = pr.x.to(dtype).requires_grad_()
                w = pr.edge_weight.to(dtype).requires_grad_()
                M, A, Bt, p, q = (t.to(dtype) for t in augmented(pr, tg, x, w))
                v, log = ot.gromov.entropic_fused_gromov_wasserstein2(
                    M, A, Bt, p, q, loss_fun="square_loss", epsilon=REG / 2, alpha=0.5,
                    symmetric=False, G0=torch.outer(p, q) / p.sum(), log=True, **kw)
                vals.append(v * 2)
                plans.append(log["T"])
                # The error is logged at steps 0, 10, 20, ...: a run that met tol stopped
                # right after its last check, 10 (len - 1) + 1 steps; others ran max_iter.
                met = float(log["err"][-1]) <= kw["tol"]
                n_steps.append(10 * (len(log["err"]) - 1) + 1 if met else kw["max_iter"])
            steps[name] = f"{min(n_steps)}-{max(n_steps)}"
            vals_ = torch.stack(vals)
            return vals_, vals_.detach().float(), yard.layout(plans)
        return run

    ours_d = "ours: structural_loss, defaults (float32)"
    ours_f = "ours: structural_loss, 10 x 100 iterations (float32)"
    pot_f = "POT loop, 10 x 100 iterations (float32)"
    methods = {
        ours_d: ours(ours_d),
        ours_f: ours(ours_f, outer_iter=10, inner_iter=ITERS, max_iter=ITERS, max_outer=4,
                     tol=0, outer_tol=0),
        pot_f: pot(pot_f, torch.float32, max_iter=10, tol=0, numItermax=ITERS, stopThr=0),
    }
    for tol in pot_tols:
        name = f"POT loop, tol={tol:g} (float64, warm-started)"
        methods[name] = pot(name, torch.float64, max_iter=pot_max_iter, tol=tol,
                            numItermax=1000, stopThr=1e-9, warmstart=True)

    def fwd_bwd(run):
        def f():
            v = run()[0]
            v.sum().backward()
        return f

    t = interleaved({k: fwd_bwd(r) for k, r in methods.items()}, repeats)
    names = list(methods)
    rows = []
    for k, r in methods.items():
        v, F, P = r()
        rel = ((F.double() - ref) / ref.abs().clamp_min(1e-12)).median()
        rows.append((k, f"{1e3 * t[k]:.0f}", steps[k], f"{float(rel):+.1e}",
                     *Stationarity.summary(yard(P))))
    base_t = {k: t[k] for k in names[3:]}
    print(f"\n### 2b. Equal accuracy: {len(preds)} pairs of table 2 (n,m in "
          f"{lo}..{hi}), forward+backward; POT to its own tolerance")
    table(rows, ("method", "ms (median)", "outer steps", "rel. diff", "stationarity median",
                 "max", "pairs > 1e-3 / 1e-4"))
    for k, v in base_t.items():
        print(f"ours (defaults) vs {k}: {v / t[names[0]]:.1f}x faster; "
              f"ours (10 x 100) vs POT loop (10 x 100): {t[names[2]] / t[names[1]]:.1f}x")


# ------------------------------------------------------------ table 3: one pair vs n
def _one_size(n: int, g: torch.Generator, repeats: int) -> tuple:
    x, y = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
    a = torch.full((1, n), 1 / n)
    chain = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    pred = Data(x=torch.rand(n, 16, generator=g).softmax(-1), edge_index=chain,
                edge_weight=torch.rand(n - 1, generator=g), num_nodes=n)
    tgt = Data(x=torch.eye(16)[torch.randint(0, 16, (n,), generator=g)], edge_index=chain,
               num_nodes=n)

    def sk():
        X = x[None].clone().requires_grad_()
        return sinkhorn(sqcost(X, y[None]), a, a, REG, max_iter=ITERS, tol=0).value.sum()

    def full():
        p = pred.clone()
        p.x.requires_grad_()
        p.edge_weight.requires_grad_()
        return structural_loss(p, tgt)

    def pot():
        X = x[None].clone().requires_grad_()
        return solve_batch(sqcost(X, y[None]), REG, a=a, b=a, max_iter=ITERS, tol=0,
                           method="log_sinkhorn", grad="autodiff").value.sum()

    t = interleaved({"sk": lambda: sk().backward(), "full": lambda: full().backward()}, repeats)
    pot_mb = f"{saved_mb(pot):.1f}" if n <= 512 else "-"
    return (n, f"{1e3 * t['sk']:.1f}", f"{saved_mb(sk):.2f}", f"{1e3 * t['full']:.0f}",
            f"{saved_mb(full):.2f}", pot_mb)


def table_scaling(repeats: int, sizes: list[int]) -> None:
    g = torch.Generator().manual_seed(0)
    rows = [_one_size(n, g, repeats) for n in sizes]
    print(f"\n### 3. One pair, n = m, d={D} (Sinkhorn) / chains with 16-class features (full "
          "loss, defaults), forward+backward")
    table(rows, ("n", "Sinkhorn ms", "Sinkhorn saved MB", "full loss ms", "full loss saved MB",
                 "POT log autodiff saved MB"))


# ------------------------------------------------- table 4: exactness of the gradient
def chains(sizes: list[int], g: torch.Generator, shape: tuple[int, ...], soft: bool,
           dtype: torch.dtype = torch.float64) -> Batch:
    """Chains with softmax features, soft edges and masses (soft) or one-hot labels."""
    out = []
    for n in sizes:
        ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)]) if n > 1 else \
            torch.empty(2, 0, dtype=torch.long)
        if soft:
            out.append(Data(x=torch.randn(n, *shape, generator=g, dtype=dtype).softmax(-1),
                            edge_index=ei,
                            edge_weight=torch.rand(ei.size(1), generator=g, dtype=dtype) * 0.8
                            + 0.1,
                            node_weight=torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.4,
                            num_nodes=n))
        else:
            lab = torch.randint(0, shape[-1], (n, *shape[:-1]), generator=g)
            out.append(Data(x=torch.nn.functional.one_hot(lab, shape[-1]).to(dtype),
                            edge_index=ei, num_nodes=n))
    return Batch.from_data_list(out)


def fd_errors(pred: Batch, tgt: Batch, h: float = 1e-6, **kw) -> dict[str, float]:
    """Relative error of autograd vs central differences of the loss, per input field."""
    names = ("x", "edge_weight", "node_weight")
    g = torch.Generator().manual_seed(1)

    def loss(**over: torch.Tensor) -> torch.Tensor:
        p = pred.clone()
        for k, v in over.items():
            p[k] = v
        return structural_loss(p, tgt, **kw)

    leaves = {k: pred[k].clone().requires_grad_() for k in names}
    loss(**leaves).backward()
    out = {}
    for k in names:
        v = pred[k]
        if v.numel() <= 64:
            dirs = list(torch.eye(v.numel(), dtype=v.dtype).view(-1, *v.shape))
        else:
            dirs = [torch.randn(v.shape, generator=g, dtype=v.dtype) for _ in range(4)]
        fd = torch.stack([(loss(**{k: v + h * d}) - loss(**{k: v - h * d})) / (2 * h)
                          for d in dirs])
        an = torch.stack([(leaves[k].grad * d).sum() for d in dirs])
        out[k] = float((an - fd).norm() / fd.norm())
    return out


def table_gradient(repeats: int) -> None:
    rows = []
    for shape in ((8, 256), (16,)):
        for kw in ({}, {"beta": 0.0}):
            g = torch.Generator().manual_seed(0)
            pred = chains([2, 3, 5], g, shape, soft=True)
            tgt = chains([1, 5, 3], g, shape, soft=False)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                e = fd_errors(pred, tgt, **kw)
            rows.append((f"x {list(shape)}, {kw or 'defaults'}", f"{e['x']:.1e}",
                         f"{e['edge_weight']:.1e}", f"{e['node_weight']:.1e}",
                         len([w for w in caught if "converge" in str(w.message)])))
    print("\n### 4a. Gradient vs central finite differences of the loss, float64, defaults")
    table(rows, ("features, arguments", "rel. err x", "rel. err edge_weight",
                 "rel. err node_weight", "non-convergence warnings"))
    g = torch.Generator().manual_seed(0)
    sizes = [int(v) for v in torch.randint(3, 20, (32,), generator=g)]
    tsizes = [max(1, s + int(d)) for s, d in
              zip(sizes, torch.randint(-2, 3, (32,), generator=g), strict=True)]
    pred = chains(sizes, g, (8, 256), soft=True, dtype=torch.float32)
    tgt = chains(tsizes, g, (8, 256), soft=False, dtype=torch.float32)
    info: dict = {}

    def run() -> None:
        p = pred.clone()
        p.x.requires_grad_()
        p.edge_weight.requires_grad_()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss, parts = structural_loss(p, tgt, return_components=True)
            loss.backward()
        info["steps"] = parts["outer_iter"]
        info["warn"] = [str(w.message)[:120] for w in caught]

    t = interleaved({"defaults": run}, repeats)
    print("\n### 4b. Training-like batch: 32 chains of 3..19 nodes, [N, 8, 256], float32, "
          "defaults, forward+backward")
    table([("defaults", f"{1e3 * t['defaults']:.0f}", info["steps"],
            "; ".join(info["warn"]) or "none")],
          ("setting", "ms (median)", "linearisation steps", "warning"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--table", type=int, action="append", choices=[1, 2, 3, 4])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--graph-sizes", type=int, nargs=2, default=[5, 60], metavar=("LO", "HI"),
                    help="node counts of table 2 (POT's entropic FGW is correct up to ~12)")
    ap.add_argument("--pot-pairs", type=int, default=4,
                    help="pairs of table 2b (POT to its tolerance); 0 = skip table 2b")
    ap.add_argument("--pot-tol", type=float, nargs="+", default=[1e-3],
                    help="tolerances of POT's outer loop in table 2b")
    ap.add_argument("--only-2b", action="store_true", help="table 2b without table 2")
    ap.add_argument("--pot-skip", type=int, default=0,
                    help="with --only-2b: pairs of table 2 skipped before table 2b's")
    ap.add_argument("--pot-max-iter", type=int, default=30,
                    help="cap on POT's outer steps in table 2b (cycling pairs reach it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, POT {ot.__version__}, torch threads: "
          f"{torch.get_num_threads()}, repeats: {args.repeats}")
    tables = args.table or [1, 2, 3, 4]
    if 1 in tables:
        table_sinkhorn(args.repeats)
    if 2 in tables and args.only_2b:
        preds, targets = graph_problem(lo=args.graph_sizes[0], hi=args.graph_sizes[1])
        sel = slice(args.pot_skip, args.pot_skip + args.pot_pairs)
        preds, targets = preds[sel], targets[sel]
        table_equal_accuracy(preds, targets, reference(preds, targets),
                             args.repeats, tuple(args.pot_tol), args.pot_max_iter,
                             *args.graph_sizes)
    elif 2 in tables:
        table_full(args.repeats, *args.graph_sizes, args.pot_pairs, tuple(args.pot_tol),
                   args.pot_max_iter)
    if 3 in tables:
        table_scaling(max(1, args.repeats // 2), args.sizes)
    if 4 in tables:
        table_gradient(args.repeats)


if __name__ == "__main__":
    main()
