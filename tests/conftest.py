"""Shared test fixtures.

* Tests run the Triton kernels on CPU through TRITON_INTERPRET=1 (set here before triton is imported)
  unless a GPU is present.
* ``torch.empty`` / ``torch.empty_like`` are poisoned with NaN for floating tensors during every test, so an
  output element a kernel forgot to write fails loudly.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ.get("M2S2L_TEST_GPU") else "1")

import pytest  # noqa: E402
import torch  # noqa: E402

_empty, _empty_like = torch.empty, torch.empty_like


def _poison(t):
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        with torch.no_grad():
            t.fill_(float("nan"))
    return t


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_empty_like(*a, **k)))
    yield


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_collection_modifyitems(config, items):
    gpu = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip)
