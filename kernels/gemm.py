"""One tiled GEMM kernel, with constexpr prologue and epilogue options, for every matrix product
fusedgrad runs: the autograd ops' forward and backward, linear's, and the fused training steps.

    forward           out    = relu(a @ b)                     EPILOGUE "relu"
    backward (a)      grad_a = relu'(out) * grad_out @ b.T      MASK_OPERAND A (grad_out)
    backward (b)      grad_b = a.T @ relu'(out) * grad_out      launched as its transpose,
                      grad_b.T = relu'(out.T) * grad_out.T @ a   MASK_OPERAND A (grad_out.T)
    fused step        grad_y = 2 (h @ w2 - y), loss partials    EPILOGUE "squared_error"
                      grad_h = relu'(h) * (grad_y @ w2.T)        EPILOGUE "relu_mask"
                      w <- SGD(w, a.T @ grad)                    EPILOGUE "sgd" (no C written; a
                                                                 momentum buffer read and written)
    linear            out = relu(x @ W.T + bias)                 `bias` added before the epilogue
                      grad_W = grad_pre.T @ x, grad_b = its     `row_sums` of A (grad_pre.T) over K
                      rows' sums, in one launch

where relu'(out) is 0 where `out <= 0` and 1 elsewhere (torch's threshold_backward: a NaN
output lets the gradient through, an exactly-zero pre-activation does not).

Design trade-off: the autograd backward keeps neither the pre-activation nor a masked copy of
grad_out. Each backward GEMM re-reads `out` tile by tile while it loads grad_out and zeroes the
masked entries in registers: one extra (M, N) read per backward GEMM, in exchange for no
separate elementwise kernel and no saved pre-activation. The epilogues act on the fp32
accumulator while it is still in registers, so the fused step writes neither y_pred, nor an
unmasked grad_h, nor the weight gradients. Transposes are free: every operand comes with
explicit strides. Offsets are computed in int64, so operands beyond 2**31 elements index
correctly. Squared-error partial sums go to one slot per output tile and are added up in index
order by a later launch (its `reduce` tensors), never with atomics: the loss is deterministic.
Tensors a launch does not have are passed as None, which specialises the kernel: absent
pointers cost no code. They still cost host time, as every argument passes through Triton's
launcher on every launch, so the launches that take no bias, row sums, momentum buffer or
update flags (the autograd ops', the tutorial step's) enter through `_plain_matmul_kernel`:
a signature without those thirteen arguments around a call of this kernel (inlined: the same
code) with them as constants.

Three launch options serve shapes the plain tiling serves badly (`kernels/tuning.py` chooses):
SPLIT_K > 1 gives each output tile several programs, one per slice of K, for skinny long-K
products that would otherwise fill a few multiprocessors; the last program of a tile to finish
(an acq_rel counter) adds the partial tiles in slice order, so the sum is deterministic and the
epilogues run unchanged, in one launch. TMA loads tiles through host tensor descriptors on
Hopper instead of per-element pointers, trading a layout restriction (16-byte aligned rows) for
fewer registers and hardware bounds checks. PERSISTENT launches one program per multiprocessor
that walks the tiles (the same tile loop, one tile per program otherwise), trading the hardware scheduler's
fresh program per tile for overlap of one tile's epilogue with the next tile's TMA loads.
(Warp-specialised schedules are not offered: Triton ignores `tl.range(...,
warp_specialize=True)` on sm_90, where it is a Blackwell feature; bench/NOTES.md v5.)

The ATen reference of the plain GEMM (CPU fallback and test oracle) is
`fusedgrad.matmul.matmul_reference`; the fused step's is `fusedgrad.step.train_step_reference`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from . import tuning
from .config import GemmConfig, Variant
from .launch import Launcher, pointer_key
from .precision import KERNEL_DTYPES, accumulator_dtype, check_fp32_precision, dot_precision
from .reduce import accumulator, sum_in_fixed_order
from .config import PLAIN_SGD, UpdateRule
from .sgd import learning_rate, scalar, scalar_arguments, sgd_update

# Which operand, if any, is multiplied by relu'(gate) as it is loaded.
NO_MASK, MASK_A, MASK_B = 0, 1, 2
EPILOGUES = ("none", "relu", "relu_mask", "squared_error", "cross_entropy", "sgd")


@triton.jit
def _tma_block(desc, row, col, STORED_T: tl.constexpr):
    """Block [row:, col:] of an operand through its tensor descriptor. A column-major operand
    is described by its row-major transpose (TMA wants the last dimension contiguous), so its
    block is loaded as [col:, row:] and transposed in registers."""
    if STORED_T:
        block = desc.load([col, row]).T
    else:
        block = desc.load([row, col])
    return block


@triton.jit
def _tile_coordinates(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row-block, column-block) of output tile `tile` in grouped order: GROUP_M consecutive
    row-blocks share each column-block of B, so it stays in L2 while they use it."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (tile // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((tile % num_pid_in_group) % group_size_m)
    pid_n = (tile % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _matmul_kernel(
    # pointers (None where a launch has no such tensor; the kernel is specialised on which)
    a_ptr, b_ptr,
    c_ptr,          # (M, N) output; None for the "sgd" epilogue, which writes aux in place
    gate_ptr,       # MASK_OPERAND: ReLU output shaped like the gated operand
    aux_ptr,        # EPILOGUE: C-shaped; ReLU output (relu_mask), target (squared_error), parameter
    # (sgd); for cross_entropy the (M,) int64 class indices (stride stride_aux_m)
    partials_ptr,   # squared_error, cross_entropy: one partial loss per output tile (in ACC_DTYPE)
    reduce_ptr,     # partial sums of an earlier launch, which program 0 folds into reduce_out_ptr
    reduce_out_ptr,
    lr_ptr,         # sgd: the learning rate as a 0-d tensor; None: the scalar `lr`
    workspace_ptr,  # SPLIT_K > 1: partial tiles in ACC_DTYPE, (SPLIT_K, programs, BLOCK_M * BLOCK_N)
    counter_ptr,    # SPLIT_K > 1: int32 per tile, 0 before the launch
    bias_ptr,       # (N,) added to every row of the product before the "none" or "relu" epilogue
    row_sums_ptr,   # (M,) the sums over K of A as the dot reads it (masked), written by the
    # programs of column-block 0 (a bias gradient, from the weight-gradient GEMM); SPLIT_K 1
    buffer_ptr,     # sgd: the parameter's momentum buffer, C-shaped; None without momentum
    momentum_ptr, keep_ptr, decay_ptr,  # sgd: 0-d tensors of the scalars below; None: the scalar
    # sizes
    M, N, K, num_reduce,
    # strides (0 for an absent tensor)
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    stride_gate_0, stride_gate_1,
    stride_aux_m, stride_aux_n,
    stride_bias, stride_row_sums,
    stride_buffer_m, stride_buffer_n,
    # scalars
    scale,         # squared_error: the gradient is scale * (acc - target); cross_entropy: scale *
    # (softmax - onehot)
    reduce_scale,  # reduce_out = reduce_scale * sum(reduce)
    lr,            # sgd without lr_ptr
    momentum, keep, weight_decay,  # sgd: torch.optim.SGD's settings (keep = 1 - dampening)
    # meta-parameters
    MASK_OPERAND: tl.constexpr,  # NO_MASK, MASK_A (gate is (M, K)) or MASK_B (gate is (K, N);
    # `matmul` launches gated-B products transposed, as MASK_A: MASK_B serves `launch` callers)
    EPILOGUE: tl.constexpr,      # one of EPILOGUES
    INPUT_PRECISION: tl.constexpr,  # "ieee", "tf32" or "tf32x3" for fp32 inputs; None for 16-bit
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,         # programs per output tile, each over a slice of K
    TMA: tl.constexpr,             # a, b (and gate) are tensor descriptors, not pointers
    A_STORED_T: tl.constexpr, B_STORED_T: tl.constexpr, GATE_STORED_T: tl.constexpr,  # TMA: which
    # descriptors describe the transposed operand (its storage is column-major)
    PERSISTENT: tl.constexpr,      # a resident grid (about one program per multiprocessor) walks
    # the tiles, stepping by the grid size; SPLIT_K must be 1
    ACC_DTYPE: tl.constexpr,       # `reduce.accumulator` of the inputs' dtype: fp64 for fp64, else fp32
    BF16_AS_FP32: tl.constexpr,    # Triton's interpreter only, whose bfloat16 dots and comparisons
    # are wrong: bf16 tiles are widened to fp32 as they are loaded (exactly; a product of two
    # bf16 values is exact in fp32, so the dot is a bf16 dot with fp32 accumulation)
    FRESH: tl.constexpr, WEIGHT_DECAY: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,  # sgd:
    # the rule's flags as `kernels.sgd.sgd_update` takes them (FRESH: the buffer's first step)
):
    tl.static_assert(not PERSISTENT or SPLIT_K == 1, "a persistent launch takes SPLIT_K 1")
    tl.static_assert(row_sums_ptr is None or SPLIT_K == 1, "row sums take SPLIT_K 1")
    # A persistent program computes tiles program_id, program_id + num_programs, ...; any
    # other program computes tile program_id alone, in a loop of constant trip count 1 that the
    # compiler removes, so both run the one tile body below. With TMA, `flatten` pipelines
    # across tiles: the next tile's first loads are issued during this tile's epilogue. With
    # pointer loads it would cost the K loop its own pipelining (bench/NOTES.md v5), so not there.
    if PERSISTENT:
        tile_first, tile_end, tile_step = tl.program_id(0), tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N), tl.num_programs(0)
    else:
        tile_first, tile_end, tile_step = 0, 1, 1
    for walked in tl.range(tile_first, tile_end, tile_step, flatten=TMA and PERSISTENT):
        if PERSISTENT:
            tile = walked
        else:
            tile = tl.program_id(0)
        pid_m, pid_n = _tile_coordinates(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        # Split-K: program (tile, pid_k) covers K steps [k_begin, k_end), a whole number of BLOCK_K.
        pid_k = tl.program_id(1)
        k_span = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
        k_begin = pid_k * k_span
        k_end = min(K, k_begin + k_span)

        # Element offsets in int64: row * stride overflows int32 past 2**31 elements.
        rows_m = offs_m.to(tl.int64)[:, None]
        cols_n = offs_n.to(tl.int64)[None, :]
        in_c = (offs_m[:, None] < M) & (offs_n[None, :] < N)

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        if row_sums_ptr is not None:
            row_acc = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
        for k0 in range(k_begin, k_end, BLOCK_K):
            if TMA:
                # Hopper's tensor memory accelerator copies whole blocks, bounds-checked and
                # zero-filled in hardware: no per-element addresses in registers.
                a = _tma_block(a_ptr, pid_m * BLOCK_M, k0, A_STORED_T)
                b = _tma_block(b_ptr, k0, pid_n * BLOCK_N, B_STORED_T)
                if MASK_OPERAND == 1:
                    gate = _tma_block(gate_ptr, pid_m * BLOCK_M, k0, GATE_STORED_T)
                if MASK_OPERAND == 2:
                    gate = _tma_block(gate_ptr, k0, pid_n * BLOCK_N, GATE_STORED_T)
            else:
                k = k0 + offs_k
                k_row = k.to(tl.int64)[None, :]
                k_col = k.to(tl.int64)[:, None]
                mask_a = (offs_m[:, None] < M) & (k[None, :] < K)
                mask_b = (k[:, None] < K) & (offs_n[None, :] < N)
                a = tl.load(a_ptr + rows_m * stride_am + k_row * stride_ak, mask=mask_a, other=0.0)
                b = tl.load(b_ptr + k_col * stride_bk + cols_n * stride_bn, mask=mask_b, other=0.0)
                if MASK_OPERAND == 1:
                    gate = tl.load(gate_ptr + rows_m * stride_gate_0 + k_row * stride_gate_1, mask=mask_a, other=0.0)
                if MASK_OPERAND == 2:
                    gate = tl.load(gate_ptr + k_col * stride_gate_0 + cols_n * stride_gate_1, mask=mask_b, other=0.0)
            if BF16_AS_FP32:
                a, b = a.to(tl.float32), b.to(tl.float32)
                if MASK_OPERAND != 0:
                    gate = gate.to(tl.float32)
            # NaN gate: `<=` is false, so the gradient passes, as in torch's threshold_backward.
            if MASK_OPERAND == 1:
                a = tl.where(gate <= 0, 0.0, a)
            if MASK_OPERAND == 2:
                b = tl.where(gate <= 0, 0.0, b)
            # out_dtype named: Triton 3.6 takes float32 otherwise, and refuses a float64 acc.
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)
            if row_sums_ptr is not None:
                # The A tile is in registers for the dot already: its row sums cost no load.
                row_acc += tl.sum(a.to(ACC_DTYPE), axis=1)

        finish = True
        if SPLIT_K > 1:
            # Each K slice stores its partial tile; the tile's last program to arrive (an acq_rel
            # counter, zeroed by the launcher) adds the slices up in slice order, so the sum never
            # depends on timing, and runs the epilogue.
            tile_size = BLOCK_M * BLOCK_N
            in_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            tile_ws = workspace_ptr + tile.to(tl.int64) * tile_size + in_tile
            slice_stride = tl.num_programs(0).to(tl.int64) * tile_size
            tl.store(tile_ws + pid_k * slice_stride, acc)
            tl.debug_barrier()  # every thread's partial is written before the counter moves
            finish = tl.atomic_add(counter_ptr + tile, 1, sem="acq_rel") == SPLIT_K - 1
            if finish:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
                for k_slice in range(0, SPLIT_K):
                    acc += tl.load(tile_ws + k_slice * slice_stride, cache_modifier=".cg")

        if finish:
            if aux_ptr is not None and EPILOGUE != "cross_entropy":
                aux_ptrs = aux_ptr + rows_m * stride_aux_m + cols_n * stride_aux_n
            if bias_ptr is not None:
                bias = tl.load(bias_ptr + offs_n.to(tl.int64) * stride_bias, mask=offs_n < N, other=0.0)
                acc += bias.to(ACC_DTYPE)[None, :]
            if row_sums_ptr is not None:
                if pid_n == 0:
                    tl.store(row_sums_ptr + offs_m.to(tl.int64) * stride_row_sums,
                             row_acc.to(row_sums_ptr.dtype.element_ty), mask=offs_m < M)
            if EPILOGUE == "relu":
                # `acc < 0` is false for NaN, so NaN propagates (tl.maximum would drop it).
                acc = tl.where(acc < 0, 0.0, acc)
            if EPILOGUE == "relu_mask":
                relu_out = tl.load(aux_ptrs, mask=in_c, other=0.0)
                if BF16_AS_FP32:
                    relu_out = relu_out.to(tl.float32)
                acc = tl.where(relu_out <= 0, 0.0, acc)
            if EPILOGUE == "squared_error":
                # d = prediction - target; this tile's sum of d**2, and C = scale * d (the gradient).
                diff = tl.where(in_c, acc - tl.load(aux_ptrs, mask=in_c, other=0.0).to(ACC_DTYPE), 0.0)
                tl.store(partials_ptr + tile, tl.sum(tl.sum(diff * diff, axis=1), axis=0))
                acc = scale * diff
            if EPILOGUE == "cross_entropy":
                # A whole row of logits is in this tile (N <= BLOCK_N, the launcher's promise):
                # loss = logsumexp(z) - z[t], gradient scale * (softmax(z) - onehot(t)); a class
                # outside [0, N) makes the row NaN (a kernel cannot raise).
                in_row = offs_m < M
                logits = tl.where(offs_n[None, :] < N, acc, float("-inf"))  # rows past M stay finite (0)
                log_total = tl.max(logits, axis=1)
                log_total += tl.log(tl.sum(tl.exp(logits - log_total[:, None]), axis=1))
                target = tl.load(aux_ptr + offs_m.to(tl.int64) * stride_aux_m, mask=in_row, other=0)
                valid = (target >= 0) & (target < N)
                is_target = offs_n[None, :] == target[:, None]
                row_loss = tl.where(valid, log_total - tl.sum(tl.where(is_target, acc, 0.0), axis=1), float("nan"))
                tl.store(partials_ptr + tile, tl.sum(tl.where(in_row, row_loss, 0.0), axis=0))
                acc = tl.exp(acc - log_total[:, None]) - tl.where(is_target, 1.0, 0.0)
                acc = tl.where(valid[:, None], scale * acc, float("nan"))
            if EPILOGUE == "sgd":
                # The parameter takes torch.optim.SGD's step in place from the gradient a @ b,
                # which is never stored; the momentum buffer is read and written here too.
                rate = learning_rate(lr_ptr, lr, ACC_DTYPE)
                mu = scalar(momentum_ptr, momentum, ACC_DTYPE)
                kept = scalar(keep_ptr, keep, ACC_DTYPE)
                decay = scalar(decay_ptr, weight_decay, ACC_DTYPE)
                param = tl.load(aux_ptrs, mask=in_c, other=0.0)
                buffer = param
                if buffer_ptr is not None:
                    buffer_ptrs = buffer_ptr + rows_m * stride_buffer_m + cols_n * stride_buffer_n
                    if not FRESH:
                        buffer = tl.load(buffer_ptrs, mask=in_c, other=0.0)
                new_param, new_buffer = sgd_update(param, acc, buffer, rate, mu, kept, decay, ACC_DTYPE,
                                                   buffer_ptr is not None, FRESH, WEIGHT_DECAY, NESTEROV, MAXIMIZE)
                tl.store(aux_ptrs, new_param, mask=in_c)
                if buffer_ptr is not None:
                    tl.store(buffer_ptrs, new_buffer, mask=in_c)
            else:
                tl.store(c_ptr + rows_m * stride_cm + cols_n * stride_cn, acc.to(c_ptr.dtype.element_ty), mask=in_c)

            if reduce_ptr is not None:
                # Stream order makes the earlier launch's partials complete; program 0 adds them up.
                if tile == 0:
                    total = sum_in_fixed_order(reduce_ptr, num_reduce, 1024) * reduce_scale
                    tl.store(reduce_out_ptr, total.to(reduce_out_ptr.dtype.element_ty))



@triton.jit
def _plain_matmul_kernel(
    # pointers, as `_matmul_kernel` takes them
    a_ptr, b_ptr, c_ptr, gate_ptr, aux_ptr, partials_ptr, reduce_ptr, reduce_out_ptr, lr_ptr, workspace_ptr,
    counter_ptr,
    # sizes and strides, as `_matmul_kernel` takes them
    M, N, K, num_reduce,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_gate_0, stride_gate_1,
    stride_aux_m, stride_aux_n,
    # scalars
    scale, reduce_scale, lr,
    # meta-parameters, as `_matmul_kernel` takes them
    MASK_OPERAND: tl.constexpr, EPILOGUE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, TMA: tl.constexpr, A_STORED_T: tl.constexpr, B_STORED_T: tl.constexpr,
    GATE_STORED_T: tl.constexpr, PERSISTENT: tl.constexpr, ACC_DTYPE: tl.constexpr, BF16_AS_FP32: tl.constexpr,
):
    """`_matmul_kernel` without a bias, row sums, momentum buffer, scalar tensors beyond the
    rate or update flags: the launches of the autograd ops and of the tutorial's step. The same
    code (the call is inlined, the absent arguments are constants), with the thirteen arguments
    those launches never use left out of the argument list that each launch passes through
    Triton's launcher."""
    _matmul_kernel(
        a_ptr, b_ptr, c_ptr, gate_ptr, aux_ptr, partials_ptr, reduce_ptr, reduce_out_ptr, lr_ptr, workspace_ptr,
        counter_ptr, None, None, None, None, None, None,
        M, N, K, num_reduce,
        stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_gate_0, stride_gate_1,
        stride_aux_m, stride_aux_n, 0, 0, 0, 0,
        scale, reduce_scale, lr, 0.0, 0.0, 0.0,
        MASK_OPERAND, EPILOGUE, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, TMA,
        A_STORED_T, B_STORED_T, GATE_STORED_T, PERSISTENT, ACC_DTYPE, BF16_AS_FP32, False, False, False, False)

# True when Triton's interpreter (TRITON_INTERPRET=1 before triton was imported) runs the kernels.
INTERPRETED = type(_matmul_kernel).__name__ == "InterpretedFunction"


def tiles_of(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device,
             config: GemmConfig | dict | None = None) -> tuple[GemmConfig, int]:
    """(config, number of output tiles) of a launch, so callers can size per-tile buffers before
    it; pass the config on to `launch` (a launch given a config never autotunes)."""
    config = tuning.default(M, N, K, dtype, device, interpreted=INTERPRETED) if config is None else GemmConfig.of(config)
    return config, tuning.cdiv(M, config.BLOCK_M) * tuning.cdiv(N, config.BLOCK_N)


def tma_layout(t: torch.Tensor) -> tuple[bool, torch.Tensor] | None:
    """(stored transposed, row-major storage view) when a TMA descriptor can describe `t`, else
    None: TMA needs a 16-byte aligned base, one unit stride (a column-major operand is described
    by its transpose), the other stride a multiple of 16 bytes, and no empty dimension."""
    if t.numel() == 0 or t.data_ptr() % 16:
        return None
    if t.stride(1) == 1:
        stored_t, storage = False, t
    elif t.stride(0) == 1:
        stored_t, storage = True, t.T
    else:
        return None
    if storage.stride(0) < storage.shape[1] or storage.stride(0) * t.element_size() % 16:
        return None  # overlapping rows (a broadcast, stride 0) or rows not 16-byte multiples
    return stored_t, storage


def _descriptor(t: torch.Tensor, block_rows: int, block_cols: int):
    """(host-side tensor descriptor of t's storage, stored transposed) for (block_rows, block_cols) blocks."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    stored_t, storage = tma_layout(t)
    block = [block_cols, block_rows] if stored_t else [block_rows, block_cols]
    return TensorDescriptor(storage, list(storage.shape), [storage.stride(0), 1], block), stored_t


class GemmArgs(NamedTuple):
    """The tensors and scalars of one launch, as `launch` documents them (None: absent)."""

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor | None
    mask_operand: int
    gate: torch.Tensor | None
    epilogue: str
    aux: torch.Tensor | None
    partials: torch.Tensor | None
    scale: float
    lr: float | torch.Tensor
    reduce: torch.Tensor | None
    reduce_out: torch.Tensor | None
    reduce_scale: float
    input_precision: str | None
    bias: torch.Tensor | None = None
    row_sums: torch.Tensor | None = None
    buffer: torch.Tensor | None = None
    rule: UpdateRule = PLAIN_SGD
    fresh: bool = False

    def tma_ready(self) -> bool:
        """Whether TMA descriptors can describe a, b and the gate (asked only when autotuning
        or when a config requests TMA)."""
        return self.a.shape[1] > 0 and all(tma_layout(t) is not None for t in (self.a, self.b, self.gate)
                                           if t is not None)

    def on_scratch(self) -> GemmArgs:
        """The same launch writing fresh tensors (a copy of the parameter for "sgd"): what the
        autotuner times, leaving the caller's outputs and parameters untouched."""
        fresh = lambda t: None if t is None else torch.empty_like(t)
        aux = self.aux.clone() if self.epilogue == "sgd" else self.aux
        buffer = None if self.buffer is None else self.buffer.clone()
        return self._replace(c=fresh(self.c), aux=aux, partials=fresh(self.partials), reduce_out=fresh(self.reduce_out),
                             row_sums=fresh(self.row_sums), buffer=buffer)


def _operands(args: GemmArgs, config: GemmConfig):
    """(a, b, gate as the kernel takes them, TMA in effect, the STORED_T flags): tensor
    descriptors when the config asks for TMA and the operands allow it, else the tensors (TMA
    is a request: operands a descriptor cannot describe take the pointer path)."""
    if not (config.TMA and args.tma_ready()):
        return args.a, args.b, args.gate, False, _NOT_STORED_T
    a, a_t = _descriptor(args.a, config.BLOCK_M, config.BLOCK_K)
    b, b_t = _descriptor(args.b, config.BLOCK_K, config.BLOCK_N)
    gate, gate_t = args.gate, False
    if gate is not None:
        gate_block = (config.BLOCK_M, config.BLOCK_K) if args.mask_operand == MASK_A else (config.BLOCK_K, config.BLOCK_N)
        gate, gate_t = _descriptor(gate, *gate_block)
    return a, b, gate, True, (a_t, b_t, gate_t)


_NOT_STORED_T = (False, False, False)  # (A_STORED_T, B_STORED_T, GATE_STORED_T)


def _grid(config: GemmConfig, M: int, N: int, device: torch.device) -> tuple[tuple[int, int], int]:
    """(launch grid, output tiles): a program per tile and K slice, or a resident grid."""
    tiles = tuning.cdiv(M, config.BLOCK_M) * tuning.cdiv(N, config.BLOCK_N)
    programs = min(tiles, tuning.resident_programs(device)) if config.PERSISTENT else tiles
    return (programs, config.SPLIT_K), tiles


def _split_k_scratch(config: GemmConfig, tiles: int, dtype: torch.dtype, device: torch.device):
    """(partial tiles, tile counters) for SPLIT_K > 1, else (None, None). Fresh per launch (one
    memset): a counter shared between launches, streams or captured graphs could be left off
    step by one of them and then fail silently."""
    if config.SPLIT_K == 1:
        return None, None
    workspace = torch.empty(config.SPLIT_K * tiles * config.BLOCK_M * config.BLOCK_N, dtype=accumulator_dtype(dtype),
                            device=device)
    return workspace, torch.zeros(tiles, dtype=torch.int32, device=device)


def _has_bf16(args: GemmArgs) -> bool:
    return any(t is not None and t.dtype == torch.bfloat16 for t in (args.a, args.gate, args.aux))


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else t.stride()


def _stride(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.stride(0)


def _meta(config: GemmConfig, mask_operand: int, epilogue: str, input_precision: str | None, dtype: torch.dtype,
          bf16_as_fp32: bool, tma: bool, a_stored_t: bool, b_stored_t: bool, gate_stored_t: bool,
          rule_flags: tuple[bool, bool, bool, bool] = (False, False, False, False)) -> dict:
    """The meta-parameters and launch options of a launch, by name (a `_LAUNCHER` variant)."""
    fresh, weight_decay, nesterov, maximize = rule_flags
    return dict(config.meta, TMA=tma, MASK_OPERAND=mask_operand, EPILOGUE=epilogue, INPUT_PRECISION=input_precision,
                ACC_DTYPE=accumulator(dtype), BF16_AS_FP32=bf16_as_fp32, A_STORED_T=a_stored_t,
                B_STORED_T=b_stored_t, GATE_STORED_T=gate_stored_t, FRESH=fresh, WEIGHT_DECAY=weight_decay,
                NESTEROV=nesterov, MAXIMIZE=maximize)


def _rule_flags(rule: UpdateRule, fresh: bool) -> tuple[bool, bool, bool, bool]:
    return (fresh, rule.weight_decay != 0, rule.nesterov, rule.maximize)


_PLAIN_FLAGS = _rule_flags(PLAIN_SGD, False)
_NO_SCALARS = ((None, None, None, None), (0.0, 0.0, 0.0, 0.0))
_LAUNCHER = Launcher(_matmul_kernel, _meta, layout=(17, 18))  # 17 pointers, 18 sizes and strides, 6 floats


# What only `_matmul_kernel` takes: pointers (absent from a plain launch) and flags (False there).
FULL_ONLY_POINTERS = ("bias_ptr", "row_sums_ptr", "buffer_ptr", "momentum_ptr", "keep_ptr", "decay_ptr")
FULL_ONLY_FLAGS = ("FRESH", "WEIGHT_DECAY", "NESTEROV", "MAXIMIZE")


def _plain_meta(*variant) -> dict:
    """`_meta` of a `_plain_matmul_kernel` launch (whose update flags are the plain rule's)."""
    meta = _meta(*variant)
    for name in FULL_ONLY_FLAGS:
        del meta[name]
    return meta


_PLAIN_LAUNCHER = Launcher(_plain_matmul_kernel, _plain_meta, layout=(11, 14))  # 11 pointers, 14 integers, 3 floats


def _is_plain(bias, row_sums, buffer, flags: tuple) -> bool:
    """Whether a launch is one `_plain_matmul_kernel` makes: no bias, row sums or momentum buffer,
    the plain update rule (or none). Its scalar tensors are then the rate's alone."""
    return bias is None and row_sums is None and buffer is None and flags == _PLAIN_FLAGS


def _enqueue(args: GemmArgs, config: GemmConfig, plan: tuple | None = None) -> None:
    """Launch `_matmul_kernel` for `args` with `config`; `plan`, `launch`'s name for this launch,
    is handed to the launcher where the launch takes pointers it can be given again (no TMA
    descriptors, no split-K scratch)."""
    # Unpacked once, strides read once per tensor: this runs on every launch, and host time is
    # the bound at small sizes.
    (a, b, c, mask_operand, gate, epilogue, aux, partials, scale, lr, reduce, reduce_out, reduce_scale,
     input_precision, bias, row_sums, buffer, rule, fresh) = args
    (M, K), N = a.shape, b.shape[1]
    grid, tiles = _grid(config, M, N, a.device)
    a_operand, b_operand, gate_operand, tma, stored_t = _operands(args, config)
    workspace, counters = _split_k_scratch(config, tiles, a.dtype, a.device)
    (lr_ptr, *scalar_ptrs), floats = _update_scalars(epilogue, lr, rule, buffer, fresh, a.dtype, a.device)
    (stride_am, stride_ak), (stride_bk, stride_bn) = a.stride(), b.stride()
    (stride_cm, stride_cn), (stride_gate_0, stride_gate_1) = _strides(c), _strides(gate)
    stride_aux_m, stride_aux_n = (aux.stride(0), 0) if aux is not None and aux.dim() == 1 else _strides(aux)
    sizes = (M, N, K, 0 if reduce is None else reduce.numel(),
             stride_am, stride_ak,
             stride_bk, stride_bn,
             stride_cm, stride_cn,
             stride_gate_0, stride_gate_1,
             stride_aux_m, stride_aux_n)
    flags = _rule_flags(rule, fresh)
    variant = (config, mask_operand, epilogue, input_precision, a.dtype, INTERPRETED and _has_bf16(args), tma,
               *stored_t, flags)
    plan = None if tma or workspace is not None else plan
    if _is_plain(bias, row_sums, buffer, flags):
        _PLAIN_LAUNCHER(grid, (a_operand, b_operand, c, gate_operand, aux, partials, reduce, reduce_out, lr_ptr,
                               workspace, counters, *sizes, float(scale), float(reduce_scale), floats[0]),
                        variant, plan)
        return
    _LAUNCHER(grid, (
        a_operand, b_operand, c, gate_operand, aux, partials, reduce, reduce_out, lr_ptr, workspace, counters,
        bias, row_sums, buffer, *scalar_ptrs,
        *sizes, _stride(bias), _stride(row_sums), *_strides(buffer),
        float(scale), float(reduce_scale), *floats,
    ), variant, plan)


def _update_scalars(epilogue: str, lr, rule: UpdateRule, buffer, fresh: bool, dtype: torch.dtype,
                    device: torch.device) -> tuple[tuple, tuple]:
    """The "sgd" epilogue's (lr, momentum, keep, decay) pointers and floats (`sgd.scalar_arguments`)."""
    if epilogue != "sgd":
        return _NO_SCALARS
    return scalar_arguments(lr, rule, buffer is not None, fresh, dtype, device)


@functools.lru_cache(maxsize=None)
def _variant(epilogue: str, mask_operand: int, bias: bool, row_sums: bool) -> Variant:
    return Variant(epilogue, mask_operand, bias=bias, row_sums=row_sums)


def _on_scratch(args: GemmArgs, config: GemmConfig) -> Callable[[], None]:
    """A launch of `config` on fresh outputs, allocated once: what the autotuner times."""
    return functools.partial(_enqueue, args.on_scratch(), config)


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
    bias: torch.Tensor | None = None,
    row_sums: torch.Tensor | None = None,
    buffer: torch.Tensor | None = None,
    rule: UpdateRule = PLAIN_SGD,
    fresh: bool = False,
    config: GemmConfig | dict | None = None,
    fp32_precision: str = "ieee",
    tuner: tuning.Tuner | None = None,
    plan: tuple | None = None,
) -> None:
    """Launch `_matmul_kernel` on checked, allocated tensors (callers check; this only launches).

    c: (M, N) output, None for the "sgd" epilogue (it writes `aux`). With `reduce`, program 0
    also writes reduce_scale * sum(reduce) to reduce_out. `bias` (N,) is added to the product
    before the "none" or "relu" epilogue; `row_sums` (M,) receives the sums over K of A as the
    dot reads it (after its mask), written even where N is 0 (a config for it takes SPLIT_K 1).
    The "sgd" epilogue applies `rule` at rate `lr` with the gradient a @ b, and with momentum
    reads and writes `buffer` (aux-shaped; `fresh`: its first step, written without being
    read), as `kernels.sgd.sgd_update` does. `config` fixes the tiles; without it
    `tuning.choose` picks them: the heuristic's, or with a `tuner` the autotuned ones.
    `fp32_precision` is one of `precision.DOT_PRECISIONS` (float32 inputs only).
    `plan`: a caller's own name for this launch (a hashable key of its own making, distinct
    from any other launch's), standing for everything the plan below holds: shapes, strides,
    dtypes, 16-byte alignment and absence of every tensor, epilogue, mask, precision, tiles
    and device. A caller that launches a fixed sequence (the fused step) names it once.
    """
    check_fp32_precision(fp32_precision, "launch")
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        if row_sums is not None and M:  # no tiles to sum in: the sums of a product with no columns
            masked = a.masked_fill(gate <= 0, 0) if mask_operand == MASK_A else a
            row_sums.copy_(masked.sum(dim=1, dtype=accumulator_dtype(a.dtype)))
        return
    input_precision = dot_precision(a.dtype, fp32_precision)
    if config is not None:
        config = GemmConfig.of(config)
        if row_sums is not None and config.SPLIT_K != 1:
            raise ValueError(f"launch: row_sums take SPLIT_K 1, got {config}")
    if (config is not None or tuner is None) and _LAUNCHER.prebound:
        # Given tiles or the heuristic's (never a tuner's, whose choice may change): the launch
        # is a function of what `plan` holds (a bound plan's launch is the one `_enqueue` would
        # make for the same tensors), so a launch of a known plan skips the rest of this
        # function and `_enqueue`.
        if epilogue == "sgd":
            (lr_ptr, *update_ptrs), update_floats = scalar_arguments(lr, rule, buffer is not None, fresh, a.dtype,
                                                                     a.device)
            flags = _rule_flags(rule, fresh)
        else:  # no update: its scalars are absent
            ((lr_ptr, *update_ptrs), update_floats), flags = _NO_SCALARS, _PLAIN_FLAGS
        if _is_plain(bias, row_sums, buffer, flags):
            launcher, floats = _PLAIN_LAUNCHER, (float(scale), float(reduce_scale), update_floats[0])
            pointers = (a, b, c, gate, aux, partials, reduce, reduce_out, lr_ptr, None, None)
        else:
            launcher, floats = _LAUNCHER, (float(scale), float(reduce_scale), *update_floats)
            pointers = (a, b, c, gate, aux, partials, reduce, reduce_out, lr_ptr, None, None, bias, row_sums, buffer,
                        *update_ptrs)
        if plan is None:
            plan = (M, N, K, a.device, config, epilogue, mask_operand, input_precision, a.stride(), b.stride(),
                    None if c is None else c.stride(), None if gate is None else gate.stride(),
                    None if aux is None else aux.stride(), None if reduce is None else reduce.numel(),
                    None if bias is None else bias.stride(0), None if row_sums is None else row_sums.stride(0),
                    None if buffer is None else buffer.stride(), flags, pointer_key(pointers))
        if launcher.launch_plan(plan, pointers, floats):
            return
    else:
        plan = None  # a tuner's tiles, or the interpreter: never planned
    args = GemmArgs(a, b, c, mask_operand, gate, epilogue, aux, partials, scale, lr, reduce, reduce_out,
                    reduce_scale, input_precision, bias, row_sums, buffer, rule, fresh)
    if config is None:
        tuned = tuner is not None  # what only the tuner reads is made only for it
        config = tuning.choose(a, b, _variant(epilogue, mask_operand, bias is not None, row_sums is not None),
                               args.input_precision, interpreted=INTERPRETED,
                               tuner=tuner, prepare=functools.partial(_on_scratch, args) if tuned else None,
                               tma_ready=args.tma_ready if tuned else None)
    _enqueue(args, config, plan)


def _refuse_operands(**operands) -> None:
    """Raise, naming the operand, unless each is a 2-D tensor."""
    for name, t in operands.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"matmul: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"matmul: {name} must be 2-D, got shape {tuple(t.shape)}")


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    relu: bool = False,
    a_relu_mask: torch.Tensor | None = None,
    b_relu_mask: torch.Tensor | None = None,
    out_relu_mask: torch.Tensor | None = None,
    config: GemmConfig | dict | None = None,
    fp32_precision: str = "ieee",
    tuner: tuning.Tuner | None = None,
) -> torch.Tensor:
    """`a @ b` with at most one of: `relu` applied to the product, or one of a, b and the
    product multiplied by relu'(mask) elementwise (`a_relu_mask`, `b_relu_mask`,
    `out_relu_mask`), where relu'(mask) is 0 where mask <= 0 and 1 elsewhere.

    a: (M, K), b: (K, N), any strides; a mask, when given, is a ReLU output shaped like what it
    gates. This family is closed under differentiation (the gradients of each member are
    members), which is what makes fusedgrad's ops twice differentiable. Returns a new contiguous (M, N) tensor of a's dtype. `config` (a
    `GemmConfig` or a dict of its fields) overrides the tile choice of the product launched:
    with `b_relu_mask` that is the transpose, an (N, M) product with the gated operand as A.
    `fp32_precision` ("ieee", "tf32", "tf32x3") is how float32 inputs multiply; `tuner`
    autotunes the tiles (see `tuning`).
    """
    # check
    try:  # the common case costs only the unpacking; anything else is explained below
        M, K = a.shape
        K_b, N = b.shape
    except (AttributeError, ValueError):
        _refuse_operands(a=a, b=b)
        raise
    for name, mask in (("a_relu_mask", a_relu_mask), ("b_relu_mask", b_relu_mask), ("out_relu_mask", out_relu_mask)):
        if mask is not None:
            _refuse_operands(**{name: mask})
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: dtypes differ: a is {a.dtype}, b is {b.dtype}")
    if K != K_b or a.device != b.device:
        raise ValueError(f"matmul: a {tuple(a.shape)} on {a.device} does not fit b {tuple(b.shape)} on {b.device}")
    if a.dtype not in KERNEL_DTYPES:
        raise TypeError(f"matmul: Triton kernels take {KERNEL_DTYPES}, got {a.dtype}")
    if sum(t is not None for t in (a_relu_mask, b_relu_mask, out_relu_mask)) + bool(relu) > 1:
        raise ValueError("matmul: at most one of relu, a_relu_mask, b_relu_mask, out_relu_mask")
    if out_relu_mask is not None and (out_relu_mask.shape != (M, N) or out_relu_mask.device != a.device):
        raise ValueError(f"matmul: out_relu_mask {tuple(out_relu_mask.shape)} on {out_relu_mask.device} does "
                         f"not match the product {(M, N)} on {a.device}")
    check_fp32_precision(fp32_precision, "matmul")
    if config is not None:
        config = GemmConfig.of(config)
    if a_relu_mask is not None or b_relu_mask is not None:
        gate, gated = (a_relu_mask, a) if a_relu_mask is not None else (b_relu_mask, b)
        if gate.shape != gated.shape or gate.device != gated.device:
            raise ValueError(f"matmul: mask {tuple(gate.shape)} on {gate.device} does not match "
                             f"its operand {tuple(gated.shape)} on {gated.device}")
    return matmul_unchecked(a, b, relu, a_relu_mask, b_relu_mask, out_relu_mask, fp32_precision, tuner, config)


def matmul_unchecked(a, b, relu, a_relu_mask, b_relu_mask, out_relu_mask, fp32_precision: str,
                     tuner: tuning.Tuner | None, config: GemmConfig | None = None) -> torch.Tensor:
    """`matmul`, its arguments in order, for a caller that has checked them as `matmul` does
    (fusedgrad's ops): the checks cost as much host time as the rest of a small product."""
    mask_operand, gate = NO_MASK, None
    if a_relu_mask is not None:
        mask_operand, gate = MASK_A, a_relu_mask
    elif b_relu_mask is not None:
        mask_operand, gate = MASK_B, b_relu_mask
    # allocate
    c = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    # launch
    epilogue = "relu" if relu else "relu_mask" if out_relu_mask is not None else "none"
    if mask_operand == MASK_B:
        # c.T = (b.T * relu'(gate.T)) @ a.T: the same product, with the gated operand as A. A
        # gated B is zeroed in registers and must go back to shared memory every K step (Hopper's
        # wgmma reads B only from there), and Triton then waits for each wgmma before the next
        # step; a gated A feeds wgmma from registers and keeps wgmmas in flight. IEEE fp32 (FMA)
        # tiles also spill with a gated B and not with a gated A (bench/NOTES.md v5a, v5e).
        launch(b.T, a.T, c.T, mask_operand=MASK_A, gate=gate.T, epilogue=epilogue, aux=out_relu_mask, config=config,
               fp32_precision=fp32_precision, tuner=tuner)
    else:
        launch(a, b, c, mask_operand=mask_operand, gate=gate, epilogue=epilogue, aux=out_relu_mask, config=config,
               fp32_precision=fp32_precision, tuner=tuner)
    return c
