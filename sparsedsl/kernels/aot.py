"""Compile a pattern's kernels for a GPU target without a GPU (Triton's own
compiler, down to the binary): catches compile errors and reports each
kernel's shared memory. Needs Triton in normal mode (not TRITON_INTERPRET=1)."""
from __future__ import annotations

from ..ir.plan import KernelPlan
from .interface import ArgumentError, aot_signature
from .launch import _pow2, kernels_for

KINDS = ("fwd", "guard", "dq", "dkdv")


def compile_kernels(plan: KernelPlan, head_dim: int = 128, head_dim_v: int | None = None, dtype: str = "bf16",
                    arch: int = 90, varlen: bool = False, config=(128, 64, 8, 2),
                    binaries: dict | None = None, group: int = 1) -> dict[str, int]:
    """{kind: shared memory bytes} after compiling the forward, dQ and dK/dV
    kernels of `plan` for CUDA compute capability `arch` with fixed tiles (`group` query
    heads per K/V head).
    `binaries`, when given, receives {kind: (cubin bytes, kernel name, threads per block)}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    bm, bn, warps, stages = config
    dv = head_dim if head_dim_v is None else head_dim_v
    module, names = kernels_for(plan, True, head_dim, bn)
    consts = dict(HEAD_DIM=head_dim, HEAD_DIM_V=dv, BLOCK_D=_pow2(head_dim), BLOCK_DV=_pow2(dv), RATE=plan.rate,
                  WIDE=plan.wide, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", VARLEN=int(varlen),
                  PAGE=0, GROUP=group, BLOCK_M=bm, BLOCK_N=bn)
    out = {}
    for kind in KINDS + (("dlm",) if plan.landmarks is not None else ()):
        fn = getattr(module, names[kind])
        if not isinstance(fn, triton.runtime.jit.JITFunction):
            raise RuntimeError("compile_kernels needs Triton in normal mode: unset TRITON_INTERPRET")
        signature = aot_signature(kind, dtype)
        if list(signature) != list(fn.arg_names):
            raise ArgumentError(f"internal error: the {kind} kernel's parameters {fn.arg_names} are not its "
                                f"description's {list(signature)}")
        source = ASTSource(fn, signature, {(i,): consts[n] for i, n in enumerate(signature)
                                           if signature[n] == "constexpr"})
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=warps, num_stages=stages))
        out[kind] = compiled.metadata.shared
        if binaries is not None:
            binaries[kind] = (compiled.asm.get("cubin", b""), compiled.metadata.name, warps * 32)
    return out
