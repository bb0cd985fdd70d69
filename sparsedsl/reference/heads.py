"""Which heads each dynamic atom serves. (The checks of head-dependent
arguments are ir/head_args.py check_heads; the list of a pattern's dynamic
atoms is ir/check.py dynamic_atoms.)"""
from __future__ import annotations

import torch

from ..ir import nodes as ir
from ..ir.head_args import check_heads, intersect_heads  # noqa: F401 (check_heads re-exported)
from ..ir.heads import head_segments


def active_heads(root: ir.Node, atom: ir.Atom, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """bool [H]: the heads whose branch contains `atom` (for landmarks)."""
    active = torch.zeros(num_heads, dtype=torch.bool)
    seen = set()
    stack = [(root, ((0, num_heads),))]
    while stack:
        node, segs = stack.pop()
        if not segs or (node, segs) in seen:
            continue
        seen.add((node, segs))
        if node is atom:
            for a, z in segs:
                active[a:z] = True
        elif isinstance(node, ir.Heads):
            owners = head_segments(node, num_heads, num_kv_heads)
            for i, b in enumerate(node.branches):
                stack.append((b.body, sum((intersect_heads(segs, a, z) for a, z, j in owners if j == i), ())))
        else:
            stack.extend((c, segs) for c in node.children() if ir.is_mask(c) or isinstance(c, ir.Heads))
    return active
