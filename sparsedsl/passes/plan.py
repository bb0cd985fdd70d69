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
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import build
from ..ir import nodes as ir
from ..ir.atoms import atom_arg, is_dynamic
from ..ir.heads import branch_condition
from ..ir.ranges import widest
from . import bounds
from .dynamic import TopkPart, Unsupported, split


@dataclass(frozen=True)
class BranchPlan:
    cond: ir.Node  # over h, H, Hk: the heads of this branch (first match wins)
    mask: ir.Node  # the element mask
    segments: tuple[bounds.Segment, ...]  # ranges first, then strided
    query_segments: tuple[bounds.Segment, ...] = ()  # transposed: for a key tile, the queries that see it
    topk: TopkPart | None = None  # the branch's selected blocks (segments and mask are its static part)
    landmarks: int | None = None  # the landmark block size, if the branch sees landmarks


@dataclass(frozen=True)
class KernelPlan:
    name: str
    branches: tuple[BranchPlan, ...]
    rate: int  # residue layout step (1: plain)
    wide: bool  # 64-bit index arithmetic in masks and bounds
    blocks: tuple[int, ...]  # block sizes of strided segments (the key tile must divide them)
    topk: ir.Atom | None = None  # the pattern's topk atom (one selection tensor for all branches)
    landmarks: int | None = None  # the pattern's landmark block size

    @property
    def dynamic(self) -> bool:
        return self.topk is not None or self.landmarks is not None


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
    """The integer expressions the element mask computes (emit.py), for the range check."""
    q, k = ir.Sym("q"), ir.Sym("k")
    if isinstance(node, ir.Cmp):
        return (node.a, node.b)
    if not isinstance(node, ir.Atom):
        return ()
    arg = lambda name: atom_arg(node, name)  # noqa: E731
    op = ir.IntOp
    args = tuple(a for a in node.args if isinstance(a, ir.Node) and ir.is_int(a))  # each is a value too
    if node.kind == "window":
        return args + (op("-", (q, arg("size"))),)
    if node.kind == "band":
        return args + (op("-", (q, arg("left"))), op("+", (q, arg("right"))))
    if node.kind == "dilated":
        return args + (op("-", (q, k)), op("*", (arg("size"), arg("rate"))),
                       op("%", (op("-", (q, k)), arg("rate"))))
    if node.kind == "local_blocks":
        return args + (op("-", (op("//", (q, arg("block"))), op("//", (k, arg("block"))))),)
    if node.kind == "strided":
        return args + (op("%", (op("+", (op("//", (k, arg("block"))), arg("offset"))), arg("stride"))),)
    return args


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
