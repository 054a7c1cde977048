"""Tier 2: the GEMM kernel under every launch configuration it may get: split-K (partial tiles
summed in slice order by the tile's last program) and persistent programs (each walks several
tiles) in every epilogue, TMA loads, every autotuning candidate, and the fused step with all its
GEMMs split or persistent. Interpreted on CPU, compiled on CUDA; oracle: float64 ATen.
"""

import pytest
import torch

import fusedgrad
from fusedgrad.kernels import GemmConfig, Variant, gemm, tuning
from helpers import assert_close, kernel_device, make_operand, record_grids, relu_matmul_float64

DEVICE = kernel_device()


def split(split_k: int, block: int = 16, block_k: int = 16) -> GemmConfig:
    return GemmConfig(BLOCK_M=block, BLOCK_N=block, BLOCK_K=block_k, GROUP_M=2, SPLIT_K=split_k,
                      num_warps=4, num_stages=2)


def persistent(block: int = 16, **extra) -> GemmConfig:
    return split(1, block=block).replace(PERSISTENT=True, **extra)


@pytest.fixture(autouse=True)
def three_resident_programs(monkeypatch):
    """Persistent launches get 3 programs, on a GPU too, so each walks several tiles."""
    monkeypatch.setattr(tuning, "resident_programs", lambda device: 3)


def float64_product(a, b, a_mask=None, b_mask=None):
    a, b = a.double().cpu(), b.double().cpu()
    if a_mask is not None:
        a = a.masked_fill(a_mask.cpu() <= 0, 0)
    if b_mask is not None:
        b = b.masked_fill(b_mask.cpu() <= 0, 0)
    return a @ b


@pytest.mark.parametrize("split_k", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("variant", ["relu", "mask_a", "mask_b", "none"])
def test_split_k_matches_float64(variant, dtype, split_k):
    """K = 150 over BLOCK_K 16: 10 K steps in 2 to 8 slices, the last ones short or empty."""
    dtype = getattr(torch, dtype)
    M, K, N = 37, 150, 41
    a = make_operand(M, K, dtype, DEVICE, "transposed")
    b = make_operand(K, N, dtype, DEVICE)
    masks = {}
    if variant == "mask_a":
        masks["a_relu_mask"] = torch.randn(M, K, dtype=dtype, device=DEVICE)
    if variant == "mask_b":
        masks["b_relu_mask"] = torch.randn(K, N, dtype=dtype, device=DEVICE)
    out = gemm.matmul(a, b, relu=variant == "relu", config=split(split_k), **masks)
    reference = float64_product(a, b, masks.get("a_relu_mask"), masks.get("b_relu_mask"))
    if variant == "relu":
        reference = reference.relu()
    assert_close(out, reference, str(dtype).removeprefix("torch."))


@pytest.mark.parametrize("layout_grad", ["contiguous", "transposed"])
@pytest.mark.parametrize("layout_a", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("precision", ["ieee", "tf32"])
def test_gated_b_is_launched_transposed(precision, layout_a, layout_grad, monkeypatch):
    """grad_b = a.T @ (relu'(out) * grad_out) is launched as grad_b.T = (relu'(out.T) *
    grad_out.T) @ a, with the gated operand as A (tf32 is exact in the interpreter): float64's
    result, contiguous. Launched as written (MASK_B, what `bench/kernels.py` compares against),
    the same."""
    launched = []
    launch = gemm.launch

    def recording(a, b, c, **kwargs):
        launched.append((tuple(a.shape), tuple(b.shape), kwargs["mask_operand"]))
        return launch(a, b, c, **kwargs)

    monkeypatch.setattr(gemm, "launch", recording)
    M, K, N = 37, 70, 45  # the forward's a is (M, K); grad_b is (K, N)
    a = make_operand(M, K, torch.float32, DEVICE, layout_a)
    grad_out = make_operand(M, N, torch.float32, DEVICE, layout_grad)
    gate = torch.randn(M, N, device=DEVICE)
    grad_b = gemm.matmul(a.T, grad_out, b_relu_mask=gate, fp32_precision=precision)
    assert launched == [((N, M), (M, K), gemm.MASK_A)]
    assert grad_b.shape == (K, N) and grad_b.is_contiguous()
    tolerance = "tf32" if DEVICE == "cuda" and precision == "tf32" else "float32"
    reference = float64_product(a.T, grad_out, b_mask=gate)
    assert_close(grad_b, reference, tolerance)
    as_written = torch.empty(K, N, device=DEVICE)
    launch(a.T, grad_out, as_written, mask_operand=gemm.MASK_B, gate=gate, fp32_precision=precision)
    assert_close(as_written, reference, tolerance)


def test_split_k_is_deterministic():
    a = make_operand(50, 300, torch.float32, DEVICE)
    b = make_operand(300, 20, torch.float32, DEVICE)
    a[3, 17] = float("nan")  # NaN propagates through the partial sums
    runs = [gemm.matmul(a, b, relu=True, config=split(4)) for _ in range(3)]
    assert all(torch.equal(runs[0].isnan(), run.isnan()) for run in runs)
    assert runs[0][3].isnan().all() and not runs[0][4].isnan().any()
    finite = ~runs[0].isnan()
    assert all(torch.equal(runs[0][finite], run[finite]) for run in runs[1:])


@pytest.mark.parametrize("config", [split(4), persistent(block=16)], ids=["split-K", "persistent"])
def test_sgd_and_squared_error_epilogues(config):
    """w -= lr * (a @ b) and (gradient, loss partials) computed from split-K accumulators, or by
    programs that each finish several tiles (45 x 24 in 16 x 16 tiles: 6 tiles, 3 programs)."""
    a = make_operand(45, 130, torch.float32, DEVICE, "transposed")
    b = make_operand(130, 24, torch.float32, DEVICE)
    weight = torch.randn(45, 24, device=DEVICE)
    expected = weight.double().cpu() - 0.01 * float64_product(a, b)
    gemm.launch(a, b, None, epilogue="sgd", aux=weight, lr=0.01, config=config)
    assert_close(weight, expected, "float32")

    target = torch.randn(45, 24, device=DEVICE)
    config, tiles = gemm.tiles_of(45, 24, 130, torch.float32, a.device, config)
    grad, partials = torch.empty(45, 24, device=DEVICE), torch.empty(tiles, device=DEVICE)
    gemm.launch(a, b, grad, epilogue="squared_error", aux=target, partials=partials, scale=2.0, config=config)
    diff = float64_product(a, b) - target.double().cpu()
    assert_close(grad, 2 * diff, "float32")
    torch.testing.assert_close(partials.double().sum().cpu(), diff.pow(2).sum(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("config", [split(4), persistent(block=16)], ids=["split-K", "persistent"])
def test_fused_step_with_every_gemm_split_or_persistent(config, monkeypatch):
    """The fused step with split-K or persistent programs in its ReLU, ReLU-mask and both SGD
    GEMMs (the loss GEMM keeps planned tiles) equals the ATen reference step."""
    chosen = []

    def choose(a, b, variant, precision, **kwargs):
        chosen.append(variant)
        return config

    monkeypatch.setattr(tuning, "choose", choose)
    x, y = torch.randn(24, 130, device=DEVICE), torch.randn(24, 6, device=DEVICE)
    w1, w2 = torch.randn(130, 40, device=DEVICE) * 0.1, torch.randn(40, 6, device=DEVICE) * 0.1
    ref_w1, ref_w2 = w1.double().cpu(), w2.double().cpu()
    ref_loss = fusedgrad.train_step_reference(x.double().cpu(), y.double().cpu(), ref_w1, ref_w2, 1e-3)
    with fusedgrad.backend("triton"):
        loss = fusedgrad.train_step(x, y, w1, w2, 1e-3)
    assert chosen == [Variant("relu", gemm.NO_MASK), Variant("relu_mask", gemm.NO_MASK), Variant("sgd", gemm.NO_MASK),
                      Variant("sgd", gemm.NO_MASK)]
    torch.testing.assert_close(loss.double().cpu(), ref_loss, rtol=1e-5, atol=0)
    assert_close(w1, ref_w1, "float32")
    assert_close(w2, ref_w2, "float32")


CANDIDATES = [(dtype, precision, config)
              for dtype, precision in ((torch.float16, None), (torch.float32, "tf32"), (torch.float32, "ieee"))
              for config in tuning.candidates(4096, 4096, 4096, dtype, precision, 132, tma=True)
              + tuning.candidates(64, 100, 1000, dtype, precision, 132)[1:]]


@pytest.mark.parametrize("dtype, precision, config", CANDIDATES,
                         ids=[f"{str(d).removeprefix('torch.')}-{p}-{c.BLOCK_M}x{c.BLOCK_N}x{c.BLOCK_K}"
                              f"-split{c.SPLIT_K}{'-tma' if c.TMA else ''}{'-persistent' if c.PERSISTENT else ''}"
                              for d, p, c in CANDIDATES])
def test_every_autotuning_candidate_is_correct(dtype, precision, config):
    """Each configuration the autotuner may pick, forward (ReLU) and both masked backward
    variants, on a shape that is a multiple of no block size but keeps rows 16-byte aligned, so
    TMA candidates take the TMA path. (Precision follows torch here; the interpreter's fp32
    dots are exact.)"""
    tolerance = "float16" if dtype == torch.float16 else ("tf32" if DEVICE == "cuda" and precision == "tf32" else "float32")
    M, K, N = 40, 152, 40
    a, b = make_operand(M, K, dtype, DEVICE), make_operand(K, N, dtype, DEVICE, "transposed")
    gate = torch.randn(M, N, dtype=dtype, device=DEVICE)
    grad_out = torch.randn(M, N, dtype=dtype, device=DEVICE)
    fp32 = dict(fp32_precision=precision) if dtype == torch.float32 else {}
    out = gemm.matmul(a, b, relu=True, config=config, **fp32)
    grad_a = gemm.matmul(grad_out, b.T, a_relu_mask=gate, config=config, **fp32)
    grad_b = gemm.matmul(a.T, grad_out, b_relu_mask=gate, config=config, **fp32)
    _, ref_a, ref_b = relu_matmul_float64(a, b, grad_out, mask_from=gate)
    assert_close(out, float64_product(a, b).relu(), tolerance)
    assert_close(grad_a, ref_a, tolerance)
    assert_close(grad_b, ref_b, tolerance)


@pytest.mark.parametrize("variant", ["relu", "mask_a", "mask_b", "tma"])
def test_persistent_programs_walk_every_tile(variant, monkeypatch):
    """A persistent launch has fewer programs than tiles (one per multiprocessor; 3 here, on
    the GPU too): 40 x 44 in 16 x 16 tiles is 9 tiles, ragged at the edges, so each program
    computes three."""
    grids = record_grids(monkeypatch, gemm._LAUNCHER, gemm._PLAIN_LAUNCHER)
    M, K, N = 40, 152, 44
    a, b = make_operand(M, K, torch.float32, DEVICE), make_operand(K, N, torch.float32, DEVICE, "transposed")
    masks = {}
    if variant == "mask_a":
        masks["a_relu_mask"] = torch.randn(M, K, device=DEVICE)
    if variant == "mask_b":
        masks["b_relu_mask"] = torch.randn(K, N, device=DEVICE)  # launched transposed: gated A
    config = persistent(TMA=variant == "tma")
    out = gemm.matmul(a, b, relu=variant in ("relu", "tma"), config=config, fp32_precision="ieee", **masks)
    reference = float64_product(a, b, masks.get("a_relu_mask"), masks.get("b_relu_mask"))
    assert_close(out, reference.relu() if variant in ("relu", "tma") else reference, "float32")
    assert grids == [(3, 1)]


BAD_CONFIGS = [
    (dict(SPLIT_K=0), "SPLIT_K must be >= 1, got 0"),
    (dict(SPLIT_K=-1), "SPLIT_K must be >= 1, got -1"),
    (dict(BLOCK_M=3), "BLOCK_M must be a power of two >= 16, got 3"),
    (dict(BLOCK_N=48), "BLOCK_N must be a power of two >= 16, got 48"),
    (dict(BLOCK_K=8), "BLOCK_K must be a power of two >= 16, got 8"),
    (dict(GROUP_M=0), "GROUP_M must be >= 1, got 0"),
    (dict(num_warps=3), "num_warps must be a power of two from 1 to 32, got 3"),
    (dict(num_stages=0), "num_stages must be >= 1, got 0"),
    (dict(SPLIT_K=2, PERSISTENT=True), "a PERSISTENT launch takes SPLIT_K 1, got SPLIT_K 2"),
    (dict(TMA=1), "TMA must be bool, got 1"),
    (dict(BLOCK_M=32.0), "BLOCK_M must be int, got 32.0"),
    (dict(BLOCK_M=True), "BLOCK_M must be int, got True"),
    (dict(SPLITK=2), "unknown field.*'SPLITK'"),
]


@pytest.mark.parametrize("change, message", BAD_CONFIGS, ids=[m.split(" ")[0] for _, m in BAD_CONFIGS])
def test_bad_configs_are_refused_before_any_launch(change, message, monkeypatch):
    """Every field is checked when a config is made, so a bad one never reaches a kernel (a
    SPLIT_K of 0 would leave the output unwritten); dicts go through the same checks."""
    for launcher in (gemm._LAUNCHER, gemm._PLAIN_LAUNCHER):
        monkeypatch.setattr(launcher, "kernel", None)  # a launch would crash differently
    a, b = torch.randn(20, 30, device=DEVICE), torch.randn(30, 20, device=DEVICE)
    fields = dict(split(1).meta, **change)
    with pytest.raises(ValueError, match=message):
        gemm.matmul(a, b, config=fields)
    with pytest.raises(ValueError, match=message):
        GemmConfig.of(fields)


def test_config_from_a_dict_takes_the_defaults():
    config = GemmConfig.of(dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16))
    assert config == GemmConfig(64, 32, 16) and (config.SPLIT_K, config.TMA, config.PERSISTENT) == (1, False, False)
    assert GemmConfig.of(config) is config
    with pytest.raises(ValueError, match="missing field.*BLOCK_K"):
        GemmConfig.of(dict(BLOCK_M=64, BLOCK_N=32))
    with pytest.raises(TypeError, match="GemmConfig or a dict"):
        GemmConfig.of([64, 32, 16])


def test_fp32_precision_is_checked():
    a, b = torch.randn(4, 4, device=DEVICE), torch.randn(4, 4, device=DEVICE)
    with pytest.raises(ValueError, match="matmul: fp32 precision 'tf32x4' is not one of ieee, tf32, tf32x3"):
        gemm.matmul(a, b, fp32_precision="tf32x4")
    with pytest.raises(ValueError, match="launch: fp32 precision None is not one of"):  # not Triton's default
        gemm.launch(a, b, torch.empty(4, 4, device=DEVICE), fp32_precision=None)


@pytest.mark.parametrize("layout_b", ["contiguous", "transposed"])
@pytest.mark.parametrize("layout_a", ["contiguous", "transposed"])
def test_tma_loads_every_layout_and_fall_back_when_unaligned(layout_a, layout_b, monkeypatch):
    """TMA describes a column-major operand by its transpose; an operand it cannot describe
    (rows not a multiple of 16 bytes, like the tutorial's D_out = 10 in fp32) takes the
    pointer path. Both give the float64 answer."""
    described = []
    descriptor = gemm._descriptor
    monkeypatch.setattr(gemm, "_descriptor", lambda t, *block: described.append(t.shape) or descriptor(t, *block))
    config = split(1, block=32, block_k=32).replace(TMA=True)
    a = make_operand(72, 136, torch.float32, DEVICE, layout_a)
    b = make_operand(136, 40, torch.float32, DEVICE, layout_b)
    gate = torch.randn(72, 136, device=DEVICE)
    assert_close(gemm.matmul(a, b, a_relu_mask=gate, config=config), float64_product(a, b, gate), "float32")
    assert described == [(72, 136), (136, 40), (72, 136)]
    unaligned = make_operand(136, 10, torch.float32, DEVICE)
    assert gemm.tma_layout(unaligned) is None
    assert_close(gemm.matmul(a, unaligned, relu=True, config=config), float64_product(a, unaligned).relu(), "float32")
    assert len(described) == 3


def test_one_gate_at_most_and_the_out_mask_shape_is_checked():
    a, b = torch.randn(6, 5, device=DEVICE), torch.randn(5, 4, device=DEVICE)
    with pytest.raises(ValueError, match="at most one of relu, a_relu_mask, b_relu_mask, out_relu_mask"):
        gemm.matmul(a, b, relu=True, out_relu_mask=torch.randn(6, 4, device=DEVICE))
    with pytest.raises(ValueError, match="at most one of"):
        gemm.matmul(a, b, a_relu_mask=torch.randn(6, 5, device=DEVICE), b_relu_mask=torch.randn(5, 4, device=DEVICE))
    with pytest.raises(ValueError, match=r"out_relu_mask \(4, 6\) .* does not match the product \(6, 4\)"):
        gemm.matmul(a, b, out_relu_mask=torch.randn(4, 6, device=DEVICE))
    mask = torch.randn(6, 4, device=DEVICE)
    assert_close(gemm.matmul(a, b, out_relu_mask=mask), float64_product(a, b).masked_fill(mask.cpu() <= 0, 0), "float32")
