from collections.abc import Callable

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

# Two pytest-xdist workers on two cores: one torch thread each avoids oversubscription.
torch.set_num_threads(1)


def cuda_available() -> bool:
    return torch.cuda.is_available()


#: Parametrize a test over the devices present (PyG's ``withCUDA`` style).
DEVICES = [
    pytest.param("cpu"),
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``slow`` unless they are asked for (``-m slow``)."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow experiment: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def counting(backend: str) -> tuple[Callable, list]:
    """``backend``, recording every graph dynamo hands it."""
    graphs: list = []

    def compile_graph(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend(backend)(gm, example_inputs)

    return compile_graph, graphs
