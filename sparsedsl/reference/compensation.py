"""compensation() read directly: the entry of a query is the mean key and value of the keys
its branch hides, C & ~(S1 | ... | Sn) (ir/compensation.py `hidden`), evaluated as a dense
mask over the query rows of a chunk: O(rows * Lk * D), the oracle of the kernels' prefix sums."""
from __future__ import annotations

import torch

from ..ir import compensation
from ..ir import nodes as ir
from .evaluate import eval_mask, grid_env


def hidden_pattern(root: ir.Pattern) -> ir.Pattern | None:
    """The pattern whose keys, per head, are the ones its compensation entry averages (none for
    heads without one); None when the pattern has no compensation()."""
    if not compensation.holds(root):
        return None
    body = root.body
    if isinstance(body, ir.Heads):
        body = ir.Heads(tuple(ir.Branch(b.kind, b.start, b.stop, compensation.hidden(b.body))
                              for b in body.branches))
    else:
        body = compensation.hidden(body)
    return ir.Pattern(root.name, body)


def entries(hidden: ir.Pattern, q_len: int, num_heads: int, rows: torch.Tensor, k: torch.Tensor,
            v: torch.Tensor):
    """The compensation entries of the query rows `rows` (positions kv_len - q_len + row) of a call
    of num_heads query heads against k, v [B, Hk, kv_len, D/Dv], in their dtype: (kbar [B, H, C, D],
    vbar [B, H, C, Dv], seen bool [1, H, C, 1]: the rows that hide some key; the others' means are 0)."""
    hk, kv_len = k.shape[1], k.shape[2]
    env = grid_env(num_heads, hk, kv_len - q_len + rows, torch.arange(kv_len, device=rows.device))
    mask = eval_mask(hidden, env).expand(-1, num_heads, len(rows), kv_len)  # [1 or B, H, C, Lk]
    count = mask.sum(-1, keepdim=True)
    return _mean(mask, count, k), _mean(mask, count, v), (count > 0)[:1]


def _mean(mask: torch.Tensor, count: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per row, the mean of x [B, Hk, Lk, D] over the keys of mask [1 or B, H, C, Lk]: [B, H, C, D].
    A NaN or an infinity reaches only the rows that average its key (as a sum over them would)."""
    b, hk, kv_len, d = x.shape
    h, c = mask.shape[1], mask.shape[2]

    def total(w, y):  # per row, the sum of w * y over the keys
        w = w.to(x.dtype).reshape(w.shape[0], hk, h // hk, c, kv_len)
        return torch.einsum("bgxck,bgkd->bgxcd", w, y.to(x.dtype)).reshape(b, h, c, d)

    bad = ~torch.isfinite(x)
    finite = not bool(bad.any())
    out = total(mask / count.clamp(min=1).to(x.dtype), x if finite else x.masked_fill(bad, 0))
    if not finite:
        pos, neg = total(mask, x == float("inf")) > 0, total(mask, x == float("-inf")) > 0
        out = torch.where(pos, float("inf"), torch.where(neg, float("-inf"), out))
        out = torch.where((total(mask, torch.isnan(x)) > 0) | (pos & neg), float("nan"), out)
    return out
