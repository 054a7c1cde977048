"""Compile every Triton kernel for Hopper (sm_90) ahead of time, without a GPU.

    python bench/compile_check.py                # exit status 1 if any variant fails to compile
    python bench/compile_check.py --candidates   # also every autotuning candidate, with resources
    python bench/compile_check.py --ptx-digest   # digests of each variant's PTX, to diff refactors

Triton's interpreter runs kernels on the CPU but skips the compiler, so it cannot catch what
only the GPU toolchain rejects (tl.dot shape rules, type errors in constexpr branches, pointer
casts). Triton ships ptxas, so every kernel variant fusedgrad launches is compiled here to a
sm_90 cubin. The check also reads the PTX: 16-bit (and 3xTF32) GEMM tiles must use Hopper's
wgmma, split-K must synchronise through an acq_rel atomic, TMA variants must use bulk tensor
copies; and the TTGIR of the transposed grad_b launch must keep wgmma in flight. Resources
(registers, local memory for spills, shared memory) come from Triton's bundled cuobjdump.
Run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys


HOPPER_SHARED_BYTES = 227 * 1024  # the most shared memory one program may use on sm_90
SPILL_LIMIT_BYTES = 128  # an autotuning candidate spilling more than this a thread fails the check


def _resources(compiled) -> dict:
    """Registers, local and stack bytes per thread from cuobjdump (ptxas puts spills in either),
    and a line of text with them and Triton's shared memory."""
    import subprocess
    import tempfile

    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True).stdout
    found = {name: int(value) for name, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", usage)}
    found["text"] = (f"{found.get('REG', '?')} registers, {found.get('LOCAL', '?')} B local, "
                     f"{found.get('STACK', '?')} B stack, {compiled.metadata.shared // 1024} KiB shared")
    return found


def normalized_ptx(ptx: str) -> str:
    """The code in `ptx`, blind to what a pure refactor of the source changes but the code does
    not: debug lines (`.file`, `.loc`, the `$L__tmp` labels they point at, and the debug
    sections, which carry source paths and line numbers), the register declarations, and the numbering of parameters, registers and labels
    (the kernel's header is left out and each name is renamed by order of first use, so
    dropping an unused argument changes nothing)."""
    body = ptx.split(".section\t.debug", 1)[0].split(".section .debug", 1)[0]
    entry = body.find(".entry")
    if entry >= 0:  # skip the parameter list: from `.entry name(` to its closing `)`
        body = body[:entry] + body[body.index(")", entry) + 1:]
    lines = [line.split("//")[0].rstrip() for line in body.splitlines()
             if not line.strip().startswith((".file", ".loc", "//", ".reg", "$L__tmp"))]
    renamed: dict[str, str] = {}
    # Parameters, virtual registers (%r12, %rd3, %f7, %p1, ...) and labels, renamed in order of
    # first use: their numbers shift when the front end emits the same code in another order.
    return re.sub(r"\w+_param_\d+|%[a-z]+\d+|\$L__\w+",
                  lambda m: renamed.setdefault(m.group(0), f"{m.group(0)[:2]}#{len(renamed)}"), "\n".join(lines))


def ptx_digests(ptx: str) -> tuple[str, str]:
    """Short digests of `normalized_ptx(ptx)` (equal: the same code) and of its instruction mix,
    how often each opcode occurs (equal: the same instructions, perhaps in another order, as
    when a shorter parameter list makes the compiler schedule the same code differently)."""
    import collections
    import hashlib
    code = normalized_ptx(ptx)
    mix = collections.Counter(line.split()[1] if line.split()[0].startswith("@") else line.split()[0]
                              for line in code.splitlines() if line.strip() and line.strip()[0] not in ".${})")
    return tuple(hashlib.sha256(text.encode()).hexdigest()[:16] for text in (code, str(sorted(mix.items()))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", action="store_true",
                        help="also compile every autotuning candidate of a 4096^3 product (forward and "
                             "both gated backward layouts; the heuristic's tile also with the fused "
                             "step's epilogues) and report registers, spills and shared memory")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each variant's resources")
    parser.add_argument("--ptx-digest", action="store_true",
                        help="print `digest CODE MIX name` for every variant (see `ptx_digests`): equal "
                             "digests before and after a refactor mean the same code, or the same instructions")
    parser.add_argument("--dump-ptx", metavar="DIR", help="write each variant's normalized PTX to DIR/<name>.ptx")
    parser.add_argument("--shard", metavar="I/N", default="0/1",
                        help="compile only variants I, I + N, I + 2N, ... (run N processes at once: "
                             "compiling is CPU-bound and single-threaded)")
    args = parser.parse_args(argv)
    shard, shards = (int(part) for part in args.shard.split("/"))
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check.py compiles kernels: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    import torch
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    from fusedgrad.kernels import cross_entropy, gemm, mse_loss, reduce, sgd, tuning

    target = GPUTarget("cuda", 90, 32)

    def build(kernel, constexprs: dict, types, options: dict, aligned_sizes: bool = False):
        """Compile for sm_90 as a launch would: pointers 16-byte aligned (torch's allocations
        are), and with `aligned_sizes` the sizes and strides multiples of 16 too (a 4096^3
        product), which is what lets Triton vectorise loads and pipeline them with cp.async."""
        names = list(inspect.signature(kernel.fn).parameters)
        signature = {name: "constexpr" if name in constexprs else types(name) for name in names}
        aligned = [(i,) for i, name in enumerate(names) if name not in constexprs and (
            name.endswith("_ptr") or aligned_sizes and (name.startswith("stride") or name in "MNK"))]
        # A tuple argument (the SGD kernel's tensors) has a type per element; its pointers are aligned.
        aligned += [(i, j) for i, name in enumerate(names) if isinstance(signature[name], tuple)
                    for j, element in enumerate(signature[name]) if element.startswith("*")]
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(names.index(k),): v for k, v in constexprs.items()},
                           attrs={path: [["tt.divisibility", 16]] for path in aligned})
        return triton_compile(source, target=target, options=options)

    failures, checked, seen = [], 0, 0

    def check(name: str, kernel, constexprs: dict, types, expect_in_ptx: str | None = None,
              options: dict | None = None, report: bool = False, aligned_sizes: bool = False,
              expect_in_ttgir: str | None = None, max_spill_bytes: int | None = None) -> None:
        nonlocal checked, seen
        seen += 1
        if (seen - 1) % shards != shard:
            return  # another shard's
        checked += 1
        kernel, constexprs = launched(kernel, constexprs)
        try:
            compiled = build(kernel, constexprs, types, options or {}, aligned_sizes)
        except Exception as error:  # report every failing variant, not just the first
            failures.append(f"{name}: {type(error).__name__}: {str(error)[-1500:]}")
            return
        if expect_in_ptx and expect_in_ptx not in compiled.asm["ptx"]:
            failures.append(f"{name}: compiled, but `{expect_in_ptx}` is not in its PTX")
        if expect_in_ttgir and not re.search(expect_in_ttgir, compiled.asm["ttgir"]):
            failures.append(f"{name}: compiled, but /{expect_in_ttgir}/ is not in its TTGIR")
        if compiled.metadata.shared > HOPPER_SHARED_BYTES:
            failures.append(f"{name}: needs {compiled.metadata.shared // 1024} KiB of shared memory, "
                            f"more than Hopper's {HOPPER_SHARED_BYTES // 1024} KiB: it cannot launch")
        resources = _resources(compiled) if report or args.verbose or max_spill_bytes is not None else None
        if max_spill_bytes is not None and max(resources["LOCAL"], resources["STACK"]) > max_spill_bytes:
            failures.append(f"{name}: spills {max(resources['LOCAL'], resources['STACK'])} bytes a thread "
                            f"(more than {max_spill_bytes}): not a candidate worth timing")
        if report or args.verbose:
            print(f"{name}: {resources['text']}")
        if args.ptx_digest:
            print("digest {} {} {}".format(*ptx_digests(compiled.asm["ptx"]), name))
        if args.dump_ptx:
            os.makedirs(args.dump_ptx, exist_ok=True)
            with open(os.path.join(args.dump_ptx, re.sub(r"[^\w.=-]+", "_", name) + ".ptx"), "w") as file:
                file.write(normalized_ptx(compiled.asm["ptx"]))

    def launched(kernel, constexprs: dict):
        """(kernel, meta-parameters) as `gemm` launches them: a GEMM without a bias, row sums,
        momentum buffer, scalar tensors beyond the rate or update flags takes
        `_plain_matmul_kernel`, whose signature lacks those arguments."""
        if kernel is not gemm._matmul_kernel or not (
                all(constexprs.get(name, 0) is None for name in gemm.FULL_ONLY_POINTERS)
                and not any(constexprs[name] for name in gemm.FULL_ONLY_FLAGS)):
            return kernel, constexprs
        names = inspect.signature(gemm._plain_matmul_kernel.fn).parameters
        return gemm._plain_matmul_kernel, {name: value for name, value in constexprs.items() if name in names}

    def accumulator(dtype):
        return "fp64" if dtype == "fp64" else "fp32"

    def gemm_types(dtype):
        def types(name):
            if name in ("partials_ptr", "reduce_ptr", "reduce_out_ptr", "lr_ptr", "workspace_ptr", "momentum_ptr",
                        "keep_ptr", "decay_ptr"):
                return f"*{accumulator(dtype)}"
            if name == "counter_ptr":
                return "*i32"
            if name.endswith("_ptr"):
                return f"*{dtype}"
            return "fp32" if name in ("scale", "reduce_scale", "lr", "momentum", "keep", "weight_decay") else "i32"
        return types

    def gemm_constexprs(epilogue, mask_operand, precision, block_m, block_n, block_k, split_k=1,
                        tma=False, a_t=False, b_t=False, persistent=False, gate_t=False, reduce=None, dtype="fp32",
                        bias=False, row_sums=False, momentum=False, fresh=False, rule_flags=False,
                        lr_from_tensor=True):
        """The meta-parameters of a launch as fusedgrad makes it, and None for the pointers it
        does not pass: the fused step's ReLU-mask GEMM folds the loss partials (`reduce`, by
        default for "relu_mask"), its SGD GEMMs read the rate from a tensor; linear's forward
        adds a `bias`, its weight gradient takes A's `row_sums`; the MLP step's SGD epilogue a
        momentum buffer (`momentum`, `fresh`) and the other settings (`rule_flags`: weight
        decay, Nesterov, maximize), their scalars from tensors in fp64."""
        reduce = epilogue == "relu_mask" if reduce is None else reduce
        present = {"c_ptr": epilogue != "sgd", "gate_ptr": mask_operand != gemm.NO_MASK,
                   "aux_ptr": epilogue in ("relu_mask", "squared_error", "cross_entropy", "sgd"),
                   "partials_ptr": epilogue in ("squared_error", "cross_entropy"),
                   "reduce_ptr": reduce, "reduce_out_ptr": reduce,
                   "lr_ptr": epilogue == "sgd" and (lr_from_tensor or dtype == "fp64"), "workspace_ptr": split_k > 1, "counter_ptr": split_k > 1,
                   "bias_ptr": bias, "row_sums_ptr": row_sums, "buffer_ptr": momentum,
                   "momentum_ptr": momentum and dtype == "fp64", "keep_ptr": momentum and dtype == "fp64" and not fresh,
                   "decay_ptr": rule_flags and dtype == "fp64"}
        return dict({name: None for name, there in present.items() if not there},
                    MASK_OPERAND=mask_operand, EPILOGUE=epilogue, INPUT_PRECISION=precision,
                    BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, SPLIT_K=split_k,
                    TMA=tma, A_STORED_T=a_t, B_STORED_T=b_t, GATE_STORED_T=gate_t, PERSISTENT=persistent,
                    ACC_DTYPE=tl.float64 if dtype == "fp64" else tl.float32, BF16_AS_FP32=False,
                    FRESH=fresh, WEIGHT_DECAY=rule_flags, NESTEROV=rule_flags and momentum, MAXIMIZE=rule_flags)

    def tma_types(dtype, constexprs):
        """Pointer types, but a, b and the gate as tensor descriptors of their storage blocks."""
        bm, bn, bk = constexprs["BLOCK_M"], constexprs["BLOCK_N"], constexprs["BLOCK_K"]
        blocks = {"a_ptr": [bk, bm] if constexprs["A_STORED_T"] else [bm, bk],
                  "b_ptr": [bn, bk] if constexprs["B_STORED_T"] else [bk, bn],
                  "gate_ptr": [bm, bk] if constexprs["MASK_OPERAND"] == gemm.MASK_A else [bk, bn]}
        if constexprs["GATE_STORED_T"]:
            blocks["gate_ptr"] = blocks["gate_ptr"][::-1]
        pointers = gemm_types(dtype)

        def types(name):
            if name in blocks:
                return f"tensordesc<{dtype}{blocks[name]}>"
            return pointers(name)
        return types

    for dtype, precision in (("fp32", "ieee"), ("fp32", "tf32"), ("bf16", None), ("fp16", None), ("fp64", None)):
        types = gemm_types(dtype)
        block_k = {"fp32": 32, "fp64": 16}.get(dtype, 64)
        tensor_cores = dtype in ("bf16", "fp16")
        # The (epilogue, masked operand) pairs fusedgrad launches, on a small tile and a large one.
        used = [("none", gemm.NO_MASK), ("relu", gemm.NO_MASK), ("none", gemm.MASK_A), ("none", gemm.MASK_B),
                ("relu_mask", gemm.NO_MASK), ("squared_error", gemm.NO_MASK), ("sgd", gemm.NO_MASK)]
        # (fp64, a checking path, gets one large tile: it fits in shared memory.)
        for index, (epilogue, mask_operand) in enumerate(used):
            block_m = block_n = 128 if index % 2 and (dtype != "fp64" or index == 1) else 16
            wgmma = "wgmma" if tensor_cores and block_m == 128 else None
            check(f"gemm {dtype}/{precision} {epilogue} mask={mask_operand} {block_m}x{block_n}",
                  gemm._matmul_kernel, gemm_constexprs(epilogue, mask_operand, precision, block_m, block_n, block_k,
                                                       dtype=dtype),
                  types, wgmma)
        # The autograd ops' gated product (the product masked by relu'(aux), no loss to fold),
        # which their double backward launches.
        for block in (16,) if dtype == "fp64" else (16, 128):
            check(f"gemm {dtype}/{precision} relu_mask mask=0 {block}x{block} autograd (no reduce)",
                  gemm._matmul_kernel, gemm_constexprs("relu_mask", gemm.NO_MASK, precision, block, block, block_k,
                                                       reduce=False, dtype=dtype),
                  types, "wgmma" if tensor_cores and block == 128 else None)
        # linear: the forward with a bias (and ReLU), the weight gradient with the bias gradient
        # (A's row sums), gated (after a ReLU) or not.
        for epilogue, mask_operand, extra in (
                ("none", gemm.NO_MASK, dict(bias=True)), ("relu", gemm.NO_MASK, dict(bias=True)),
                ("none", gemm.MASK_A, dict(row_sums=True)), ("none", gemm.NO_MASK, dict(row_sums=True)),
                # the MLP step: the loss after a bias; updates with the bias gradient, every rule
                ("squared_error", gemm.NO_MASK, dict(bias=True)), ("cross_entropy", gemm.NO_MASK, dict(bias=True)),
                ("sgd", gemm.NO_MASK, dict(row_sums=True, lr_from_tensor=False)),
                ("sgd", gemm.NO_MASK, dict(row_sums=True, momentum=True, fresh=True, lr_from_tensor=False)),
                ("sgd", gemm.NO_MASK, dict(momentum=True, rule_flags=True, lr_from_tensor=False)),
                ("sgd", gemm.NO_MASK, dict(row_sums=True, rule_flags=True))):
            # one tile each: the large one (wgmma) for 16-bit inputs, else the small one; the plain
            # epilogues above cover both tiles
            for block in (128,) if tensor_cores else (16,):
                check(f"gemm {dtype}/{precision} {epilogue} mask={mask_operand} {block}x{block} linear "
                      f"{' '.join(extra)}", gemm._matmul_kernel,
                      gemm_constexprs(epilogue, mask_operand, precision, block, block, block_k, dtype=dtype, **extra),
                      (lambda n, t=types: "*i64" if n == "aux_ptr" else t(n)) if epilogue == "cross_entropy" else types,
                      "wgmma" if tensor_cores and block == 128 else None)
        # Split-K (partial tiles, an acq_rel tile counter, the epilogue in the last program).
        for epilogue, mask_operand in (("relu", gemm.NO_MASK), ("none", gemm.MASK_B), ("sgd", gemm.NO_MASK)):
            check(f"gemm {dtype}/{precision} {epilogue} mask={mask_operand} 16x16 split-K 4",
                  gemm._matmul_kernel, gemm_constexprs(epilogue, mask_operand, precision, 16, 16, 64, 4, dtype=dtype),
                  types, "atom.global.gpu.acq_rel")
        # SGD over the tutorial's two parameters (tuples of two pointers, three block starts)
        # and over a full launch of MAX_TENSORS, its scalars from tensors or fp32 arguments: plain
        # in every combination, with all settings in most; each other form of momentum once.
        def sgd_cases():
            ways = ((True,), (True, False))[dtype != "fp64"]
            for rule in ("plain", "all"):
                for tensors in (2,) if dtype == "fp64" else (2, sgd.MAX_TENSORS):
                    for scalars_from_ptrs in ways if rule == "plain" or tensors == 2 else ways[-1:]:
                        yield rule, tensors, scalars_from_ptrs
            for rule in ("fresh momentum", "momentum", "nesterov"):
                yield rule, 2, ways[-1]

        for rule, tensors, scalars_from_ptrs in sgd_cases():
            sgd_types = {"param_ptrs": (f"*{dtype}",) * tensors, "grad_ptrs": (f"*{dtype}",) * tensors,
                         "buffer_ptrs": (f"*{dtype}",) * tensors,
                         **{f"{name}_ptr": f"*{accumulator(dtype)}" for name in ("lr", "momentum", "keep", "decay")},
                         "block_starts": ("i32",) * (tensors + 1), "numels": ("i32",) * tensors,
                         **{name: "fp32" for name in ("lr", "momentum", "keep", "weight_decay")}}
            absent = {} if rule != "plain" else {"buffer_ptrs": None}
            if not scalars_from_ptrs:  # fp32 arguments, as every dtype but fp64 takes them
                absent.update(lr_ptr=None, momentum_ptr=None, keep_ptr=None, decay_ptr=None)
            check(f"sgd {dtype} {tensors} tensors, {rule}, scalars from {'tensors' if scalars_from_ptrs else 'floats'}",
                  sgd._sgd_kernel, dict(BLOCK=sgd.BLOCK, ACC_DTYPE=tl.float64 if dtype == "fp64" else tl.float32,
                                        FRESH=rule == "fresh momentum", WEIGHT_DECAY=rule in ("nesterov", "all"),
                                        NESTEROV=rule == "nesterov", MAXIMIZE=rule == "all", **absent),
                  sgd_types.__getitem__)
        for block_c in (16, cross_entropy.MAX_BLOCK):  # cross-entropy over class indices, gradient in place
            check(f"cross entropy {dtype} BLOCK_C={block_c}", cross_entropy._cross_entropy_kernel,
                  dict(BLOCK_C=block_c, ACC_DTYPE=tl.float64 if dtype == "fp64" else tl.float32),
                  lambda n, d=dtype: {"logits_ptr": f"*{d}", "target_ptr": "*i64", "losses_ptr": f"*{accumulator(d)}",
                                      "scale": "fp32"}.get(n, "i32"))
        for single_program in (True, False):  # out: the loss (input's dtype), or partials (the accumulator's)
            out = f"*{dtype}" if single_program else f"*{accumulator(dtype)}"
            check(f"squared error {dtype} {'one program' if single_program else 'partials'}",
                  mse_loss._squared_error_kernel,
                  dict(BLOCK=mse_loss.BLOCK, ACC_DTYPE=tl.float64 if dtype == "fp64" else tl.float32),
                  lambda n, d=dtype, out=out: f"*{d}" if n.endswith("_ptr") and n != "out_ptr" else
                  (out if n == "out_ptr" else "fp32" if n.startswith("scale") else "i32"))
    # grad_b launched transposed (`gemm.matmul` with b_relu_mask): grad_out.T gated as A (A and its
    # gate column-major, B row-major), C written transposed. The reason for the transpose: wgmma
    # takes the gated A from registers and stays in flight (a wait with pendings > 0); a gated B
    # waits for every wgmma. If a Triton release changes that, this check says so.
    for dtype, precision, block_k in (("bf16", None, 64), ("fp16", None, 64), ("fp32", "tf32", 32)):
        constexprs = gemm_constexprs("none", gemm.MASK_A, precision, 128, 128, block_k)
        constexprs.update(stride_am=1, stride_gate_0=1, stride_bn=1, stride_cm=1)
        check(f"gemm {dtype}/{precision} grad_b transposed (gated A) 128x128x{block_k}: wgmma in flight",
              gemm._matmul_kernel, constexprs, gemm_types(dtype), options=dict(num_warps=8, num_stages=3),
              aligned_sizes=True, expect_in_ttgir=r"warp_group_dot_wait[^{]*\{pendings = [1-9]")
    # ... and with TMA loads, A and the gate described by their transposes, one program per tile
    # and persistent.
    for persistent in (False, True):
        constexprs = gemm_constexprs("none", gemm.MASK_A, None, 128, 128, 64, tma=True, a_t=True, gate_t=True,
                                     persistent=persistent)
        constexprs.update(stride_am=1, stride_gate_0=1, stride_bn=1, stride_cm=1)
        check(f"gemm bf16 grad_b transposed (gated A) 128x128x64 TMA{' persistent' if persistent else ''}: "
              f"wgmma in flight", gemm._matmul_kernel, constexprs, tma_types("bf16", constexprs),
              "cp.async.bulk.tensor", options=dict(num_warps=8, num_stages=3), aligned_sizes=True,
              expect_in_ttgir=r"warp_group_dot_wait[^{]*\{pendings = [1-9]")
    # TMA loads (tensor descriptors): forward, and grad_w1's shape (a column-major A, gated B).
    for dtype, precision, block_k in (("bf16", None, 64), ("fp32", "tf32", 32)):
        for epilogue, mask_operand, a_t in (("relu", gemm.NO_MASK, False), ("none", gemm.MASK_B, True)):
            constexprs = gemm_constexprs(epilogue, mask_operand, precision, 128, 128, block_k, tma=True, a_t=a_t)
            check(f"gemm {dtype}/{precision} {epilogue} mask={mask_operand} 128x128 TMA a_t={a_t}",
                  gemm._matmul_kernel, constexprs, tma_types(dtype, constexprs), "cp.async.bulk.tensor",
                  options=dict(num_warps=8, num_stages=3))
    # Persistent programs (a tile loop around the tile body; with TMA flattened, so the next
    # tile's loads overlap the epilogue) in every epilogue. TMA ones are compiled as launched
    # (aligned sizes; tf32 with a column-major B, `tuning.tma_suits`) and must keep wgmma in
    # flight.
    in_flight = r"warp_group_dot_wait[^{]*\{pendings = [1-9]"
    for dtype, precision, block_k in (("bf16", None, 64), ("fp32", "tf32", 32), ("fp32", "ieee", 32)):
        for epilogue, mask_operand, tma in (("relu", gemm.NO_MASK, False), ("relu", gemm.NO_MASK, True),
                                            ("none", gemm.MASK_A, True), ("squared_error", gemm.NO_MASK, False),
                                            ("relu_mask", gemm.NO_MASK, False), ("relu_mask", gemm.NO_MASK, True),
                                            ("sgd", gemm.NO_MASK, False), ("sgd", gemm.NO_MASK, True)):
            b_t = tma and precision == "tf32"
            constexprs = gemm_constexprs(epilogue, mask_operand, precision, 128, 128, block_k, tma=tma, b_t=b_t,
                                         persistent=True)
            if tma:
                constexprs.update(stride_ak=1, stride_cn=1, **({"stride_bk": 1} if b_t else {"stride_bn": 1}),
                                  **({"stride_gate_1": 1} if mask_operand else {}))
            check(f"gemm {dtype}/{precision} {epilogue} mask={mask_operand} 128x128 persistent{' TMA' if tma else ''}",
                  gemm._matmul_kernel, constexprs, tma_types(dtype, constexprs) if tma else gemm_types(dtype),
                  "cp.async.bulk.tensor" if tma else None, options=dict(num_warps=8, num_stages=3),
                  aligned_sizes=tma, expect_in_ttgir=in_flight if tma and precision != "ieee" else None)
    # linear's launches as the tuner may choose them: TMA loads, persistent; the weight gradient
    # launched transposed (A and its gate column-major), keeping wgmma in flight while it sums A.
    for persistent in (False, True):
        constexprs = gemm_constexprs("relu", gemm.NO_MASK, None, 128, 128, 64, tma=True, b_t=True, persistent=persistent,
                                     bias=True, dtype="bf16")
        constexprs.update(stride_ak=1, stride_bk=1, stride_cn=1)
        check(f"gemm bf16 linear forward bias relu 128x128x64 TMA{' persistent' if persistent else ''}",
              gemm._matmul_kernel, constexprs, tma_types("bf16", constexprs), "cp.async.bulk.tensor",
              options=dict(num_warps=8, num_stages=3), aligned_sizes=True)
        constexprs = gemm_constexprs("none", gemm.MASK_A, None, 128, 128, 64, tma=True, a_t=True, gate_t=True,
                                     persistent=persistent, row_sums=True, dtype="bf16")
        constexprs.update(stride_am=1, stride_gate_0=1, stride_bn=1, stride_cn=1)
        check(f"gemm bf16 linear weight and bias gradient 128x128x64 TMA{' persistent' if persistent else ''}",
              gemm._matmul_kernel, constexprs, tma_types("bf16", constexprs), "cp.async.bulk.tensor",
              options=dict(num_warps=8, num_stages=3), aligned_sizes=True, expect_in_ttgir=in_flight)
    # 3xTF32: three tf32 products per fp32 dot, on tensor cores.
    check("gemm fp32/tf32x3 relu 128x128", gemm._matmul_kernel,
          gemm_constexprs("relu", gemm.NO_MASK, "tf32x3", 128, 128, 32), gemm_types("fp32"), "wgmma")
    for dtype in ("fp32", "fp64"):
        check(f"sum partials {dtype}", reduce._sum_partials_kernel, dict(BLOCK=1024),
              lambda n, d=dtype: f"*{d}" if n.endswith("_ptr") else "i32")

    if args.candidates:
        for dtype, torch_dtype, precision in (("bf16", torch.bfloat16, None), ("fp32", torch.float32, "tf32"),
                                              ("fp32", torch.float32, "ieee")):
            for index, config in enumerate(tuning.candidates(4096, 4096, 4096, torch_dtype, precision, 132, tma=True)):
                tile = {k: config.meta[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}
                options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
                tma, persistent = config.TMA, config.PERSISTENT
                b_t = tma and precision == "tf32"  # the layout tf32 TMA candidates are offered for
                # The variants launched: the forward (ReLU); grad_a, gated A row-major; and grad_b,
                # launched transposed: gated A column-major, B row-major, C column-major.
                b_layout = {"stride_bk": 1} if b_t else {"stride_bn": 1}
                variants = {"relu": ("relu", gemm.NO_MASK, dict(stride_ak=1, stride_cn=1, **b_layout)),
                            "grad_a": ("none", gemm.MASK_A, dict(stride_ak=1, stride_gate_1=1, stride_cn=1, **b_layout)),
                            "grad_b.T": ("none", gemm.MASK_A, dict(stride_am=1, stride_gate_0=1, stride_cm=1, stride_bn=1))}
                if index == 0:  # the heuristic's tile, which the fused step's epilogues also get
                    variants.update({
                        "step squared_error": ("squared_error", gemm.NO_MASK, dict(stride_ak=1, stride_bn=1, stride_cn=1, stride_aux_n=1)),
                        "step relu_mask": ("relu_mask", gemm.NO_MASK, dict(stride_ak=1, stride_bk=1, stride_cn=1, stride_aux_n=1)),
                        "step sgd": ("sgd", gemm.NO_MASK, dict(stride_am=1, stride_bn=1, stride_cn=1, stride_aux_n=1))})
                for variant, (epilogue, mask_operand, strides) in variants.items():
                    if variant == "grad_b.T" and b_t:
                        continue  # tf32 TMA is not offered for a row-major B (`tuning.tma_suits`)
                    a_t = "stride_am" in strides
                    constexprs = gemm_constexprs(epilogue, mask_operand, precision, *tile.values(), tma=tma,
                                                 a_t=tma and a_t, b_t=b_t, gate_t=tma and a_t, persistent=persistent)
                    constexprs.update(strides)
                    types = tma_types(dtype, constexprs) if tma else gemm_types(dtype)
                    check(f"candidate {dtype}/{precision} {variant} "
                          f"{tile['BLOCK_M']}x{tile['BLOCK_N']}x{tile['BLOCK_K']} w{options['num_warps']} "
                          f"s{options['num_stages']}{' TMA' if tma else ''}{' persistent' if persistent else ''}",
                          gemm._matmul_kernel, constexprs, types, options=options, report=True,
                          aligned_sizes=True, max_spill_bytes=SPILL_LIMIT_BYTES)

    for failure in failures:
        print("FAIL", failure)
    print(f"{checked - len(failures)} of {checked} kernel variants compiled for sm_90")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
