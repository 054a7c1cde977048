"""The tutorial's whole SGD step in five GEMM launches, without the autograd tape.

    h      = relu(x @ w1)                          GEMM 1, ReLU epilogue
    grad_y = 2 (h @ w2 - y), loss partials         GEMM 2, squared-error epilogue (y_pred never stored)
    grad_h = relu'(h) * (grad_y @ w2.T)            GEMM 3, ReLU-mask epilogue; program 0 adds up the loss
    w2    -= lr * (h.T @ grad_y)                   GEMM 4, SGD epilogue (grad_w2 never stored)
    w1    -= lr * (x.T @ grad_h)                   GEMM 5, SGD epilogue (grad_w1 never stored)

The order keeps the tutorial's math: grad_h reads w2 before GEMM 4 updates it, and both weight
gradients come from the same forward. Nothing here reads back to the host, so the step can be
captured in a CUDA graph. The ATen reference is `fusedgrad.step.train_step_reference`.
"""

from __future__ import annotations

import torch

from . import gemm, sgd, tuning
from .launch import pointer_key
from .precision import accumulator_dtype


def two_layer_sgd_step(x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                       lr: float | torch.Tensor, fp32_precision: str = "ieee",
                       tuner: tuning.Tuner | None = None) -> torch.Tensor:
    """Update w1 (D_in, H) and w2 (H, D_out) in place from x (N, D_in), y (N, D_out); return
    the step's loss sum((relu(x @ w1) @ w2 - y)**2) before the update, as a 0-d tensor of
    `precision.accumulator_dtype` (float32; float64 for float64).
    `fp32_precision` and `tuner` as in `gemm.launch`."""
    # check (shapes, dtypes and devices are checked by the caller, fusedgrad.step)
    batch, hidden, d_out = x.shape[0], w1.shape[1], w2.shape[1]
    # allocate
    h = torch.empty((batch, hidden), dtype=x.dtype, device=x.device)
    grad_y = torch.empty((batch, d_out), dtype=x.dtype, device=x.device)
    grad_h = torch.empty((batch, hidden), dtype=x.dtype, device=x.device)
    # The loss GEMM keeps the heuristic's tiles: its partial sums are sized by their number.
    loss_config, programs = gemm.tiles_of(batch, d_out, hidden, x.dtype, x.device)
    partials = torch.empty(programs, dtype=accumulator_dtype(x.dtype), device=x.device)
    loss = torch.empty((), dtype=accumulator_dtype(x.dtype), device=x.device)
    if x.dtype == torch.float64:
        lr = sgd.rate_argument(lr, x.dtype, x.device)
    # launch
    # The five launches are named once for the step (`gemm.launch`'s `plan`): what each depends
    # on is the inputs' layout, dtype and alignment, the fresh buffers' alignment (their layout
    # follows from the inputs' shapes), the rate's kind, the precision and the device.
    fresh_aligned = not (h.data_ptr() | grad_y.data_ptr() | grad_h.data_ptr() | partials.data_ptr()
                         | loss.data_ptr()) & 15
    step = (_STEP, x.shape, w1.shape, w2.shape, x.stride(), y.stride(), w1.stride(), w2.stride(), x.device,
            fp32_precision, fresh_aligned, pointer_key((x, y, w1, w2, lr if isinstance(lr, torch.Tensor) else None)))
    gemm.launch(x, w1, h, epilogue="relu", fp32_precision=fp32_precision, tuner=tuner, plan=(step, 1))
    gemm.launch(h, w2, grad_y, epilogue="squared_error", aux=y, partials=partials, scale=2.0,
                config=loss_config, fp32_precision=fp32_precision, tuner=tuner, plan=(step, 2))
    gemm.launch(grad_y, w2.T, grad_h, epilogue="relu_mask", aux=h, reduce=partials, reduce_out=loss,
                fp32_precision=fp32_precision, tuner=tuner, plan=(step, 3))
    gemm.launch(h.T, grad_y, None, epilogue="sgd", aux=w2, lr=lr, fp32_precision=fp32_precision, tuner=tuner,
                plan=(step, 4))
    gemm.launch(x.T, grad_h, None, epilogue="sgd", aux=w1, lr=lr, fp32_precision=fp32_precision, tuner=tuner,
                plan=(step, 5))
    return loss


_STEP = object()  # tags the step's launch plans: no other launch's plan begins with it
