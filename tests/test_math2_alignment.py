"""experiments/math2_alignment.py: the slot posterior it reports is the exact posterior of
the segmentation model, checked by enumerating every segmentation."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "math2_alignment.py"


@pytest.fixture(scope="module")
def ma():
    sys.path.insert(0, str(_PATH.parent))
    spec = importlib.util.spec_from_file_location("math2_alignment", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _enumerated(emit, z, T, M):
    """P(slot t says grapheme j | y) by brute force: every segmentation of T slots into M
    contiguous segments, each said by its first slot (left alignment)."""
    log_merge, log_cut = torch.nn.functional.logsigmoid(z), torch.nn.functional.logsigmoid(-z)
    post, total = torch.zeros(T, M, dtype=torch.float64), 0.0
    for inner in itertools.combinations(range(1, T), M - 1):
        starts = (0, *inner)
        logw = sum(float(emit[s, j]) for j, s in enumerate(starts))
        logw += sum(float(log_cut[t - 1] if t in starts else log_merge[t - 1])
                    for t in range(1, T))
        w = math.exp(logw)
        total += w
        for j, s in enumerate(starts):
            post[s, j] += w
    return post / total


@pytest.mark.parametrize("T,M", [(5, 3), (6, 1), (4, 4)])
def test_slot_posterior_is_the_enumerated_posterior(ma, T, M):
    torch.manual_seed(T * 10 + M)
    emit = torch.randn(1, T, M, dtype=torch.float64)
    z = torch.randn(1, T - 1, dtype=torch.float64)
    post = ma.slot_posterior(emit, z, torch.tensor([T]), torch.tensor([M]))[0]
    torch.testing.assert_close(post, _enumerated(emit[0], z[0], T, M))
    torch.testing.assert_close(post.sum(0), torch.ones(M, dtype=torch.float64))
