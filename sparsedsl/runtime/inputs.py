"""Checks of what a user passes to a compiled pattern: clear InputErrors, never
a raw torch error or a silently wrong result."""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..ir.ranges import SEQUENCE_LIMIT

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_size(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_heads(num_heads, num_kv_heads) -> tuple[int, int]:
    num_heads = check_size("num_heads", num_heads, 1)
    num_kv_heads = num_heads if num_kv_heads is None else check_size("num_kv_heads", num_kv_heads, 1)
    if num_heads % num_kv_heads:
        raise InputError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    return num_heads, num_kv_heads


def check_qk(q, k, what: str = "select_blocks") -> None:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise InputError(f"{what}: {name} must have 4 dimensions [batch, heads, length, head_dim], "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise InputError(f"{what}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if q.device != k.device:
        raise InputError(f"{what}: q is on {q.device} but k is on {k.device}")
    if q.shape[0] != k.shape[0]:
        raise InputError(f"{what}: batch sizes differ: q has {q.shape[0]}, k has {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise InputError(f"{what}: head dims differ: q has {q.shape[3]}, k has {k.shape[3]}")
    if q.shape[3] == 0:
        raise InputError(f"{what}: head_dim must be at least 1, got shape {tuple(q.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise InputError(f"{what}: the number of query heads ({q.shape[1]}) must be a multiple of the "
                         f"number of KV heads ({k.shape[1]})")


def check_qkv(q, k, v, scale) -> float | None:
    check_qk(q, k, "attention")
    if not isinstance(v, torch.Tensor):
        raise InputError(f"attention: v must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() != 4:
        raise InputError(f"attention: v must have 4 dimensions [batch, kv_heads, length, head_dim], "
                         f"got shape {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise InputError(f"attention: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if v.device != q.device:
        raise InputError(f"attention: q is on {q.device} but v is on {v.device}")
    if v.shape[:3] != k.shape[:3]:
        raise InputError(f"attention: k and v must agree in [batch, kv_heads, length], got "
                         f"{tuple(k.shape[:3])} and {tuple(v.shape[:3])}")
    check_lengths((q.shape[2], k.shape[2]))
    return check_scale(scale)


def from_layout(layout: str, q, k, v, packed: bool):
    """q, k, v given in `layout` as [B, H, L, D] views (no copy)."""
    if layout != "bshd":
        raise InputError(f"attention: layout must be 'bhsd' ([B, H, L, D]) or 'bshd' ([B, L, H, D], FlashAttention's), "
                         f"got {layout!r}")
    if packed:
        raise InputError("attention: a packed batch (cu_seqlens) is [T, H, D] already: leave layout at 'bhsd'")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"attention: with layout='bshd', {name} must be [batch, length, heads, head_dim], "
                             f"got {shape}")
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def from_decode_layout(layout: str, q, k_cache, v_cache, paged: bool):
    """decode's q and caches given in `layout` as [B, H, L, D] views (no copy); a paged cache
    ([pages, page_size, Hk, D]) is the same in both layouts."""
    if layout != "bshd":
        raise InputError(f"decode: layout must be 'bhsd' ([B, H, L, D]) or 'bshd' ([B, L, H, D], FlashAttention's), "
                         f"got {layout!r}")
    named = (("q", q),) if paged else (("q", q), ("k_cache", k_cache), ("v_cache", v_cache))
    for name, t in named:
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"decode: with layout='bshd', {name} must be [batch, length, heads, head_dim], "
                             f"got {shape}")
    if paged:
        return q.transpose(1, 2), k_cache, v_cache
    return q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2)


def check_scale(scale) -> float | None:
    """The softmax scale as a float: a number, or a one-element tensor on the CPU (reading
    one on a GPU would make the call wait for it)."""
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or scale.is_complex() or scale.dtype == torch.bool:
            raise InputError(f"attention: scale must be a number or a one-element real tensor, got a tensor of "
                             f"shape {tuple(scale.shape)} and dtype {scale.dtype}")
        if scale.device.type != "cpu":
            raise InputError(f"attention: scale is a tensor on {scale.device}: reading it would stop the host until "
                             "the GPU gets there; pass a Python float (or a CPU tensor)")
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InputError(f"attention: scale must be a finite number, got {scale!r}")
    return float(scale)


# Keywords of FlashAttention, SDPA and FlexAttention that sparsedsl spells differently or
# does not take, with what to write instead.
_CAUSAL = "the pattern decides which keys a query sees: write `causal` in it (e.g. sparsedsl.causal & ...)"
REFUSED = {
    "is_causal": _CAUSAL,
    "causal": _CAUSAL,
    "attn_mask": "sparsedsl takes no dense mask: the compiled pattern is the mask (no mask is built per call); "
                 "run a padded batch packed, with cu_seqlens_q/cu_seqlens_k",
    "window_size": "write window(n) (or band(left, right)) in the pattern",
    "alibi_slopes": "sparsedsl patterns select keys and add no bias (no ALiBi)",
    "block_mask": "the compiled pattern replaces FlexAttention's BlockMask: call it with q, k, v",
    "score_mod": "sparsedsl patterns select keys and do not modify scores",
}


def foreign_keywords(keywords: dict, scale, heads, what: str = "attention", takes: str = ""):
    """The scale after FlashAttention's and SDPA's keywords: `softmax_scale` is `scale`,
    `dropout_p=0` and `enable_gqa` are accepted; the others get an InputError that names
    sparsedsl's spelling. `heads`: (query heads, KV heads), or None when the shapes are
    not known yet (the shape checks come later)."""
    keywords = dict(keywords)
    if "softmax_scale" in keywords:
        alias = keywords.pop("softmax_scale")
        if scale is not None and alias is not None:
            raise InputError(f"{what}: pass the scale once: `scale` and `softmax_scale` (its FlashAttention "
                             "name) are the same argument")
        scale = alias if scale is None else scale
    dropout = keywords.pop("dropout_p", 0.0)
    if dropout != 0:
        raise InputError(f"{what}: dropout_p={dropout!r}: sparsedsl has no attention dropout (pass 0, or "
                         "apply dropout outside the attention)")
    if keywords.get("attn_mask", 0) is None:  # SDPA's default: no mask, nothing to refuse
        keywords.pop("attn_mask")
    gqa = keywords.pop("enable_gqa", True)
    if not gqa and heads is not None and heads[0] != heads[1]:
        raise InputError(f"{what}: enable_gqa=False with {heads[0]} query heads and {heads[1]} KV heads "
                         "(sparsedsl always shares each KV head among its group of query heads)")
    for name in keywords:
        if name in REFUSED:
            raise InputError(f"{what}: sparsedsl takes no `{name}`: {REFUSED[name]}")
        raise InputError(f"{what}: unexpected keyword argument {name!r} (sparsedsl takes {takes})")
    return scale


def heads_of(q, k, kv_axis: int = 1):
    """(query heads, KV heads) of [B, H, L, D] or packed [T, H, D] tensors (axis 1; a paged
    cache [pages, page_size, Hk, D] has its heads on axis 2), or None."""
    ok = all(isinstance(t, torch.Tensor) and t.dim() >= 3 for t in (q, k))
    return (q.shape[1], k.shape[kv_axis]) if ok else None


def check_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    """Packed variable-length inputs (FlashAttention's convention): q [Tq, H, D],
    k/v [Tk, Hk, D/Dv], cu_seqlens int32 [S + 1] on q's device. The values of
    cu_seqlens are checked on CPU tensors only (on a GPU that would sync), and not
    while torch.compile traces the call (data-dependent: no graph break, fullgraph works)."""
    read_values = not _tracing()
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise InputError(f"attention with cu_seqlens: {name} must be packed as [total_tokens, heads, head_dim], "
                             f"got shape {tuple(t.shape)}")
    scale = check_qkv(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), scale)  # as [1, H, T, D]
    if cu_q is None or cu_k is None or max_q is None or max_k is None:
        raise InputError("attention with a packed batch needs all four of cu_seqlens_q, cu_seqlens_k, "
                         "max_seqlen_q and max_seqlen_k")
    for name, cu, total in (("cu_seqlens_q", cu_q, q.shape[0]), ("cu_seqlens_k", cu_k, k.shape[0])):
        if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.dtype != torch.int32 or cu.numel() < 1:
            raise InputError(f"{name} must be an int32 tensor [num_seqs + 1] of cumulative starts, got "
                             f"{getattr(cu, 'dtype', type(cu).__name__)} {tuple(getattr(cu, 'shape', ()))}")
        if cu.device != q.device:
            raise InputError(f"{name} is on {cu.device} but q is on {q.device}")
        if not cu.is_cuda and read_values:
            vals = cu.tolist()
            if vals[0] != 0 or any(b < a for a, b in zip(vals, vals[1:])) or vals[-1] != total:
                raise InputError(f"{name} must start at 0, never decrease and end at the number of packed tokens "
                                 f"({total}), got {vals if len(vals) <= 12 else vals[:6] + ['...'] + vals[-6:]}")
    if cu_q.numel() != cu_k.numel():
        raise InputError(f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
                         f"{cu_q.numel() - 1} and {cu_k.numel() - 1}")
    max_q, max_k = check_size("max_seqlen_q", max_q), check_size("max_seqlen_k", max_k)
    for name, cu, m in (("q", cu_q, max_q), ("k", cu_k, max_k)):
        longest = int((cu[1:] - cu[:-1]).max()) if not cu.is_cuda and read_values and cu.numel() > 1 else 0
        if longest > m:
            raise InputError(f"max_seqlen_{name} ({m}) is smaller than the longest sequence ({longest})")
    return scale


def check_leftpad(q, cache_seqlens, cache_leftpad, block_table):
    """decode's cache_leftpad (FlashAttention's name): int32 [B] on q's device, sequence b's
    first cache slot (its keys are the slots [cache_leftpad[b], cache_seqlens[b])); a contiguous
    cache only. Values are checked on CPU tensors (0 <= leftpad <= seqlens)."""
    b = q.shape[0]
    if block_table is not None:
        raise InputError("decode: cache_leftpad takes a contiguous cache [B, Hk, Lmax, D]; a paged cache "
                         "(block_table) starts each sequence on a page of its own")
    if not isinstance(cache_leftpad, torch.Tensor) or cache_leftpad.dtype != torch.int32 \
            or tuple(cache_leftpad.shape) != (b,) or cache_leftpad.device != q.device:
        raise InputError(f"decode: cache_leftpad must be an int32 tensor [{b}] on {q.device}, got "
                         f"{getattr(cache_leftpad, 'dtype', type(cache_leftpad).__name__)} "
                         f"{tuple(getattr(cache_leftpad, 'shape', ()))} on {getattr(cache_leftpad, 'device', '-')}")
    if not cache_leftpad.is_cuda and not _tracing() and b \
            and not bool(((cache_leftpad >= 0) & (cache_leftpad <= cache_seqlens.cpu())).all()):
        raise InputError(f"decode: cache_leftpad must lie in [0, cache_seqlens], got {cache_leftpad.tolist()[:16]} "
                         f"and {cache_seqlens.tolist()[:16]}")


def check_padded(q, k, q_lengths, kv_lengths, side: str):
    """A padded batch: q_lengths / kv_lengths int32 [B] on q's device (None: the whole axis),
    each entry's real rows at the start ("right" padding) or the end ("left") of the length
    axis. Returns (q_rows, kv_rows): int32 [B, 2] tensors of (first row, length), computed
    on the device (no host sync; lengths are clamped to [0, L] there, and checked when they
    are CPU tensors)."""
    if side not in ("right", "left"):
        raise InputError(f"padding_side must be 'right' (real rows first) or 'left' (real rows last), got {side!r}")
    b = q.shape[0]
    rows = []
    for name, n, t in (("q_lengths", q.shape[2], q_lengths), ("kv_lengths", k.shape[2], kv_lengths)):
        if t is None:
            t = torch.full((b,), n, dtype=torch.int32, device=q.device)
        elif not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or tuple(t.shape) != (b,):
            raise InputError(f"{name} must be an int32 tensor [{b}] (one length per batch entry), got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        elif t.device != q.device:
            raise InputError(f"{name} is on {t.device} but q is on {q.device}")
        elif not t.is_cuda and not _tracing() and b and not bool(((t >= 0) & (t <= n)).all()):
            raise InputError(f"{name} must lie in [0, {n}] (the padded length), got {t.tolist()[:16]}")
        length = t.clamp(0, n)
        start = torch.zeros_like(length) if side == "right" else n - length
        rows.append(torch.stack((start, length), 1).contiguous())
    return rows[0], rows[1]


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def check_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale):
    """Decoding inputs: q [B, H, Lq, D]; a contiguous cache k/v [B, Hk, Lmax, D/Dv], or a
    paged one [pages, page_size, Hk, D/Dv] with block_table int32 [B, pages per sequence]
    (FlashAttention/vLLM's layout); cache_seqlens int32 [B]: each sequence's key count,
    the new queries' own keys included. Values are checked on CPU tensors only."""
    what = "decode"
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise InputError(f"{what}: {name} must be a 4-dimensional tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.device != q.device:
            raise InputError(f"{what}: {name} is on {t.device} but q is on {q.device}")
    if q.dtype not in FLOAT_DTYPES or not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise InputError(f"{what}: q, k_cache and v_cache must share one floating dtype, "
                         f"got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    b, h, lq, d = q.shape
    paged = block_table is not None
    if paged:
        if not isinstance(block_table, torch.Tensor) or block_table.dim() != 2 or block_table.dtype != torch.int32 \
                or block_table.shape[0] != b or block_table.device != q.device:
            raise InputError(f"{what}: block_table must be an int32 tensor [{b}, pages per sequence] on {q.device}, "
                             f"got {getattr(block_table, 'dtype', type(block_table).__name__)} "
                             f"{tuple(getattr(block_table, 'shape', ()))}")
        hk, kd = k_cache.shape[2], k_cache.shape[3]
        layout = "[pages, page_size, kv_heads, head_dim]"
        if v_cache.shape[:3] != k_cache.shape[:3]:
            raise InputError(f"{what}: paged k_cache and v_cache must agree in [pages, page_size, kv_heads], got "
                             f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    else:
        hk, kd = k_cache.shape[1], k_cache.shape[3]
        layout = "[batch, kv_heads, max_len, head_dim]"
        if k_cache.shape[0] != b or v_cache.shape[:3] != k_cache.shape[:3]:
            raise InputError(f"{what}: k_cache and v_cache must be {layout} with batch {b}, got "
                             f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if kd != d:
        raise InputError(f"{what}: head dims differ: q has {d}, k_cache {layout} has {kd}")
    if hk == 0 or h % hk:
        raise InputError(f"{what}: the number of query heads ({h}) must be a multiple of the number of KV heads "
                         f"({hk}); k_cache is read as {layout}")
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype != torch.int32 \
            or tuple(cache_seqlens.shape) != (b,) or cache_seqlens.device != q.device:
        raise InputError(f"{what}: cache_seqlens must be an int32 tensor [{b}] on {q.device}, got "
                         f"{getattr(cache_seqlens, 'dtype', type(cache_seqlens).__name__)} "
                         f"{tuple(getattr(cache_seqlens, 'shape', ()))}")
    if d == 0:
        raise InputError(f"{what}: head_dim must be at least 1, got q {tuple(q.shape)}")
    capacity = block_table.shape[1] * k_cache.shape[1] if paged else k_cache.shape[2]
    check_lengths((capacity,), what)
    if not cache_seqlens.is_cuda and cache_seqlens.numel():
        lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
        if lo < 0 or hi > capacity:
            raise InputError(f"{what}: cache_seqlens must lie in [0, {capacity}] (the cache's capacity), "
                             f"got values in [{lo}, {hi}]")
        if paged and block_table.numel() and (int(block_table.min()) < 0 or int(block_table.max()) >= k_cache.shape[0]):
            raise InputError(f"{what}: block_table holds page ids outside [0, {k_cache.shape[0]})")
    return check_qkv(q, q[:, :1], q[:, :1], scale)


def check_kernel(q, lengths, what: str = "attention") -> None:
    """What the Triton backend adds: a dtype it computes in, and sequences its int32 positions hold."""
    if q.dtype == torch.float64:
        raise InputError(f"{what}: backend='triton' takes float16, bfloat16 or float32; float64 runs on "
                         "backend='reference'")
    if q.dtype == torch.bfloat16 and not q.is_cuda:
        raise InputError(f"{what}: bfloat16 on the CPU runs on backend='reference' (Triton's interpreter has no "
                         "bfloat16)")
    check_lengths(lengths, what)


def check_lengths(lengths, what: str = "attention") -> None:
    """Positions are in (-2**30, 2**30): the range the compiler proves the pattern's arithmetic for."""
    for n in lengths:  # (one comparison each: torch.compile traces it as a guard on the range, no break)
        if n >= SEQUENCE_LIMIT:
            raise InputError(f"{what}: sequences must have fewer than 2**30 tokens, got {n}")
