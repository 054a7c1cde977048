"""Compile every Triton kernel for Hopper (sm_90) ahead of time, without a GPU.

    python bench/compile_check.py            # exit status 1 if any variant fails to compile

Triton's interpreter runs kernels on the CPU but skips the compiler, so it cannot catch what
only the GPU toolchain rejects (tl.dot shape rules, type errors in constexpr branches, pointer
casts). Triton ships ptxas, so every kernel variant fusedgrad launches is compiled here to a
sm_90 cubin. The check also reads the PTX: 16-bit GEMM tiles must use Hopper's wgmma.
Run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import inspect
import os
import sys


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check.py compiles kernels: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    from fusedgrad.kernels import gemm, mse_loss, reduce, sgd

    target = GPUTarget("cuda", 90, 32)

    def build(kernel, constexprs: dict, types) -> str:
        names = list(inspect.signature(kernel.fn).parameters)
        signature = {name: "constexpr" if name in constexprs else types(name) for name in names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(names.index(k),): v for k, v in constexprs.items()})
        return triton_compile(source, target=target).asm["ptx"]

    failures, checked = [], 0

    def check(name: str, kernel, constexprs: dict, types, expect_in_ptx: str | None = None) -> None:
        nonlocal checked
        checked += 1
        try:
            ptx = build(kernel, constexprs, types)
        except Exception as error:  # report every failing variant, not just the first
            failures.append(f"{name}: {type(error).__name__}: {str(error)[:500]}")
            return
        if expect_in_ptx and expect_in_ptx not in ptx:
            failures.append(f"{name}: compiled, but `{expect_in_ptx}` is not in its PTX")

    for dtype, precision in (("fp32", "ieee"), ("fp32", "tf32"), ("bf16", None), ("fp16", None)):
        def types(name, dtype=dtype):
            if name in ("partials_ptr", "reduce_ptr", "reduce_out_ptr", "lr_ptr"):
                return "*fp32"
            if name.endswith("_ptr"):
                return f"*{dtype}"
            return "fp32" if name in ("scale", "reduce_scale", "lr") else "i32"

        # The (epilogue, masked operand) pairs fusedgrad launches, on a small tile and a large one.
        used = [("none", gemm.NO_MASK), ("relu", gemm.NO_MASK), ("none", gemm.MASK_A), ("none", gemm.MASK_B),
                ("relu_mask", gemm.NO_MASK), ("squared_error", gemm.NO_MASK), ("sgd", gemm.NO_MASK)]
        for index, (epilogue, mask_operand) in enumerate(used):
            block_m = block_n = 128 if index % 2 else 16
            constexprs = dict(MASK_OPERAND=mask_operand, EPILOGUE=epilogue, LR_FROM_PTR=epilogue == "sgd",
                              REDUCE_PARTIALS=epilogue == "relu_mask", INPUT_PRECISION=precision,
                              BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=32 if dtype == "fp32" else 64, GROUP_M=8)
            wgmma = "wgmma" if dtype != "fp32" and block_m == 128 else None
            check(f"gemm {dtype}/{precision} {epilogue} mask={mask_operand} {block_m}x{block_n}",
                  gemm._matmul_kernel, constexprs, types, wgmma)
        check(f"sgd {dtype}", sgd._sgd_kernel, dict(LR_FROM_PTR=True, BLOCK=sgd.BLOCK),
              lambda n, d=dtype: "fp32" if n == "lr" else ("*fp32" if n == "lr_ptr" else f"*{d}" if n == "like_ptr" else "*i64"))
        check(f"squared error {dtype}", mse_loss._squared_error_kernel, dict(BLOCK=mse_loss.BLOCK),
              lambda n, d=dtype: f"*{d}" if n.endswith("_ptr") and n != "out_ptr" else
              ("*fp32" if n == "out_ptr" else "fp32" if n.startswith("scale") else "i32"))
    check("sum partials", reduce._sum_partials_kernel, dict(BLOCK=1024),
          lambda n: "*fp32" if n.endswith("_ptr") else ("fp32" if n == "scale" else "i32"))

    for failure in failures:
        print("FAIL", failure)
    print(f"{checked - len(failures)} of {checked} kernel variants compiled for sm_90")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
