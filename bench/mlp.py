"""MLP training-step throughput: fusedgrad's fused step and autograd layers against eager
`nn.Sequential` + `torch.optim.SGD` and `torch.compile` of that step.

    python bench/mlp.py                      # CUDA: width 1024, 4 layers, bias, batch 256; bf16 and tf32
    python bench/mlp.py --quick              # a small MLP, few steps (checks the path; CPU too)
    python bench/run.py --mlp ...            # the same

Every variant trains the same MLP (nn.Linear initialisation from one seed) on the same data
with SGD(momentum=0.9) on the mean squared error, for the same number of steps, so each
parameter's change over the run is compared with eager's (`rel_error_vs_eager`, the worst). Steps are timed in rounds with
CUDA events (wall clock on CPU), medians reported; the speedups are eager's and compile's
time per step over the variant's. Writes bench/out/mlp.json (see --json) and prints a table.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
import run  # noqa: E402  (time_variant: the tutorial benchmark's timing)

import fusedgrad  # noqa: E402
from fusedgrad.train_mlp import eager_twin  # noqa: E402

VARIANTS = ("eager", "compile", "fusedgrad autograd", "fusedgrad step")
PRECISIONS = ("bf16", "tf32", "ieee")
MOMENTUM, LR = 0.9, 1e-3


def build(variant: str, model: fusedgrad.nn.MLP, x: torch.Tensor, target: torch.Tensor):
    """(a step returning its loss, the parameters it trains) for `variant` on a copy of `model`."""
    ours = fusedgrad.nn.MLP(model.sizes, bias=model[0].bias is not None, device=x.device, dtype=x.dtype)
    ours.load_state_dict(model.state_dict())
    if variant in ("eager", "compile"):
        net = eager_twin(ours)
        optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(net(x), target)
            loss.backward()
            optimizer.step()
            return loss

        return (torch.compile(step) if variant == "compile" else step), list(net.parameters())
    if variant == "fusedgrad autograd":
        optimizer = fusedgrad.optim.SGD(ours.parameters(), lr=LR, momentum=MOMENTUM)

        def step():
            optimizer.zero_grad()
            loss = fusedgrad.mse_loss(ours(x), target)
            loss.backward()
            optimizer.step()
            return loss

        return step, list(ours.parameters())
    optimizer = torch.optim.SGD(ours.parameters(), lr=LR, momentum=MOMENTUM)
    return (lambda: ours.train_step(x, target, optimizer)), list(ours.parameters())


def measure(sizes: tuple[int, ...], batch: int, precision: str, variants, device: torch.device, schedule) -> list[dict]:
    dtype = common.set_precision(precision)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, sizes[0], generator=generator).to(device, dtype)
    target = torch.randn(batch, sizes[-1], generator=generator).to(device, dtype)
    torch.manual_seed(0)
    model = fusedgrad.nn.MLP(sizes, device=device, dtype=dtype)
    initial = [p.detach().clone() for p in model.parameters()]
    warmup, rounds, steps_per_round = schedule
    rows, trained = [], {}
    for variant in variants:
        common.log(f"mlp {sizes} batch {batch} {precision}: {variant}")
        row = dict(sizes=list(sizes), batch=batch, precision=precision, variant=variant)
        try:
            with fusedgrad.fp32_precision(common.kernel_fp32_precision(precision)):
                step, params = build(variant, model, x, target)
                row.update(run.time_variant(step, device, warmup, rounds, steps_per_round))
            row.pop("_timed_s", None)
            trained[variant] = params
        except Exception as error:  # a variant that fails is a row saying why, not a lost run
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        rows.append(row)
    for row in rows:
        base = {name: next((r for r in rows if r["variant"] == name and "us_per_step" in r), None)
                for name in ("eager", "compile")}
        if "us_per_step" in row:
            for name, other in base.items():
                row[f"speedup_vs_{name}"] = other["us_per_step"] / row["us_per_step"] if other else None
            if "eager" in trained and row["variant"] in trained:
                # of the parameters' change over the run (the parameters themselves barely move)
                row["rel_error_vs_eager"] = max(common.relative_error(mine.detach() - start, theirs.detach() - start)
                                                for mine, theirs, start
                                                in zip(trained[row["variant"]], trained["eager"], initial))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| MLP | batch | precision | variant | µs/step | vs eager | vs compile | rel. error vs eager |",
             "|---|---|---|---|---|---|---|---|"]
    cell = lambda value, form: "—" if value is None else format(value, form) + ("x" if form == ".2f" else "")
    for r in rows:
        if "error" in r:
            lines.append(f"| {'x'.join(map(str, r['sizes']))} | {r['batch']} | {r['precision']} | {r['variant']} | "
                         f"failed: {r['error']} | | | |")
            continue
        lines.append(f"| {'x'.join(map(str, r['sizes']))} | {r['batch']} | {r['precision']} | {r['variant']} | "
                     f"{r['us_per_step']:.1f} | {cell(r.get('speedup_vs_eager'), '.2f')} | "
                     f"{cell(r.get('speedup_vs_compile'), '.2f')} | {cell(r.get('rel_error_vs_eager'), '.1e')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, "mlp.json")
    parser.add_argument("--quick", action="store_true", help="a small MLP, few steps")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=4, help="layers")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["bf16", "tf32"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--device", type=torch.device, default=common.default_device())
    args = parser.parse_args(argv)
    device = args.device
    if args.quick:
        sizes, batch, schedule = (32, 64, 64, 16), 16, (2, 3, 5)
        precisions = ["ieee"] if device.type == "cpu" else args.precisions
    else:
        sizes, batch, schedule = (args.width,) * (args.depth + 1), args.batch, (5, 15, 50)
        precisions = args.precisions
    variants = [v for v in args.variants if device.type == "cuda" or v != "compile" or not args.quick]
    rows = []
    for precision in precisions:
        if device.type == "cpu" and precision != "ieee":
            continue  # 16-bit and tf32 products are GPU rows
        rows += measure(sizes, batch, precision, variants, device, schedule)
    with contextlib.suppress(Exception):
        common.set_precision("ieee")
    common.write_result(args.json, {"rows": rows}, device)
    print(markdown(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
