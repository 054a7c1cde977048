"""One tiled GEMM kernel for the forward and both backward passes of `relu(a @ b)`.

    forward         out    = relu(a @ b)                   RELU epilogue
    backward (a)    grad_a = relu'(out) * grad_out @ b.T    mask on operand A (grad_out)
    backward (b)    grad_b = a.T @ relu'(out) * grad_out    mask on operand B (grad_out)

where relu'(out) is 0 where `out <= 0` and 1 elsewhere (torch's threshold_backward: a NaN
output lets the gradient through, an exactly-zero pre-activation does not).

Design trade-off: backward keeps neither the pre-activation nor a masked copy of grad_out.
Each backward GEMM re-reads `out` tile by tile while it loads grad_out and zeroes the masked
entries in registers. That is one extra (M, N) read per backward GEMM, in exchange for no
separate elementwise kernel (which would read grad_out and out and write a masked copy), and
no saved pre-activation. Transposes are free: every operand comes with explicit strides, so
`b.T` or a sliced view is read in place. Offsets are computed in int64, so operands beyond
2**31 elements index correctly. The accumulator is fp32 for every input dtype; the ReLU runs
on it before the single rounding to the output dtype.

The ATen reference of this kernel (CPU fallback and test oracle) is
`fusedgrad.matmul.matmul_reference`.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Which operand, if any, is multiplied by relu'(gate) as it is loaded.
NO_MASK, MASK_A, MASK_B = 0, 1, 2

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _matmul_kernel(
    # pointers
    a_ptr, b_ptr, c_ptr, gate_ptr,
    # sizes
    M, N, K,
    # strides
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    stride_gate_0, stride_gate_1,
    # meta-parameters
    MASK_OPERAND: tl.constexpr,  # NO_MASK, MASK_A (gate is (M, K)) or MASK_B (gate is (K, N))
    RELU: tl.constexpr,
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
    in_m = offs_m[:, None] < M
    in_n = offs_n[None, :] < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_row = k.to(tl.int64)[None, :]
        k_col = k.to(tl.int64)[:, None]
        mask_a = in_m & (k[None, :] < K)
        mask_b = (k[:, None] < K) & in_n
        a = tl.load(a_ptr + rows_m * stride_am + k_row * stride_ak, mask=mask_a, other=0.0)
        b = tl.load(b_ptr + k_col * stride_bk + cols_n * stride_bn, mask=mask_b, other=0.0)
        if MASK_OPERAND == 1:
            gate = tl.load(gate_ptr + rows_m * stride_gate_0 + k_row * stride_gate_1, mask=mask_a, other=0.0)
            a = tl.where(gate <= 0, 0.0, a)  # NaN gate: `<=` is false, gradient passes, as in torch
        if MASK_OPERAND == 2:
            gate = tl.load(gate_ptr + k_col * stride_gate_0 + cols_n * stride_gate_1, mask=mask_b, other=0.0)
            b = tl.where(gate <= 0, 0.0, b)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if RELU:
        # `acc < 0` is false for NaN, so NaN propagates (tl.maximum would drop it).
        acc = tl.where(acc < 0, 0.0, acc)
    c = acc.to(c_ptr.dtype.element_ty)
    tl.store(c_ptr + rows_m * stride_cm + cols_n * stride_cn, c, mask=in_m & in_n)


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
    mask_operand, gate, gated = NO_MASK, a, a  # gate is a dummy pointer when unused
    if a_relu_mask is not None:
        mask_operand, gate, gated = MASK_A, a_relu_mask, a
    elif b_relu_mask is not None:
        mask_operand, gate, gated = MASK_B, b_relu_mask, b
    if gate.shape != gated.shape or gate.device != gated.device:
        raise ValueError(f"matmul: mask {tuple(gate.shape)} on {gate.device} does not match "
                         f"its operand {tuple(gated.shape)} on {gated.device}")
    # allocate
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    # launch
    config = config or _config(M, N, K, a.dtype, a.device)
    grid = (triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"]),)
    _matmul_kernel[grid](
        a, b, c, gate,
        M, N, K,
        a.stride(0), a.stride(1),
        b.stride(0), b.stride(1),
        c.stride(0), c.stride(1),
        gate.stride(0), gate.stride(1),
        MASK_OPERAND=mask_operand,
        RELU=relu,
        INPUT_PRECISION=_input_precision(a.dtype),
        **config,
    )
    return c
