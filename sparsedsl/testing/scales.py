"""The lengths at which a pattern's structure changes, read from its kernel plan
(part of `sparsedsl.testing`): the fuzzer and `kernel_shapes(scales=...)` draw
sequence lengths around them, so that a window of 1024 or a topk budget of 2048
keys is reached and crossed, not only lengths of a few tiles."""
from __future__ import annotations

from ..ir import nodes as ir
from ..ir.plan import KernelPlan, Segment

__all__ = ["pattern_scales", "scale_lengths"]


def _constants(node: ir.Node | None, out: set[int]) -> None:
    if node is None:
        return
    for n in ir.pre_order(node):
        if isinstance(n, ir.Const) and not isinstance(n.value, bool):
            out.add(abs(int(n.value)))


def _segment_constants(seg: Segment, out: set[int]) -> None:
    for node in (seg.lo, seg.hi, seg.full_lo, seg.full_hi, seg.block, seg.stride, seg.offset):
        _constants(node, out)


def pattern_scales(plan: KernelPlan) -> tuple[int, ...]:
    """Sorted distinct integers >= 2 of the plan: the constants of every branch's
    element mask and key/query segments (window sizes, sink counts, block sizes,
    strides, chunk sizes and offsets, periods), the block sizes of strided
    segments, the keys every query may see (sinks, global tokens), a topk's block
    and budget in keys (n * block), and the landmark block. Head conditions are
    left out (their constants count heads, not positions)."""
    found: set[int] = set(plan.blocks) | {plan.long_keys, plan.rate}
    for br in plan.branches:
        _constants(br.mask, found)
        for seg in br.segments + br.query_segments:
            _segment_constants(seg, found)
        if br.landmarks:
            found.add(br.landmarks)
    if plan.topk is not None:
        found |= {plan.topk.block, plan.topk.n * plan.topk.block}
    if plan.landmarks:
        found.add(plan.landmarks)
    return tuple(sorted(s for s in found if s >= 2))


def scale_lengths(scales, max_len: int) -> tuple[int, ...]:
    """Lengths that reach and cross each scale s: s - 1, s, s + 1, s + 17 (past a
    16-key tile) and 2s - 1, 2s, 2s + 1 (a second period, window or chunk), those in
    [1, max_len], ascending (Hypothesis shrinks towards the first)."""
    out = {m * s + d for s in scales for m, d in ((1, -1), (1, 0), (1, 1), (1, 17), (2, -1), (2, 0), (2, 1))}
    return tuple(sorted(n for n in out if 1 <= n <= max_len))
