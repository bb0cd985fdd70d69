"""KernelPlan -> Triton source: the template from codegen/ with the
plan-specific parts (element masks, per-branch segment loops) filled in."""
from __future__ import annotations

import hashlib

from ..ir import nodes as ir
from ..ir.printer import to_text
from ..passes.bounds import Segment
from ..passes.plan import KernelPlan
from ..resources import data_dir
from .emit import cond_expr, int_expr, mask_expr

GPU_CONFIGS = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
    (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 2),
]


def keep_config(plan: KernelPlan, block_n: int, head_dim: int) -> bool:
    """A key tile must lie inside one block of every strided segment; big heads need small tiles."""
    if any(b % block_n for b in plan.blocks):
        return False
    return head_dim <= 128 or block_n <= 64


def _template() -> str:
    return (data_dir("codegen") / "attention_fwd.py.tmpl").read_text()


def _indent(lines: list[str], n: int) -> str:
    return "\n".join((" " * n + line) if line else "" for line in lines)


def _mask_functions(plan: KernelPlan) -> str:
    out = []
    for i, br in enumerate(plan.branches):
        out += ["", "@jit", f"def _mask_{i}(q_pos, k_pos, h, hk, H, Hk):",
                f"    # {to_text(br.mask)}", f"    return {mask_expr(br.mask)}", ""]
    out += ["", "@jit", "def _visible(MASK_ID: tl.constexpr, q_pos, k_pos, h, hk, H, Hk):"]
    for i in range(len(plan.branches)):
        out.append(f"    {'if' if i == 0 else 'elif'} MASK_ID == {i}:")
        out.append(f"        return _mask_{i}(q_pos, k_pos, h, hk, H, Hk)")
    return "\n".join(out) + "\n"


def _strided_here(seg: Segment, plan: KernelPlan) -> bool:
    """Iterate a strided segment block by block (else as a plain range)."""
    return seg.strided and plan.rate == 1 and isinstance(seg.block, ir.Const)


def _covered(j: int, seg: Segment, plan: KernelPlan) -> str:
    rng = f"(u0 >= ulo_{j}) & (u0 < uhi_{j})"
    if _strided_here(seg, plan):
        return f"({rng} & (_fmod(u0 // {seg.block.value} + off_{j}, s_{j}) == 0))"
    return f"({rng})"


def _attend_call(i: int, masked: bool) -> str:
    return (f"acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_base, v_base, offs_d, offs_dv, "
            f"stride_kn, stride_kd, stride_vn, stride_vd, u0, c, num_u, h, hk, H, Hk, qk_scale, "
            f"RATE, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, {masked}, DOT_PRECISION, WIDE)")


def _segment(i: int, j: int, seg: Segment, br, plan: KernelPlan) -> list[str]:
    desc = f"keys [{to_text(seg.lo)}, {to_text(seg.hi)})"
    if seg.strided:
        desc += f" in blocks j with (j + {to_text(seg.offset)}) % {to_text(seg.stride)} == 0"
    if seg.guard != ir.Bool(True):
        desc += f" if {to_text(seg.guard)}"
    lines = [f"# segment {j}: {desc}",
             f"lo_{j} = tl.maximum({int_expr(seg.lo)}, 0)",
             f"hi_{j} = tl.minimum({int_expr(seg.hi)}, Lk)"]
    if seg.guard != ir.Bool(True):
        lines.append(f"hi_{j} = tl.where({cond_expr(seg.guard)}, hi_{j}, lo_{j})")
    lines += [f"ulo_{j} = (-_fdiv(c - lo_{j}, RATE)) // BLOCK_N * BLOCK_N",
              f"uhi_{j} = -_fdiv(c - hi_{j}, RATE)",
              f"uhi_{j} = tl.where(hi_{j} > lo_{j}, uhi_{j}, ulo_{j})"]
    skip = [_covered(m, s, plan) for m, s in enumerate(br.segments[:j])]
    none = cond_expr(br.none_visible)
    if none != "False":
        skip.append(none)
    tile = ["k0 = c + RATE * u0",
            "k1 = c + RATE * (tl.minimum(u0 + BLOCK_N, num_u) - 1) + 1"]
    body = [f"if {cond_expr(br.all_visible)} & (u0 + BLOCK_N <= num_u):",
            f"    {_attend_call(i, False)}",
            "else:",
            f"    {_attend_call(i, True)}"]
    if skip:
        tile.append(f"if ({' | '.join(skip)}) == 0:")
        tile += ["    " + line for line in body]
    else:
        tile += body
    if _strided_here(seg, plan):
        b = seg.block.value
        lines += [f"s_{j} = {int_expr(seg.stride)}",
                  f"off_{j} = {int_expr(seg.offset)}",
                  f"jlo_{j} = lo_{j} // {b}",
                  f"jhi_{j} = (hi_{j} + {b - 1}) // {b}",
                  f"first_{j} = jlo_{j} + _fmod(-(jlo_{j} + off_{j}), s_{j})",
                  f"for jb in range(first_{j}, jhi_{j}, s_{j}):",
                  f"    for u0 in range(tl.maximum(jb * {b}, ulo_{j}), tl.minimum(jb * {b} + {b}, uhi_{j}), BLOCK_N):"]
        lines += ["        " + line for line in tile]
    else:
        lines.append(f"for u0 in range(ulo_{j}, uhi_{j}, BLOCK_N):")
        lines += ["    " + line for line in tile]
    return lines


def _branches(plan: KernelPlan) -> str:
    lines: list[str] = []
    for i, br in enumerate(plan.branches):
        cond = cond_expr(br.cond)
        if len(plan.branches) == 1:
            body_indent = 0
        else:
            head = "else:" if (i == len(plan.branches) - 1 and cond == "True") else \
                f"{'if' if i == 0 else 'elif'} {cond}:"
            lines.append(f"# heads: {to_text(br.cond)}")
            lines.append(head)
            body_indent = 4
        body: list[str] = []
        for j, seg in enumerate(br.segments):
            body += _segment(i, j, seg, br, plan)
        if not body:
            body = ["pass  # this branch sees no key"]
        lines += [" " * body_indent + line for line in body]
    return _indent(lines, 8)


def kernel_source(plan: KernelPlan, pattern_text: str, interpret: bool, head_dim: int) -> tuple[str, str]:
    """(source, kernel name) of the forward kernel of a plan."""
    digest = hashlib.sha256(repr((plan, interpret, head_dim)).encode()).hexdigest()[:12]
    name = f"{_ident(plan.name)}_fwd_kernel"
    jit_import = "jit = triton.jit"
    if interpret:
        autotune = ""  # the interpreter runs one fixed tile size
    else:
        configs = [c for c in GPU_CONFIGS if keep_config(plan, c[1], head_dim)] or [(64, 16, 4, 2)]
        listed = ",\n        ".join(
            f'triton.Config({{"BLOCK_M": {m}, "BLOCK_N": {n}}}, num_warps={w}, num_stages={s})'
            for m, n, w, s in configs)
        autotune = (f"@triton.autotune(\n    configs=[\n        {listed},\n    ],\n"
                    f'    key=["HEAD_DIM", "HEAD_DIM_V", "RATE"],\n)')
    text = " ".join(pattern_text.split())
    src = (_template()
           .replace("{{pattern_name}}", plan.name)
           .replace("{{plan_hash}}", digest)
           .replace("{{pattern_text}}", text)
           .replace("{{jit_import}}", jit_import)
           .replace("{{mask_functions}}", _mask_functions(plan))
           .replace("{{autotune}}", autotune)
           .replace("{{kernel_name}}", name)
           .replace("{{branches}}", _branches(plan)))
    return src, name


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name) or "pattern"
