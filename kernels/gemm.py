"""One tiled GEMM kernel, with constexpr prologue and epilogue options, for every matrix product
of the two-layer network: the autograd ops' forward and backward, and the fused training step.

    forward           out    = relu(a @ b)                     EPILOGUE "relu"
    backward (a)      grad_a = relu'(out) * grad_out @ b.T      MASK_OPERAND A (grad_out)
    backward (b)      grad_b = a.T @ relu'(out) * grad_out      launched as its transpose,
                      grad_b.T = relu'(out.T) * grad_out.T @ a   MASK_OPERAND A (grad_out.T)
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
correctly. Squared-error partial sums go to one slot per output tile and are added up in index
order by a later launch (REDUCE_PARTIALS), never with atomics: the loss is deterministic.

Three launch options serve shapes the plain tiling serves badly (`kernels/tuning.py` chooses):
SPLIT_K > 1 gives each output tile several programs, one per slice of K, for skinny long-K
products that would otherwise fill a few multiprocessors; the last program of a tile to finish
(an acq_rel counter) adds the partial tiles in slice order, so the sum is deterministic and the
epilogues run unchanged, in one launch. TMA loads tiles through host tensor descriptors on
Hopper instead of per-element pointers, trading a layout restriction (16-byte aligned rows) for
fewer registers and hardware bounds checks. PERSISTENT launches one program per multiprocessor
that walks the tiles (`_matmul_tile` is the body either way), trading the hardware scheduler's
fresh program per tile for overlap of one tile's epilogue with the next tile's TMA loads.
(Warp-specialised schedules are not offered: Triton 3.6 and 3.9 ignore `tl.range(...,
warp_specialize=True)` on sm_90; it is a Blackwell feature there.)

The ATen reference of the plain GEMM (CPU fallback and test oracle) is
`fusedgrad.matmul.matmul_reference`; the fused step's is `fusedgrad.step.train_step_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusedgrad.dispatch import torch_fp32_precision  # absolute: launcher_cost.py loads kernels/ alone
from . import tuning
from .reduce import sum_in_fixed_order

# Which operand, if any, is multiplied by relu'(gate) as it is loaded.
NO_MASK, MASK_A, MASK_B = 0, 1, 2
EPILOGUES = ("none", "relu", "relu_mask", "squared_error", "sgd")

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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
def _matmul_tile(
    tile,
    a_ptr, b_ptr, c_ptr, gate_ptr, aux_ptr, partials_ptr, reduce_ptr, reduce_out_ptr, lr_ptr,
    workspace_ptr, counter_ptr,
    M, N, K, num_reduce,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_gate_0, stride_gate_1,
    stride_aux_m, stride_aux_n,
    scale, reduce_scale, lr,
    MASK_OPERAND: tl.constexpr, EPILOGUE: tl.constexpr, LR_FROM_PTR: tl.constexpr,
    REDUCE_PARTIALS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, TMA: tl.constexpr,
    A_STORED_T: tl.constexpr, B_STORED_T: tl.constexpr, GATE_STORED_T: tl.constexpr,
):
    """Output tile `tile` (numbered in grouped order; with SPLIT_K, K slice tl.program_id(1) of
    it): the K loop, then the epilogue. The other parameters are `_matmul_kernel`'s."""
    pid = tile
    # Grouped ordering: GROUP_M consecutive row-blocks share each column-block of B in L2.
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
    # Split-K: program (pid, pid_k) covers K steps [k_begin, k_end), a whole number of BLOCK_K.
    pid_k = tl.program_id(1)
    k_span = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_begin = pid_k * k_span
    k_end = min(K, k_begin + k_span)

    # Element offsets in int64: row * stride overflows int32 past 2**31 elements.
    rows_m = offs_m.to(tl.int64)[:, None]
    cols_n = offs_n.to(tl.int64)[None, :]
    in_c = (offs_m[:, None] < M) & (offs_n[None, :] < N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
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
        # NaN gate: `<=` is false, so the gradient passes, as in torch's threshold_backward.
        if MASK_OPERAND == 1:
            a = tl.where(gate <= 0, 0.0, a)
        if MASK_OPERAND == 2:
            b = tl.where(gate <= 0, 0.0, b)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    finish = True
    if SPLIT_K > 1:
        # Each K slice stores its partial tile; the tile's last program to arrive (an acq_rel
        # counter, zeroed by the launcher) adds the slices up in slice order, so the sum never
        # depends on timing, and runs the epilogue.
        tile_size = BLOCK_M * BLOCK_N
        in_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tile_ws = workspace_ptr + pid.to(tl.int64) * tile_size + in_tile
        slice_stride = tl.num_programs(0).to(tl.int64) * tile_size
        tl.store(tile_ws + pid_k * slice_stride, acc)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        finish = tl.atomic_add(counter_ptr + pid, 1, sem="acq_rel") == SPLIT_K - 1
        if finish:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k_slice in range(0, SPLIT_K):
                acc += tl.load(tile_ws + k_slice * slice_stride, cache_modifier=".cg")

    if finish:
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


@triton.jit
def _matmul_kernel(
    # pointers
    a_ptr, b_ptr, c_ptr,
    gate_ptr,      # MASK_OPERAND: ReLU output shaped like the gated operand
    aux_ptr,       # EPILOGUE: C-shaped; ReLU output (relu_mask), target (squared_error), parameter (sgd)
    partials_ptr,  # squared_error: one fp32 partial sum per output tile
    reduce_ptr,    # REDUCE_PARTIALS: partial sums of an earlier launch, folded into reduce_out_ptr
    reduce_out_ptr,
    lr_ptr,        # sgd with LR_FROM_PTR: the learning rate as a 0-d tensor
    workspace_ptr,  # SPLIT_K > 1: fp32 partial tiles, (SPLIT_K, programs, BLOCK_M * BLOCK_N)
    counter_ptr,    # SPLIT_K > 1: int32 per tile, 0 before the launch
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
    MASK_OPERAND: tl.constexpr,  # NO_MASK, MASK_A (gate is (M, K)) or MASK_B (gate is (K, N);
    # `matmul` launches gated-B products transposed, as MASK_A: MASK_B serves `launch` callers)
    EPILOGUE: tl.constexpr,      # one of EPILOGUES
    LR_FROM_PTR: tl.constexpr,
    REDUCE_PARTIALS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,  # "ieee", "tf32" or "tf32x3" for fp32 inputs; None for 16-bit
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,         # programs per output tile, each over a slice of K
    TMA: tl.constexpr,             # a, b (and gate) are tensor descriptors, not pointers
    A_STORED_T: tl.constexpr, B_STORED_T: tl.constexpr, GATE_STORED_T: tl.constexpr,  # TMA: which
    # descriptors describe the transposed operand (its storage is column-major)
    PERSISTENT: tl.constexpr,      # a resident grid (about one program per multiprocessor) walks
    # the tiles, stepping by the grid size; SPLIT_K must be 1
):
    tl.static_assert(not PERSISTENT or SPLIT_K == 1, "a persistent launch takes SPLIT_K 1")
    if PERSISTENT:
        # With TMA, `flatten` pipelines across tiles: the next tile's first loads are issued
        # during this tile's epilogue. With pointer loads it would cost the K loop its own
        # pipelining (sm_90, Triton 3.6: bf16 wgmma then waits every K step), so not there.
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=TMA):
            _matmul_tile(
                tile,
                a_ptr, b_ptr, c_ptr, gate_ptr, aux_ptr, partials_ptr, reduce_ptr, reduce_out_ptr, lr_ptr,
                workspace_ptr, counter_ptr,
                M, N, K, num_reduce,
                stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_gate_0, stride_gate_1,
                stride_aux_m, stride_aux_n,
                scale, reduce_scale, lr,
                MASK_OPERAND, EPILOGUE, LR_FROM_PTR, REDUCE_PARTIALS, INPUT_PRECISION,
                BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, TMA, A_STORED_T, B_STORED_T, GATE_STORED_T)
    else:
        _matmul_tile(
            tl.program_id(0),
            a_ptr, b_ptr, c_ptr, gate_ptr, aux_ptr, partials_ptr, reduce_ptr, reduce_out_ptr, lr_ptr,
            workspace_ptr, counter_ptr,
            M, N, K, num_reduce,
            stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_gate_0, stride_gate_1,
            stride_aux_m, stride_aux_n,
            scale, reduce_scale, lr,
            MASK_OPERAND, EPILOGUE, LR_FROM_PTR, REDUCE_PARTIALS, INPUT_PRECISION,
            BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, TMA, A_STORED_T, B_STORED_T, GATE_STORED_T)


# True when Triton's interpreter (TRITON_INTERPRET=1 before triton was imported) runs the kernels.
INTERPRETED = type(_matmul_kernel).__name__ == "InterpretedFunction"


FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")


def check_fp32_precision(fp32_precision: str | None) -> None:
    if fp32_precision is not None and fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32 precision {fp32_precision!r} is not one of {FP32_PRECISIONS}")


def input_precision(dtype: torch.dtype, fp32_precision: str | None = None) -> str | None:
    """tl.dot's input_precision for `dtype`: None for 16-bit inputs; for fp32, `fp32_precision`
    when given ("tf32x3": three tf32 products, near-fp32 accuracy on tensor cores), else torch's
    fp32 matmul setting, as cuBLAS follows it."""
    check_fp32_precision(fp32_precision)
    if dtype != torch.float32:
        return None
    if fp32_precision is not None:
        return fp32_precision
    return torch_fp32_precision()


def plan(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device, config: dict | None = None):
    """(config, number of output tiles) of a launch, so callers can size per-tile buffers before
    it; pass the config on to `launch` (a launch given a config never autotunes)."""
    if config is None:
        config = tuning.default(M, N, K, dtype, device, interpreted=INTERPRETED)
    return config, tuning.cdiv(M, config["BLOCK_M"]) * tuning.cdiv(N, config["BLOCK_N"])


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
    fp32_precision: str | None = None,
) -> None:
    """Launch `_matmul_kernel` on checked, allocated tensors (callers check; this only launches).

    c: (M, N) output, None for the "sgd" epilogue (it writes `aux`). Unused pointers get a
    dummy tensor. With `reduce`, program 0 also writes reduce_scale * sum(reduce) to reduce_out.
    `config` fixes the tiles; without it `tuning.choose` picks them (heuristic or autotuned).
    """
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return
    precision = input_precision(a.dtype, fp32_precision)

    def tma_ready() -> bool:  # asked only when autotuning or when a config requests TMA
        return K > 0 and all(tma_layout(t) is not None for t in ((a, b) if gate is None else (a, b, gate)))

    def run(config, c, aux, partials, reduce_out):
        config = {"GROUP_M": 8, "SPLIT_K": 1, "TMA": False, "PERSISTENT": False, **config}
        split_k = config["SPLIT_K"]
        block_m, block_n, block_k = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
        tiles = tuning.cdiv(M, block_m) * tuning.cdiv(N, block_n)
        programs = tiles
        if config["PERSISTENT"]:
            if split_k > 1:
                raise ValueError(f"matmul: a persistent launch takes SPLIT_K 1, got config {config}")
            programs = min(tiles, tuning.resident_programs(a.device))
        # TMA is a request: operands a descriptor cannot describe take the pointer path.
        config["TMA"] = tma = config["TMA"] and tma_ready()
        a_arg, b_arg, gate_arg = a, b, gate
        stored_t = dict(A_STORED_T=False, B_STORED_T=False, GATE_STORED_T=False)
        if tma:
            a_arg, stored_t["A_STORED_T"] = _descriptor(a, block_m, block_k)
            b_arg, stored_t["B_STORED_T"] = _descriptor(b, block_k, block_n)
            if gate is not None:
                gate_block = (block_m, block_k) if mask_operand == MASK_A else (block_k, block_n)
                gate_arg, stored_t["GATE_STORED_T"] = _descriptor(gate, *gate_block)
        workspace = counters = a
        if split_k > 1:
            # Fresh per launch (one memset): a counter shared between launches, streams or
            # captured graphs could be left off step by one of them and then fail silently.
            workspace = torch.empty(split_k * tiles * config["BLOCK_M"] * config["BLOCK_N"],
                                    dtype=torch.float32, device=a.device)
            counters = torch.zeros(tiles, dtype=torch.int32, device=a.device)
        lr_from_ptr = isinstance(lr, torch.Tensor)
        dummy = a
        gate_ = dummy if gate is None else gate
        aux = dummy if aux is None else aux
        c = aux if c is None else c
        # One stride() call per tensor: this runs on every launch, and host time is the bound
        # at small sizes.
        (stride_am, stride_ak), (stride_bk, stride_bn), (stride_cm, stride_cn) = a.stride(), b.stride(), c.stride()
        (stride_gate_0, stride_gate_1), (stride_aux_m, stride_aux_n) = gate_.stride(), aux.stride()
        _matmul_kernel[(programs, split_k)](
            a_arg, b_arg, c, dummy if gate_arg is None else gate_arg, aux,
            dummy if partials is None else partials,
            dummy if reduce is None else reduce,
            dummy if reduce_out is None else reduce_out,
            lr if lr_from_ptr else dummy,
            workspace, counters,
            M, N, K, 0 if reduce is None else reduce.numel(),
            stride_am, stride_ak,
            stride_bk, stride_bn,
            stride_cm, stride_cn,
            stride_gate_0, stride_gate_1,
            stride_aux_m, stride_aux_n,
            float(scale), float(reduce_scale), 0.0 if lr_from_ptr else float(lr),
            MASK_OPERAND=mask_operand,
            EPILOGUE=epilogue,
            LR_FROM_PTR=lr_from_ptr,
            REDUCE_PARTIALS=reduce is not None,
            INPUT_PRECISION=precision,
            **stored_t,
            **config,
        )

    def time_ms(config) -> float:
        """GPU time of `config` on scratch outputs (the caller's tensors are only read), from
        launches replayed in a CUDA graph: host launch cost, which would swamp the small
        kernels' differences, is left out."""
        if config.get("TMA") and not tma_ready():
            return float("inf")  # it would time the pointer path under the TMA name
        scratch = [None if t is None else torch.empty_like(t) for t in (c, partials, reduce_out)]
        scratch_aux = aux.clone() if epilogue == "sgd" else aux
        return triton.testing.do_bench_cudagraph(lambda: run(config, scratch[0], scratch_aux, scratch[1], scratch[2]),
                                                 rep=20, return_mode="median")

    if config is None:
        config = tuning.choose(a, b, f"{epilogue} mask={mask_operand}", precision, interpreted=INTERPRETED,
                               time_ms=time_ms, tma_ready=tma_ready)
    run(config, c, aux, partials, reduce_out)


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    relu: bool = False,
    a_relu_mask: torch.Tensor | None = None,
    b_relu_mask: torch.Tensor | None = None,
    config: dict | None = None,
    fp32_precision: str | None = None,
) -> torch.Tensor:
    """`(a * relu'(a_relu_mask)) @ (b * relu'(b_relu_mask))`, then `relu` if asked.

    a: (M, K), b: (K, N), any strides; a mask, when given, is a ReLU output shaped like the
    operand it gates. Returns a new contiguous (M, N) tensor of a's dtype. `config` overrides
    the tile choice (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, TMA, PERSISTENT, num_warps,
    num_stages) of the product launched: with `b_relu_mask` that is the transpose, an (N, M)
    product with the gated operand as A. `fp32_precision` ("ieee", "tf32", "tf32x3") overrides
    torch's setting for fp32 inputs.
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
    check_fp32_precision(fp32_precision)
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
    epilogue = "relu" if relu else "none"
    if mask_operand == MASK_B:
        # c.T = (b.T * relu'(gate.T)) @ a.T: the same product, with the gated operand as A. A
        # gated B is zeroed in registers and must go back to shared memory every K step: Hopper's
        # wgmma reads B only from there, and Triton (3.6, 3.9) then waits for each wgmma before
        # the next step, where a gated A feeds wgmma from registers and keeps wgmmas in flight
        # (sm_90 TTGIR: `warp_group_dot_wait` pendings 0 against 1-3). IEEE fp32 (FMA) tiles
        # of 64 x 64 and up spill with a gated B (255 registers and 0.4-1.9 KiB of stack a
        # thread) and do not with a gated A (76-143 registers). `bench/NOTES.md` v5a, v5e.
        launch(b.T, a.T, c.T, mask_operand=MASK_A, gate=gate.T, epilogue=epilogue, config=config,
               fp32_precision=fp32_precision)
    else:
        launch(a, b, c, mask_operand=mask_operand, gate=gate, epilogue=epilogue, config=config,
               fp32_precision=fp32_precision)
    return c
