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


def _attend_call(i: int, masked: bool) -> str:
    return (f"acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_base, v_base, offs_d, offs_dv, "
            f"stride_kn, stride_kd, stride_vn, stride_vd, u0, c, num_u, h, hk, H, Hk, qk_scale, "
            f"RATE, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, {masked}, DOT_PRECISION, WIDE)")


def _tile_loop(i: int, lo: str, hi: str, masked: bool, check: str = "") -> list[str]:
    body = [_attend_call(i, masked)]
    if check:
        body = [f"if ({check}) == 0:", "    " + body[0]]
    return [f"for u0 in range({lo}, {hi}, BLOCK_N):"] + ["    " + b for b in body]


def _has_full(seg: Segment) -> bool:
    return not (seg.full_lo == ir.Const(0) and seg.full_hi == ir.Const(0))


def _segment(i: int, j: int, seg: Segment, br, plan: KernelPlan) -> list[str]:
    """Loops over the key tiles of segment j: the tiles of earlier plain ranges
    are cut out in closed form, and the tiles inside the full interval run
    without the element mask."""
    desc = f"keys [{to_text(seg.lo)}, {to_text(seg.hi)})"
    if seg.strided:
        desc += f" in blocks j with (j + {to_text(seg.offset)}) % {to_text(seg.stride)} == 0"
    if seg.guard != ir.Bool(True):
        desc += f" if {to_text(seg.guard)}"
    if _has_full(seg):
        desc += f"; no mask in [{to_text(seg.full_lo)}, {to_text(seg.full_hi)})"
    lines = [f"# segment {j}: {desc}",
             f"lo = tl.maximum({int_expr(seg.lo)}, 0)",
             f"hi = tl.minimum({int_expr(seg.hi)}, Lk)"]
    if seg.guard != ir.Bool(True):
        lines.append(f"hi = tl.where({cond_expr(seg.guard)}, hi, lo)")
    lines += [f"ua_{j} = _first_u(lo, c, RATE) // BLOCK_N * BLOCK_N",
              f"ub_{j} = tl.where(hi > lo, (_first_u(hi, c, RATE) + BLOCK_N - 1) // BLOCK_N * BLOCK_N, ua_{j})"]
    if _has_full(seg):
        lines += [f"fa = (_first_u(tl.maximum({int_expr(seg.full_lo)}, 0), c, RATE) + BLOCK_N - 1) // BLOCK_N * BLOCK_N",
                  f"fb = tl.minimum(_first_u(tl.minimum({int_expr(seg.full_hi)}, Lk), c, RATE), num_u) // BLOCK_N * BLOCK_N"]
    # the pieces of this segment outside every earlier plain range
    earlier = [m for m, s in enumerate(br.segments[:j]) if not _strided_here(s, plan)]
    pieces = [(f"ua_{j}", f"ub_{j}")]
    for m in earlier:
        cut = []
        for a, b in pieces:
            cut += [(a, f"tl.minimum({b}, ua_{m})"), (f"tl.maximum({a}, ub_{m})", b)]
        pieces = cut
    check = " | ".join(
        f"((u0 >= ua_{m}) & (u0 < ub_{m}) & (_fmod(u0 // {s.block.value} + off_{m}, s_{m}) == 0))"
        for m, s in enumerate(br.segments[:j]) if _strided_here(s, plan))
    strided = _strided_here(seg, plan)
    if strided:
        b = seg.block.value
        lines += [f"s_{j} = {int_expr(seg.stride)}", f"off_{j} = {int_expr(seg.offset)}"]
    for n, (a, bnd) in enumerate(pieces):
        lines += [f"pa = {a}", f"pb = {bnd}"]
        if not strided:
            if _has_full(seg):
                lines += ["m1 = tl.minimum(tl.maximum(fa, pa), pb)", "m2 = tl.minimum(tl.maximum(fb, m1), pb)"]
                lines += _tile_loop(i, "pa", "m1", True, check) + _tile_loop(i, "m1", "m2", False, check)
                lines += _tile_loop(i, "m2", "pb", True, check)
            else:
                lines += _tile_loop(i, "pa", "pb", True, check)
            continue
        # strided: blocks jb on the lattice first + s_j * t, inside [pa, pb)
        lines += [f"jlo = pa // {b}", f"jhi = (pb + {b - 1}) // {b}",
                  f"first = jlo + _fmod(-(jlo + off_{j}), s_{j})"]
        runs = [("first", "jhi", True)]
        if _has_full(seg):
            lines += [f"j1 = tl.minimum(tl.maximum((fa + {b - 1}) // {b}, first), jhi)",
                      f"j1 = j1 + _fmod(first - j1, s_{j})",
                      f"j2 = tl.minimum(tl.maximum(fb // {b}, j1), jhi)",
                      f"j2 = j2 + _fmod(first - j2, s_{j})"]
            runs = [("first", "j1", True), ("j1", "j2", False), ("j2", "jhi", True)]
        for lo_j, hi_j, masked in runs:
            lines.append(f"for jb in range({lo_j}, {hi_j}, s_{j}):")
            inner = _tile_loop(i, f"tl.maximum(jb * {b}, pa)", f"tl.minimum(jb * {b} + {b}, pb)", masked, check)
            lines += ["    " + x for x in inner]
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
