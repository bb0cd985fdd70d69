"""head grouping, layout and planning: the last passes, which turn the optimized
IR into a KernelPlan, the input of code generation.

- head grouping: the top-level per-head branches become kernel branches;
  branches with the same body share one (their conditions are or-ed), and a
  head-dependent argument stays a per-head value computed in the kernel, not a
  per-head kernel.
- layout: when every visible pair has q = k (mod r) (the pattern lies inside
  dilated(w, r)), the kernel walks one residue class of queries and keys at a
  time, so it does dense work (rate = r).
- plan: per branch, the key segments to iterate (bounds.segments), plain
  ranges first, each with the interval where no element mask is needed; and
  the transposed plan for the backward's dK/dV kernel: per key tile, the query
  segments that see it.

kernel_plan(root) is the whole lowering of a checked pattern (the optimizer,
then make_plan); the plan's types are data in ir/plan.py, which kernels/ reads.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import build
from ..ir import nodes as ir
from ..atoms import atom_arg, condition, is_dynamic
from ..ir.heads import branch_condition
from ..ir.plan import BranchPlan, KernelPlan
from ..ir.printer import to_text
from ..ir.ranges import widest
from . import bounds, optimize
from .dynamic import Unsupported, split

INT32_MAX = 2**31 - 1
MAX_RATE = 256  # the largest dilation rate walked as a residue layout


def group_heads(body: ir.Node) -> list[tuple[ir.Node, ir.Node]]:
    """[(condition over the heads, body)] in first-match order."""
    if not isinstance(body, ir.Heads):
        return [(ir.Bool(True), body)]
    out: list[tuple[ir.Node, ir.Node]] = []
    for b in body.branches:
        cond = branch_condition(b)
        for i, (c, m) in enumerate(out):
            if m is b.body and i == len(out) - 1:  # adjacent same body: merge, keeping the order
                out[i] = (build.logic("or", c, cond), m)
                break
        else:
            out.append((cond, b.body))
    return out


def residue_rate(body: ir.Node) -> int:
    """r when every visible pair is congruent modulo r, else 1."""
    rates = set()
    for _, m in group_heads(body):
        parts = m.args if isinstance(m, ir.Inter) else (m,)
        found = [atom_arg(a, "rate") for a in parts if isinstance(a, ir.Atom) and a.kind == "dilated"]
        # (a larger rate would launch a program per residue class, most of them empty)
        consts = [r.value for r in found if isinstance(r, ir.Const) and 1 < r.value <= MAX_RATE]
        rates.add(consts[0] if consts else 1)
    return rates.pop() if len(rates) == 1 else 1


def _mask_terms(node: ir.Node):
    """The integer expressions the element mask computes (emit.py: each static atom's
    condition, sparsedsl/atoms/), for the range check."""
    if isinstance(node, ir.Cmp):
        return (node.a, node.b)
    if not isinstance(node, ir.Atom) or is_dynamic(node):
        return ()
    args = tuple(a for a in node.args if isinstance(a, ir.Node) and ir.is_int(a))  # each is a value too
    return args + tuple(x for c in ir.post_order(condition(node)) if isinstance(c, ir.Cmp) for x in (c.a, c.b))


def _needs_wide(root: ir.Node) -> bool:
    """64-bit element masks when some value the mask computes may leave int32 (for any
    position of a sequence the runtime takes; the tile bounds are always 64-bit)."""
    conds = [branch_condition(b) for n in ir.post_order(root) if isinstance(n, ir.Heads) for b in n.branches]
    nodes = list(ir.post_order(root)) + [c for cond in conds for c in ir.post_order(cond)]
    return any(widest(t) > INT32_MAX for n in nodes for t in _mask_terms(n))


def make_plan(root: ir.Pattern) -> KernelPlan:
    """Raises dynamic.Unsupported for data-dependent patterns without kernels."""
    dynamic = any(is_dynamic(n) for n in ir.post_order(root))
    rate = 1 if dynamic else residue_rate(root.body)
    branches = []
    blocks = set()
    topk_atoms, landmark_blocks = set(), set()
    for cond, mask in group_heads(root.body):
        parts = split(mask)
        if parts.topk:
            topk_atoms.add(parts.topk.atom)
        if parts.landmarks:
            landmark_blocks.add(parts.landmarks)
        mask = parts.static
        segs = bounds.segments(mask, rate)  # the kernel clips them to [0, Lk)
        segs = tuple(s for s in segs if not s.strided) + tuple(s for s in segs if s.strided)
        for s in segs:
            if s.strided and isinstance(s.block, ir.Const):
                blocks.add(s.block.value)
        branches.append(BranchPlan(cond, mask, segs, bounds.segments(mask, rate, transposed=True),
                                   parts.topk, parts.landmarks))
    if len(topk_atoms) > 1 or len(landmark_blocks) > 1:
        raise Unsupported("kernels take one topk(...) atom and one landmark block size per pattern; "
                          "use backend='reference'")
    return KernelPlan(root.name, tuple(branches), rate, _needs_wide(root), tuple(sorted(blocks)),
                      next(iter(topk_atoms), None), next(iter(landmark_blocks), None))


def long_keys(root: ir.Node) -> int:
    """How many leading keys every query may see: the largest n of the pattern's
    sink(n) and global(n) atoms (0 if none). Their tiles are the dK/dV kernel's
    long ones; splitting any tile is correct, so this is only a schedule."""
    n = 0
    for node in ir.post_order(root):
        if isinstance(node, ir.Atom) and node.kind in ("sink", "global") and isinstance(node.args[0], ir.Const):
            n = max(n, node.args[0].value)
    return n


def kernel_plan(root: ir.Pattern) -> KernelPlan:
    """The lowering of a checked pattern to its kernel plan: the optimizer, then
    make_plan, with the pattern's text and long keys (read from `root` as written).
    Raises dynamic.Unsupported for data-dependent patterns without kernels."""
    return replace(make_plan(optimize(root)), long_keys=long_keys(root), text=to_text(root))
