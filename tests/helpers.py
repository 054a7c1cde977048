"""Shared test helpers: tolerances, the kernel device, operand layouts, a float64 oracle, launch
grids, torch's fp32 matmul setting, a tensor that looks like CUDA."""

import contextlib

import torch

# Norm-relative error bounds ||actual - reference|| / ||reference|| against a float64 reference.
# fp32 dots are exact in the interpreter and IEEE on the GPU unless tf32 is asked for.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "tf32": 3e-3, "float16": 3e-3, "bfloat16": 2e-2}
# Spacing of the 16-bit formats' subnormals: rounding a result that small to the output dtype
# costs up to this much whatever its relative size (a one-element loss of 3e-6 in float16: 1%).
SUBNORMAL_SPACING = {"float16": 2.0**-24, "bfloat16": 2.0**-133}


def kernel_device() -> str:
    """Where the Triton kernels run in this session: compiled on CUDA, else interpreted on CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def torch_fp32_setting(value: str):
    """torch's fp32 matmul precision ("ieee" or "tf32") inside the block, restored after it."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = value
    try:
        yield
    finally:
        matmul.fp32_precision = saved


class LooksCuda(torch.Tensor):
    """A CPU tensor that reports itself as CUDA: dispatch rules, tested without a GPU."""

    @property
    def is_cuda(self):
        return True


def assert_close(actual: torch.Tensor, reference: torch.Tensor, precision: str, scale: float | None = None) -> None:
    """`actual` matches a float64 `reference`: same shape, NaN and +-Inf in the same places, and
    the finite entries within the norm-relative bound of `precision` (plus, for 16-bit outputs,
    one subnormal spacing per element in norm: the rounding of results near zero). `scale`, when
    given, replaces the reference's norm as what the bound is relative to: the size of the terms
    a result was computed from, where they may cancel."""
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    actual = actual.detach().double().cpu()
    reference = reference.detach().double().cpu()
    assert torch.equal(actual.isnan(), reference.isnan()), "NaN positions differ"
    infinite = reference.isinf()
    assert torch.equal(actual.isinf(), infinite), "Inf positions differ"
    assert torch.equal(actual[infinite], reference[infinite]), "Inf signs differ"
    finite = reference.isfinite()
    error = (actual[finite] - reference[finite]).norm()
    scale = reference[finite].norm().clamp_min(1e-30) if scale is None else torch.tensor(max(scale, 1e-30))
    floor = SUBNORMAL_SPACING.get(precision, 0.0) * float(finite.sum()) ** 0.5
    assert error <= TOLERANCE[precision] * scale + floor, f"relative error {error / scale:.3e} > {TOLERANCE[precision]}"


def make_operand(rows: int, cols: int, dtype, device, layout: str = "contiguous") -> torch.Tensor:
    """A fresh random (rows, cols) tensor stored as `layout`: contiguous, transposed (a view of a
    (cols, rows) tensor) or sliced (every other column of a wider tensor)."""
    if layout == "contiguous":
        return torch.randn(rows, cols, dtype=dtype, device=device)
    if layout == "transposed":
        return torch.randn(cols, rows, dtype=dtype, device=device).T
    if layout == "sliced":
        return torch.randn(rows, 2 * cols + 1, dtype=dtype, device=device)[:, 1::2]
    raise ValueError(layout)


def relu_matmul_float64(a: torch.Tensor, b: torch.Tensor, grad_out: torch.Tensor, relu: bool = True,
                        mask_from: torch.Tensor | None = None):
    """Output and gradients of relu(a @ b) (or a @ b) by torch autograd in float64 on the CPU.

    With `mask_from` (the output under test) the gradients use relu'(mask_from) instead of the
    float64 output's: inputs rounded to tf32 or bf16 flip the sign of near-zero pre-activations,
    and each flip moves a whole gradient entry, which would swamp the backward GEMM's own error.
    """
    a64, b64 = (t.detach().double().cpu().requires_grad_() for t in (a, b))
    out = a64 @ b64
    if relu:
        out = torch.relu(out)
    grad = grad_out.detach().double().cpu()
    if relu and mask_from is not None:
        grad = grad.masked_fill(mask_from.detach().cpu() <= 0, 0)
        (a64 @ b64).backward(grad)
    else:
        out.backward(grad)
    return out.detach(), a64.grad, b64.grad


def record_grids(monkeypatch, *launchers) -> list:
    """Launch the kernels of `launchers` (`kernels.launch.Launcher`s) as usual, recording each
    launch's grid, in launch order."""
    grids = []

    class RecordingGrid:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            grids.append(grid)
            return self.kernel[grid]

    for launcher in launchers:
        monkeypatch.setattr(launcher, "kernel", RecordingGrid(launcher.kernel))
    return grids


def torch_mlp_twin(model) -> torch.nn.Sequential:
    """nn.Sequential(nn.Linear, nn.ReLU, ..., nn.Linear) in float64 on the CPU with the
    parameters of `model` (a fusedgrad.nn.MLP): the eager oracle of the MLP tests."""
    layers = []
    for index, layer in enumerate(model):
        twin = torch.nn.Linear(layer.in_features, layer.out_features, layer.bias is not None, dtype=torch.float64)
        twin.load_state_dict({name: t.detach().double().cpu() for name, t in layer.state_dict().items()})
        layers += [twin] + ([torch.nn.ReLU()] if index < len(model) - 1 else [])
    return torch.nn.Sequential(*layers)
