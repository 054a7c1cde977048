"""One tiled GEMM kernel, with constexpr prologue and epilogue options, for every matrix product
of the two-layer network: the autograd ops' forward and backward, and the fused training step.

    forward           out    = relu(a @ b)                     EPILOGUE "relu"
    backward (a)      grad_a = relu'(out) * grad_out @ b.T      MASK_OPERAND A (grad_out)
    backward (b)      grad_b = a.T @ relu'(out) * grad_out      MASK_OPERAND B (grad_out)
    fused step        grad_y = 2 (h @ w2 - y), loss partials    EPILOGUE "squared_error"
                      grad_h = relu'(h) * (grad_y @ w2.T)        EPILOGUE "relu_mask"
                      w -= lr * (a.T @ grad)                     EPILOGUE "sgd" (no C written)

where relu'(out) is 0 where `out <= 0` and 1 elsewhere (torch's threshold_backward: a NaN
output lets the gradient through, an exactly-zero pre-activation does not).

Design trade-off: the autograd backward keeps neither the pre-activation nor a masked copy of
grad_out. Each backward GEMM re-reads `out` tile by tile while it loads grad_out and zeroes the
masked entries in registers: one extra (M, N) read per backward GEMM, in exchange for no
separate elementwise kernel and no saved pre-activation. The epilogues act on the fp32
accumulator while it is still in registers, so the fused step writes neither y_pred, nor an
unmasked grad_h, nor the weight gradients. Transposes are free: every operand comes with
explicit strides. Offsets are computed in int64, so operands beyond 2**31 elements index
correctly. Squared-error partial sums go to one slot per program and are added up in index
order by a later launch (REDUCE_PARTIALS), never with atomics: the loss is deterministic.

The ATen reference of the plain GEMM (CPU fallback and test oracle) is
`fusedgrad.matmul.matmul_reference`; the fused step's is `fusedgrad.step.train_step_reference`.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .reduce import sum_in_fixed_order

# Which operand, if any, is multiplied by relu'(gate) as it is loaded.
NO_MASK, MASK_A, MASK_B = 0, 1, 2
EPILOGUES = ("none", "relu", "relu_mask", "squared_error", "sgd")

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _matmul_kernel(
    # pointers
    a_ptr, b_ptr, c_ptr,
    gate_ptr,      # MASK_OPERAND: ReLU output shaped like the gated operand
    aux_ptr,       # EPILOGUE: C-shaped; ReLU output (relu_mask), target (squared_error), parameter (sgd)
    partials_ptr,  # squared_error: one fp32 partial sum per program
    reduce_ptr,    # REDUCE_PARTIALS: partial sums of an earlier launch, folded into reduce_out_ptr
    reduce_out_ptr,
    lr_ptr,        # sgd with LR_FROM_PTR: the learning rate as a 0-d tensor
    # sizes
    M, N, K, num_reduce,
    # strides
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    stride_gate_0, stride_gate_1,
    stride_aux_m, stride_aux_n,
    # scalars
    scale,         # squared_error: the gradient is scale * (acc - target)
    reduce_scale,  # REDUCE_PARTIALS: reduce_out = reduce_scale * sum(partials)
    lr,            # sgd without LR_FROM_PTR
    # meta-parameters
    MASK_OPERAND: tl.constexpr,  # NO_MASK, MASK_A (gate is (M, K)) or MASK_B (gate is (K, N))
    EPILOGUE: tl.constexpr,      # one of EPILOGUES
    LR_FROM_PTR: tl.constexpr,
    REDUCE_PARTIALS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 inputs; None for 16-bit
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped ordering: GROUP_M consecutive row-blocks share each column-block of B in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Element offsets in int64: row * stride overflows int32 past 2**31 elements.
    rows_m = offs_m.to(tl.int64)[:, None]
    cols_n = offs_n.to(tl.int64)[None, :]
    in_c = (offs_m[:, None] < M) & (offs_n[None, :] < N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_row = k.to(tl.int64)[None, :]
        k_col = k.to(tl.int64)[:, None]
        mask_a = (offs_m[:, None] < M) & (k[None, :] < K)
        mask_b = (k[:, None] < K) & (offs_n[None, :] < N)
        a = tl.load(a_ptr + rows_m * stride_am + k_row * stride_ak, mask=mask_a, other=0.0)
        b = tl.load(b_ptr + k_col * stride_bk + cols_n * stride_bn, mask=mask_b, other=0.0)
        if MASK_OPERAND == 1:
            gate = tl.load(gate_ptr + rows_m * stride_gate_0 + k_row * stride_gate_1, mask=mask_a, other=0.0)
            a = tl.where(gate <= 0, 0.0, a)  # NaN gate: `<=` is false, gradient passes, as in torch
        if MASK_OPERAND == 2:
            gate = tl.load(gate_ptr + k_col * stride_gate_0 + cols_n * stride_gate_1, mask=mask_b, other=0.0)
            b = tl.where(gate <= 0, 0.0, b)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    aux_ptrs = aux_ptr + rows_m * stride_aux_m + cols_n * stride_aux_n
    if EPILOGUE == "relu":
        # `acc < 0` is false for NaN, so NaN propagates (tl.maximum would drop it).
        acc = tl.where(acc < 0, 0.0, acc)
    if EPILOGUE == "relu_mask":
        acc = tl.where(tl.load(aux_ptrs, mask=in_c, other=0.0) <= 0, 0.0, acc)
    if EPILOGUE == "squared_error":
        # d = prediction - target; this program's sum of d**2, and C = scale * d (the gradient).
        diff = tl.where(in_c, acc - tl.load(aux_ptrs, mask=in_c, other=0.0).to(tl.float32), 0.0)
        tl.store(partials_ptr + pid, tl.sum(tl.sum(diff * diff, axis=1), axis=0))
        acc = scale * diff
    if EPILOGUE == "sgd":
        # The parameter takes the step in place: w = w - lr * (a @ b); no gradient is stored.
        if LR_FROM_PTR:
            step = tl.load(lr_ptr).to(tl.float32)
        else:
            step = lr
        param = tl.load(aux_ptrs, mask=in_c, other=0.0)
        tl.store(aux_ptrs, (param.to(tl.float32) - step * acc).to(param.dtype), mask=in_c)
    else:
        tl.store(c_ptr + rows_m * stride_cm + cols_n * stride_cn, acc.to(c_ptr.dtype.element_ty), mask=in_c)

    if REDUCE_PARTIALS:
        # Stream order makes the earlier launch's partials complete; program 0 adds them up.
        if pid == 0:
            total = sum_in_fixed_order(reduce_ptr, num_reduce, 1024) * reduce_scale
            tl.store(reduce_out_ptr, total.to(reduce_out_ptr.dtype.element_ty))


# True when Triton's interpreter (TRITON_INTERPRET=1 before triton was imported) runs the kernels.
INTERPRETED = type(_matmul_kernel).__name__ == "InterpretedFunction"


def _input_precision(dtype: torch.dtype):
    """The dot precision for fp32 inputs follows torch's fp32 matmul setting, as cuBLAS does."""
    if dtype != torch.float32:
        return None
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch without the fp32_precision API
        return "tf32" if matmul.allow_tf32 else "ieee"
    if precision == "none":  # "none" inherits the global setting
        precision = torch.backends.fp32_precision
    return "tf32" if precision == "tf32" else "ieee"


# Tile shapes (BLOCK_M, BLOCK_N), largest first; every block is >= 16, tl.dot's minimum.
_TILES = ((128, 128), (64, 128), (128, 64), (64, 64), (32, 64), (64, 32), (32, 32), (16, 32), (32, 16), (16, 16))


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _config(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Tile shape and launch parameters: the largest tile that still gives every multiprocessor a
    program, else the smallest (skinny problems such as the tutorial's 64 x 100 output would
    otherwise run on one or two multiprocessors).

    Under the interpreter every program is a Python call, so tiles are large; 32 still gives
    odd test shapes several tiles and several K steps.
    """
    if INTERPRETED:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=4, num_warps=4, num_stages=1)
    programs_wanted = _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    for block_m, block_n in _TILES:
        if triton.cdiv(M, block_m) * triton.cdiv(N, block_n) >= programs_wanted:
            break
    small = block_m * block_n <= 32 * 64
    block_k = 64 if small or dtype != torch.float32 else 32
    num_warps = 4 if block_m * block_n <= 64 * 64 else 8
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
                num_warps=num_warps, num_stages=3)


def plan(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device, config: dict | None = None):
    """(config, number of programs) of a launch, so callers can size per-program buffers."""
    config = config or _config(M, N, K, dtype, device)
    return config, triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"])


def launch(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | None,
    *,
    mask_operand: int = NO_MASK,
    gate: torch.Tensor | None = None,
    epilogue: str = "none",
    aux: torch.Tensor | None = None,
    partials: torch.Tensor | None = None,
    scale: float = 1.0,
    lr: float | torch.Tensor = 0.0,
    reduce: torch.Tensor | None = None,
    reduce_out: torch.Tensor | None = None,
    reduce_scale: float = 1.0,
    config: dict | None = None,
) -> None:
    """Launch `_matmul_kernel` on checked, allocated tensors (callers check; this only launches).

    c: (M, N) output, None for the "sgd" epilogue (it writes `aux`). Unused pointers get a
    dummy tensor. With `reduce`, program 0 also writes reduce_scale * sum(reduce) to reduce_out.
    """
    M, K = a.shape
    N = b.shape[1]
    config, programs = plan(M, N, K, a.dtype, a.device, config)
    if programs == 0:
        return
    lr_from_ptr = isinstance(lr, torch.Tensor)
    dummy = a
    gate = dummy if gate is None else gate
    aux = dummy if aux is None else aux
    c = aux if c is None else c
    _matmul_kernel[(programs,)](
        a, b, c, gate, aux,
        dummy if partials is None else partials,
        dummy if reduce is None else reduce,
        dummy if reduce_out is None else reduce_out,
        lr if lr_from_ptr else dummy,
        M, N, K, 0 if reduce is None else reduce.numel(),
        a.stride(0), a.stride(1),
        b.stride(0), b.stride(1),
        c.stride(0), c.stride(1),
        gate.stride(0), gate.stride(1),
        aux.stride(0), aux.stride(1),
        float(scale), float(reduce_scale), 0.0 if lr_from_ptr else float(lr),
        MASK_OPERAND=mask_operand,
        EPILOGUE=epilogue,
        LR_FROM_PTR=lr_from_ptr,
        REDUCE_PARTIALS=reduce is not None,
        INPUT_PRECISION=_input_precision(a.dtype),
        **config,
    )


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    relu: bool = False,
    a_relu_mask: torch.Tensor | None = None,
    b_relu_mask: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """`(a * relu'(a_relu_mask)) @ (b * relu'(b_relu_mask))`, then `relu` if asked.

    a: (M, K), b: (K, N), any strides; a mask, when given, is a ReLU output shaped like the
    operand it gates. Returns a new contiguous (M, N) tensor of a's dtype. `config` overrides
    the tile choice (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages), for tuning.
    """
    # check
    M, K = a.shape
    K_b, N = b.shape
    if K != K_b or a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"matmul: a {tuple(a.shape)} {a.dtype} on {a.device} does not fit "
                         f"b {tuple(b.shape)} {b.dtype} on {b.device}")
    if a.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"matmul: Triton kernels take {SUPPORTED_DTYPES}, got {a.dtype}")
    if a_relu_mask is not None and b_relu_mask is not None:
        raise ValueError("matmul: mask one operand at most")
    mask_operand, gate, gated = NO_MASK, None, None
    if a_relu_mask is not None:
        mask_operand, gate, gated = MASK_A, a_relu_mask, a
    elif b_relu_mask is not None:
        mask_operand, gate, gated = MASK_B, b_relu_mask, b
    if gate is not None and (gate.shape != gated.shape or gate.device != gated.device):
        raise ValueError(f"matmul: mask {tuple(gate.shape)} on {gate.device} does not match "
                         f"its operand {tuple(gated.shape)} on {gated.device}")
    # allocate
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    # launch
    launch(a, b, c, mask_operand=mask_operand, gate=gate, epilogue="relu" if relu else "none", config=config)
    return c
