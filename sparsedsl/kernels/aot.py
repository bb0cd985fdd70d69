"""Compile a pattern's kernels for a GPU target without a GPU (Triton's own
compiler, down to the binary): catches compile errors and reports each
kernel's shared memory. Needs Triton in normal mode (not TRITON_INTERPRET=1)."""
from __future__ import annotations

from ..ir.plan import KernelPlan
from .interface import ArgumentError, aot_signature
from .launch import _pow2, kernels_for, small_config

KINDS = ("fwd", "guard", "dq", "dkdv")


def compile_kernels(plan: KernelPlan, head_dim: int = 128, head_dim_v: int | None = None, dtype: str = "bf16",
                    arch: int = 90, varlen: bool = False, config=None,
                    binaries: dict | None = None, group: int = 1) -> dict[str, int]:
    """{kind: shared memory bytes} after compiling the forward, dQ and dK/dV
    kernels of `plan` for CUDA compute capability `arch` with fixed tiles (`config`: BLOCK_M,
    BLOCK_N, warps, stages; by default a config of the autotuner's lists that fits the head dim)
    and `group` query heads per K/V head.
    `binaries`, when given, receives {kind: (cubin bytes, kernel name, threads per block)}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    config = config or ((128, 64, 8, 2) if head_dim <= 128 else (64, 32, 4, 3))
    bn = config[1]
    dv = head_dim if head_dim_v is None else head_dim_v
    module, names = kernels_for(plan, True, head_dim, bn)
    # the descriptors' path of a Hopper-class GPU where the launcher takes it (kernels/tma.py)
    tma = int(arch >= 90 and plan.rate == 1 and not varlen and head_dim == _pow2(head_dim) and dv == _pow2(dv))
    consts = dict(HEAD_DIM=head_dim, HEAD_DIM_V=dv, BLOCK_D=_pow2(head_dim), BLOCK_DV=_pow2(dv), RATE=plan.rate,
                  WIDE=plan.wide, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", VARLEN=int(varlen),
                  PAGE=0, GROUP=group, TMA=tma, SHARD=0, DQ_ATOMIC=0, HAS_DLSE=0)
    out = {}
    for kind in KINDS + (("dlm",) if plan.landmarks is not None else ()):
        fn = getattr(module, names[kind])
        if not isinstance(fn, triton.runtime.jit.JITFunction):
            raise RuntimeError("compile_kernels needs Triton in normal mode: unset TRITON_INTERPRET")
        signature = aot_signature(kind, dtype)
        if list(signature) != list(fn.arg_names):
            raise ArgumentError(f"internal error: the {kind} kernel's parameters {fn.arg_names} are not its "
                                f"description's {list(signature)}")
        signature, attrs = _specialize(signature)
        # the guard kernel always runs on the small fixed tiles (kernels/launch.py)
        m, n, w, st = small_config(head_dim) if kind == "guard" else config
        values = {**consts, "BLOCK_M": m, "BLOCK_N": n, "TMA": 0 if kind == "guard" else tma}
        source = ASTSource(fn, signature, {(i,): values.get(name, 1) for i, name in enumerate(signature)
                                           if signature[name] == "constexpr"}, attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=w, num_stages=st))
        out[kind] = compiled.metadata.shared
        if binaries is not None:
            binaries[kind] = (compiled.asm.get("cubin", b""), compiled.metadata.name, w * 32)
    return out


UNIT_STRIDES = ("stride_lm", "stride_sn")  # besides the head-dim strides: LSE's and a selection row's last axis


def _specialize(signature: dict[str, str]) -> tuple[dict[str, str], dict]:
    """The signature and attributes Triton's launcher gives a typical call (contiguous [B, H, L, D]
    tensors, L and D multiples of 16): a stride of 1 is a constant, pointers and the other strides
    are multiples of 16. Without this the registers and spills reported are those of a kernel
    that never runs (unvectorised loads)."""
    signature, attrs = dict(signature), {}
    for i, name in enumerate(signature):
        if name.startswith("stride_") and (name.endswith("d") or name in UNIT_STRIDES):
            signature[name] = "constexpr"
        elif name.startswith("stride_") or signature[name].startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs
