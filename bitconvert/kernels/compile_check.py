"""Compile every kernel for Hopper (sm_90) without a GPU and check what the interpreter cannot.

The interpreter runs code that the GPU compiler may reject, and says nothing about the code the
compiler makes. Triton's NVIDIA backend ships ``ptxas``, so the launch configurations used for
the 2B-4T shapes can be compiled to cubins on any machine. Beyond "it compiles", this checks:

* global loads (and the unpack's stores) are vectorized, i.e. contiguous accesses stay wide,
  and the unpack never goes through shared memory;
* the GEMV's K loop has no ``convert_layout`` (weight planes stay in registers as loaded);
* the GEMM's products are tensor-core instructions.

Run ``python -m bitconvert.kernels.compile_check [--quick]`` in a process where Triton is not
in interpreter mode (``TRITON_INTERPRET`` unset or 0). Exit status 0 when every check passes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from . import triton_linear, triton_unpack
from .backend import triton_interpreting

H100_SMS = 132
#: Arguments the launcher's specialization would see as 16-aligned / 16-divisible on real shapes.
_DIVISIBLE = {"K", "stride_xm", "stride_om", "n_bytes"}


@dataclass
class KernelBuild:
    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    gemv: bool = False
    tensor_cores: bool = False


def _linear_signature() -> dict[str, str]:
    return {
        "x_ptr": "*bf16",
        "packed_ptr": "*u8",
        "scale_ptr": "*bf16",
        "out_ptr": "*bf16",
        "M": "i32",
        "K": "i32",
        "rows_per_plane": "i32",
        "stride_xm": "i32",
        "stride_om": "i32",
    }


def _gemm_signature() -> dict[str, str]:
    return {
        "q_ptr": "*i8",
        "act_scale_ptr": "*fp32",
        "q_sum_ptr": "*i32",
        "packed_ptr": "*u8",
        "scale_ptr": "*bf16",
        "out_ptr": "*bf16",
        "M": "i32",
        "K": "i32",
        "rows_per_plane": "i32",
        "stride_om": "i32",
    }


def builds() -> list[KernelBuild]:
    """What the launchers compile for bf16 activations on the 2B-4T shapes."""
    result = []
    for out_type in ("*i8", "*bf16", "*fp16"):
        result.append(
            KernelBuild(
                f"unpack -> {out_type[1:]}",
                triton_unpack.unpack_kernel,
                {"packed_ptr": "*u8", "out_ptr": out_type, "n_bytes": "i32"},
                {
                    "BLOCK": triton_unpack.UNPACK_BLOCK,
                    "VEC": 16 if out_type == "*i8" else 8,
                    "OUT_IS_FLOAT": out_type != "*i8",
                },
                {"num_warps": triton_unpack.UNPACK_WARPS},
            )
        )
    for tokens in (1, 2, 8):
        for rows_per_plane in (160, 640, 1728, 32064):  # out = 640, 2560, 6912, 128256
            block_m, block_r, block_k = triton_linear.gemv_blocks(tokens, rows_per_plane, 2560, H100_SMS)
            divide = rows_per_plane % 3 == 0  # both scale conventions, without doubling the list
            result.append(
                KernelBuild(
                    f"gemv M={tokens} R/4={rows_per_plane} blocks=({block_m}, {block_r}, {block_k})",
                    triton_linear.gemv_kernel,
                    _linear_signature(),
                    {"DIVIDE_BY_SCALE": divide, "BLOCK_M": block_m, "BLOCK_R": block_r, "BLOCK_K": block_k},
                    {"num_warps": triton_linear.GEMV_WARPS, "enable_fp_fusion": False},
                    gemv=True,
                )
            )
    result.append(
        KernelBuild(
            "quantize rows",
            triton_linear.quantize_rows_kernel,
            {
                "x_ptr": "*bf16",
                "q_ptr": "*i8",
                "act_scale_ptr": "*fp32",
                "q_sum_ptr": "*i32",
                "M": "i32",
                "K": "i32",
                "stride_xm": "i32",
            },
            {"BLOCK_ROWS": 1, "BLOCK_K": 1024},
            {"num_warps": 4, "enable_fp_fusion": False},
        )
    )
    for tokens in (9, 64, 512):
        block_m, block_r, block_k, warps = triton_linear.gemm_blocks(tokens)
        result.append(
            KernelBuild(
                f"gemm M={tokens}",
                triton_linear.gemm_kernel,
                _gemm_signature(),
                {"DIVIDE_BY_SCALE": False, "BLOCK_M": block_m, "BLOCK_R": block_r, "BLOCK_K": block_k},
                {"num_warps": warps, "num_stages": 3, "enable_fp_fusion": False},
                tensor_cores=True,
            )
        )
    return result


def compile_for_hopper(build: KernelBuild) -> Any:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = build.kernel.arg_names
    aligned = {
        (names.index(name),): [["tt.divisibility", 16]]
        for name, kind in build.signature.items()
        if kind.startswith("*") or name in _DIVISIBLE
    }
    signature = {**build.signature, **{name: "constexpr" for name in build.constexprs}}
    source = ASTSource(build.kernel, signature, build.constexprs, aligned)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=build.options)


def problems(build: KernelBuild, compiled: Any) -> list[str]:
    found = []
    if not compiled.asm.get("cubin"):
        found.append("no cubin")
    ptx = compiled.asm["ptx"]
    if "ld.global.v" not in ptx and "cp.async" not in ptx:
        found.append("no vectorized global loads")
    if build.name.startswith("unpack"):
        if "st.global.v4" not in ptx:
            found.append("unpack stores are not 16-byte vectors")
        if compiled.metadata.shared:
            found.append("unpack goes through shared memory (load and store layouts differ)")
    if build.gemv:
        # The second scf.for is the product loop (the first computes max|x|).
        loop_body = compiled.asm["ttgir"].split("scf.for", 2)[2].split("scf.yield", 1)[0]
        if "convert_layout" in loop_body:
            found.append("convert_layout inside the K loop")
    if build.tensor_cores and "mma" not in ptx:
        found.append("no tensor-core (mma) instructions")
    return found


#: A few seconds' worth: one of each kernel, at the decode and prefill shapes that matter most.
QUICK = ("unpack -> bf16", "gemv M=1 R/4=1728", "gemv M=8 R/4=1728", "quantize rows", "gemm M=512")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if triton_interpreting():
        print("compile_check: Triton was imported in interpreter mode; unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    selected = [b for b in builds() if "--quick" not in argv or b.name.startswith(QUICK)]
    failures = 0
    for build in selected:
        try:
            found = problems(build, compile_for_hopper(build))
        except Exception as exc:  # a compiler error is a result to report, not a crash
            found = [f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"]
        failures += bool(found)
        print(f"{'FAIL' if found else 'ok  '} {build.name}" + (f": {'; '.join(found)}" if found else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
