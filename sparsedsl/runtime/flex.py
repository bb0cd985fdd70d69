"""Export a pattern to FlexAttention (torch.nn.attention.flex_attention): a
mask_mod and a BlockMask, used as an independent cross-check and as the
baseline of the benchmark."""
from __future__ import annotations


from ..errors import InputError
from ..ir import nodes as ir
from ..ir.heads import branch_condition
from ..reference.evaluate import eval_mask


def _nodes(root):
    stack, seen = [root], set()
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            yield n
            stack.extend(n.children())


def mask_mod(root: ir.Pattern, q_len: int, kv_len: int, num_heads: int, num_kv_heads: int):
    """mask_mod(b, h, q_idx, kv_idx) -> bool for a call with these lengths and heads
    (query row q_idx sits at position kv_len - q_len + q_idx)."""
    offset = kv_len - q_len
    group = num_heads // num_kv_heads
    # Built here, not while FlexAttention traces mask_mod (IR construction uses weak references).
    conditions = {n: branch_condition(n) for n in _nodes(root) if isinstance(n, ir.Branch)}
    wide = _wide(root)  # values past int32 (e.g. BigBird's hash): positions in int64, as in the kernels

    def mod(b, h, q_idx, kv_idx):
        if wide:
            h, q_idx, kv_idx = h.long(), q_idx.long(), kv_idx.long()
        env = {"H": num_heads, "Hk": num_kv_heads, "h": h, "hk": h // group, "q": q_idx + offset, "k": kv_idx,
               "branch_conditions": conditions}
        return eval_mask(root.body, env)

    return mod


def _wide(root: ir.Pattern) -> bool:
    """Whether the kernels compute this pattern's mask in 64 bits (kernel plan's `wide`)."""
    from .ops import plan_for

    try:
        return plan_for(root).wide
    except InputError:  # no kernel plan (a dynamic pattern): no FlexAttention export either
        return False


def block_mask(root: ir.Pattern, q_len: int, kv_len: int, num_heads: int, num_kv_heads: int,
               device="cuda", block_size: int = 128, compile: bool = False):
    """FlexAttention's BlockMask for one shape (built once; costs O(L^2 / block^2))."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as e:  # pragma: no cover - old torch
        raise InputError(f"FlexAttention is not available in this torch: {e}") from None
    return create_block_mask(mask_mod(root, q_len, kv_len, num_heads, num_kv_heads), None, num_heads, q_len,
                             kv_len, device=device, BLOCK_SIZE=block_size, _compile=compile)
