"""Test tiers: ATen (everywhere), Triton kernels (interpreted on CPU, compiled on CUDA), and
`@pytest.mark.gpu` tests that need CUDA.

Triton reads TRITON_INTERPRET when it is imported, so the interpreter is turned on here, before
any test module imports fusedgrad's kernels, whenever there is no CUDA device.
"""

import pytest
import torch

from fusedgrad.settings import use_triton_interpreter

if not torch.cuda.is_available():
    use_triton_interpreter()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
