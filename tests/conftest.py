"""Test tiers: ATen (everywhere), Triton kernels (interpreted on CPU, compiled on CUDA), and
`@pytest.mark.gpu` tests that need CUDA.

Triton reads TRITON_INTERPRET when it is imported, so it is set here, before any test module
imports fusedgrad's kernels, whenever there is no CUDA device.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
