"""head grouping, layout and planning: the last passes, which turn the optimized
IR into a KernelPlan, the input of code generation.

- head grouping: the top-level per-head branches become kernel branches;
  branches with the same body share one (their conditions are or-ed), and a
  head-dependent argument stays a per-head value computed in the kernel, not a
  per-head kernel. Adjacent branches whose bodies differ only in integer atom
  arguments become one branch whose arguments depend on the head (LongLoRA's
  plain and shifted chunks: chunked(2048, 0) on some heads, chunked(2048, 1024)
  on the rest, is chunked(2048, 1024 * [h not in the first group])) when that
  keeps the tile walk's shape: one loop instead of one per branch.
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
from ..atoms import ATOMS, atom_arg, condition, is_dynamic
from ..ir.heads import branch_condition, indicator
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


def _blend(first: ir.Node, other: ir.Node, chosen: ir.Node) -> ir.Node:
    """`first` where `chosen` (0 or 1) is 1, else `other`."""
    if first == other:
        return first
    return build.int_op("+", other, build.int_op("*", build.int_op("-", first, other), chosen))


def _align(a: ir.Node, b: ir.Node, chosen: ir.Node) -> ir.Node | None:
    """One mask that is `a` where `chosen` is 1 and `b` where it is 0, when the two have
    the same shape and differ only in integer arguments of static atoms; else None."""
    if a == b:
        return a
    if type(a) is not type(b):
        return None
    if isinstance(a, ir.Atom):
        if a.kind != b.kind or is_dynamic(a):
            return None
        args = []
        for p, x, y in zip(ATOMS[a.kind].params, a.args, b.args):
            if x != y and (p.kind != "int" or p.constant):
                return None
            args.append(_blend(x, y, chosen) if p.kind == "int" else x)
        return ir.Atom(a.kind, tuple(args))
    if isinstance(a, (ir.Union, ir.Inter)):
        if len(a.args) != len(b.args):
            return None
        parts = [_align(x, y, chosen) for x, y in zip(a.args, b.args)]
        return None if None in parts else type(a)(tuple(parts))
    if isinstance(a, ir.Diff):
        x, y = _align(a.a, b.a, chosen), _align(a.b, b.b, chosen)
        return None if x is None or y is None else ir.Diff(x, y)
    if isinstance(a, ir.Compl):
        x = _align(a.a, b.a, chosen)
        return None if x is None else ir.Compl(x)
    return None


def _walk_shape(mask: ir.Node, rate: int) -> tuple:
    """What the code generator's loop nest depends on: the segments' kinds and strided blocks."""
    return tuple((s.strided, s.block if s.strided else None, s.has_full, len(s.probe))
                 for s in bounds.segments(mask, rate))


def _probes(segs: tuple, rate: int) -> tuple:
    """The probed segments walked last, merged (bounds.probed_last); none in a residue layout
    (rate > 1), whose tiles hold positions c + rate * u."""
    if rate != 1:
        return tuple(replace(s, probe=()) for s in segs)
    return bounds.probed_last(segs)


def merge_alike(groups: list[tuple[ir.Node, ir.Node]], rate: int) -> list[tuple[ir.Node, ir.Node]]:
    """Adjacent (condition, body) groups whose static bodies differ only in integer atom
    arguments, merged into one group with head-dependent arguments when the merged body
    walks tiles the same way as each (first match: the first group's heads take its values)."""
    out = list(groups[:1])
    for cond, mask in groups[1:]:
        c0, m0 = out[-1]
        merged = _align(m0, mask, indicator(c0))
        static = merged is not None and not any(is_dynamic(n) for n in ir.post_order(merged))
        if static and _walk_shape(merged, rate) == _walk_shape(m0, rate) == _walk_shape(mask, rate):
            out[-1] = (build.logic("or", c0, cond), merged)
        else:
            out.append((cond, mask))
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


def _needs_wide(root: ir.Node, masks=()) -> bool:
    """64-bit element masks when some value the mask computes may leave int32 (for any
    position of a sequence the runtime takes; the tile bounds are always 64-bit).
    `masks`: the branches' masks as planned (merged branches compute blended arguments)."""
    conds = [branch_condition(b) for n in ir.post_order(root) if isinstance(n, ir.Heads) for b in n.branches]
    nodes = list(ir.post_order(root)) + [c for extra in (*conds, *masks) for c in ir.post_order(extra)]
    return any(widest(t) > INT32_MAX for n in nodes for t in _mask_terms(n))


def make_plan(root: ir.Pattern) -> KernelPlan:
    """Raises dynamic.Unsupported for data-dependent patterns without kernels."""
    dynamic = any(is_dynamic(n) for n in ir.post_order(root))
    rate = 1 if dynamic else residue_rate(root.body)
    branches = []
    blocks = set()
    topk_atoms, landmark_blocks = set(), set()
    for cond, mask in merge_alike(group_heads(root.body), rate):
        parts = split(mask)
        if parts.topk:
            topk_atoms.add(parts.topk.selection)
        if parts.landmarks:
            landmark_blocks.add(parts.landmarks)
        mask = parts.static
        segs = bounds.segments(mask, rate)  # the kernel clips them to [0, Lk)
        segs = _probes(tuple(s for s in segs if not s.strided) + tuple(s for s in segs if s.strided), rate)
        for s in segs:
            if s.strided and isinstance(s.block, ir.Const):
                blocks.add(s.block.value)
        branches.append(BranchPlan(cond, mask, segs, _probes(bounds.segments(mask, rate, transposed=True), rate),
                                   parts.topk, parts.landmarks, parts.compensation))
    if len(topk_atoms) > 1 or len(landmark_blocks) > 1:
        raise Unsupported("kernels take one topk(...) atom and one landmark block size per pattern; "
                          "use backend='reference'")
    return KernelPlan(root.name, tuple(branches), rate, _needs_wide(root, [b.mask for b in branches]),
                      tuple(sorted(blocks)),
                      next(iter(topk_atoms), None), next(iter(landmark_blocks), None),
                      any(b.compensation is not None for b in branches))


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
