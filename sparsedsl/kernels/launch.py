"""Running a generated forward kernel: allocation, launch grid, interpreter mode."""
from __future__ import annotations


import torch

from ..ir import nodes as ir
from ..passes import optimize
from ..passes.plan import KernelPlan, make_plan
from .cache import load_source
from .generate import kernel_source

LOG2E = 1.4426950408889634
_PLANS: dict = {}


def plan_for(root: ir.Pattern) -> KernelPlan:
    plan = _PLANS.get(root)
    if plan is None:
        plan = _PLANS[root] = make_plan(optimize(root))
    return plan


def interpreter_ready() -> bool:
    """True when Triton was imported with TRITON_INTERPRET=1 (kernels run on the CPU)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def _pow2(n: int) -> int:
    return max(16, 1 << (max(1, n) - 1).bit_length())


def forward(root: ir.Pattern, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            interpret: bool, config: tuple[int, int] | None = None):
    """out [B, H, Lq, Dv] (q's dtype), lse [B, H, Lq] float32."""
    b, h, lq, d = q.shape
    hk, lk, dv = k.shape[1], k.shape[2], v.shape[-1]
    out = torch.empty((b, h, lq, dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse
    if interpret and not interpreter_ready():
        from ..errors import InputError

        raise InputError("backend='triton' on CPU tensors runs the kernels in Triton's interpreter, which must be "
                         "switched on before triton is imported: set TRITON_INTERPRET=1 in the environment")
    plan = plan_for(root)
    from ..ir.printer import to_text

    fixed = interpret or config is not None
    src, name = kernel_source(plan, to_text(root), fixed, d, (config or (16, 16))[1] if fixed else None)
    module = load_source(src, name)
    kernel = getattr(module, name)
    precision = "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32"
    if q.dtype == torch.float64:
        raise NotImplementedError("float64 runs on the reference backend")
    meta = dict(HEAD_DIM=d, HEAD_DIM_V=dv, BLOCK_D=_pow2(d), BLOCK_DV=_pow2(dv), RATE=plan.rate, WIDE=plan.wide,
                DOT_PRECISION=precision)
    rows_per_class = -(-lq // plan.rate) + 1

    def grid(meta_):
        return (plan.rate * -(-rows_per_class // meta_["BLOCK_M"]), h, b)

    args = (q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
            h, hk, lq, lk, scale * LOG2E)
    if interpret or config is not None:
        bm, bn, *rest = config or (16, 16)
        launch = dict(zip(("num_warps", "num_stages"), rest))
        kernel[grid({"BLOCK_M": bm})](*args, **meta, BLOCK_M=bm, BLOCK_N=bn, **launch)
    else:
        kernel[grid](*args, **meta)
    return out, lse
