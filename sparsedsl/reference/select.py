"""Data-dependent parts of the semantics: top-k key-block selection and landmark
keys. Everything is computed in the caller's compute dtype (float32/float64).

Query rows are grouped by absolute query block: row i of a call with Lq
queries and Lk keys sits at q = Lk - Lq + i and belongs to group q // block.
Selections are indexed by group - first_group, first_group = (Lk - Lq) // block
(ir/topk.py: the layout).
"""
from __future__ import annotations

import torch

from ..atoms.dynamic import AttentionScore
from ..errors import InputError
from ..ir.topk import first_group, num_groups


def group_of_rows(q_len: int, kv_len: int, block: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The selection row (group - first group) of each query row."""
    rows = torch.arange(q_len) if rows is None else rows
    return torch.div(kv_len - q_len + rows, block, rounding_mode="floor") - first_group(q_len, kv_len, block)


def key_block_stats(k: torch.Tensor, block: int):
    """Per key block: mean, min and max over the keys present. k [B, Hk, Lk, D] ->
    three [B, Hk, nb, D] tensors; nb = ceil(Lk / block), the last block may be partial."""
    b, hk, lk, d = k.shape
    nb = -(-lk // block)
    block = min(block, max(lk, 1))  # (a block longer than the keys is the one partial block)
    pad = nb * block - lk
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(b, hk, nb, block, d)
    present = (torch.arange(nb * block, device=k.device) < lk).view(1, 1, nb, block, 1)
    count = present.sum(3).clamp(min=1).to(k.dtype)
    mean = (kp * present).sum(3) / count
    kmin = kp.masked_fill(~present, float("inf")).amin(3)
    kmax = kp.masked_fill(~present, float("-inf")).amax(3)
    return mean, kmin, kmax


def query_group_means(q: torch.Tensor, kv_len: int, block: int) -> torch.Tensor:
    """Mean of each query group's rows: q [B, H, Lq, D] -> [B, H, R, D]."""
    b, h, lq, d = q.shape
    r = num_groups(lq, kv_len, block)
    grp = group_of_rows(lq, kv_len, block).to(q.device)
    sums = torch.zeros((b, h, r, d), dtype=q.dtype, device=q.device).index_add_(2, grp, q)
    count = torch.bincount(grp, minlength=r).to(q.dtype).clamp(min=1)
    return sums / count.view(1, 1, r, 1)


def attention_block_scores(q: torch.Tensor, k: torch.Tensor, window: int, pool: int, block: int,
                           scale: float | None = None) -> torch.Tensor:
    """topk(score=attention(window, pool)) (SnapKV): the score of every key block, [B, H, nb]
    in q's dtype, nb = ceil(Lk / block); -inf for blocks without a prefix key.

    The observation window is the call's last m = min(window, Lq) query rows, at positions
    Lk - m .. Lk - 1; the prefix is the keys 0 .. P - 1 before it, P = Lk - m. Each window
    query at position t attends to the keys 0 .. t (full causal attention, logits q . k * scale,
    scale default 1 / sqrt(D), query head h over KV head h // (H / Hk)); the vote of prefix key
    j is the sum over the window of its softmax probabilities. Votes are max-pooled over the
    keys j - pool // 2 .. j - pool // 2 + pool - 1 that lie in the prefix (max_pool1d with
    kernel `pool`, stride 1, padding pool // 2, the first P outputs); a block scores the
    largest pooled vote of its prefix keys."""
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    m = min(window, lq)
    prefix = lk - m
    nb = -(-lk // block)
    out = torch.full((b, h, nb), float("-inf"), dtype=q.dtype, device=q.device)
    if prefix <= 0 or b * h == 0:
        return out
    qw = q[:, :, lq - m:].reshape(b, hk, h // hk, m, d)
    logits = torch.einsum("bgxmd,bgkd->bgxmk", qw, k) * scale
    future = torch.arange(lk, device=q.device).view(1, -1) > (prefix + torch.arange(m, device=q.device)).view(-1, 1)
    probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
    votes = probs[..., :prefix].sum(-2).reshape(b, h, prefix)
    left = min(pool // 2, prefix)
    right = min(pool - 1 - pool // 2, prefix)
    padded = torch.nn.functional.pad(votes, (left, right), value=float("-inf"))
    pooled = padded.unfold(-1, left + right + 1, 1).amax(-1)  # [B, H, P]
    blocks = -(-prefix // block)
    pooled = torch.nn.functional.pad(pooled, (0, blocks * block - prefix), value=float("-inf"))
    out[..., :blocks] = pooled.view(b, h, blocks, block).amax(-1)
    return out


def select_topk(q: torch.Tensor, k: torch.Tensor, n: int, block: int, score="mean",
                causal: bool = True, clamp: bool = False, scale: float | None = None) -> torch.Tensor:
    """The topk atom's selection: int32 [B, H, R, n], block ids ascending, -1 for empty slots.

    Candidates of group i are key blocks j <= i (causal) or all blocks; each is
    scored against the group's mean query (score=mean, minmax), or all groups share
    the scores of attention_block_scores (score=AttentionScore, with the call's
    `scale`; blocks without a prefix key are no candidates); the n best win, ties
    to the lower j. clamp=True: [B, H, R, min(n, nb)] (the same blocks, without the
    empty slots past the nb key blocks; n may be up to 2**62)."""
    if score == "given":
        raise InputError(f"topk(n={n}, block={block}, score=given) selects from the scores the call is given: pass "
                         "scores= (block scores [B, H or Hk, R, blocks]) or selection=")
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    r = num_groups(lq, lk, block)
    nb = -(-lk // block)
    if clamp:
        n = min(n, nb)
    elif n > nb and b * h * r * n > 1 << 31:
        raise InputError(f"topk(n={n}): the selection layout [B, H, R, n] = [{b}, {h}, {r}, {n}] is too large; "
                         f"there are only {nb} key blocks, so every candidate is selected (mask(q=, k=) and "
                         "attention take such an n)")
    out = torch.full((b, h, r, n), -1, dtype=torch.int32, device=q.device)
    if r == 0 or nb == 0 or b == 0 or h == 0:
        return out
    if isinstance(score, AttentionScore):
        scores = attention_block_scores(q, k, score.window, score.pool, block, scale)
        take = min(n, nb)
        out[..., :take] = select_given(scores[:, :, None].expand(b, h, r, nb), take, block, lq, lk, causal, h)
        return out
    qbar = query_group_means(q, lk, block).view(b, hk, h // hk, r, d)
    mean, kmin, kmax = key_block_stats(k, block)
    if score == "mean":
        scores = torch.einsum("bgxrd,bgjd->bgxrj", qbar, mean)
    else:
        scores = torch.empty((b, hk, h // hk, r, nb), dtype=q.dtype, device=q.device)
        step = max(1, (1 << 24) // max(1, b * h * nb * d))
        for r0 in range(0, r, step):
            qs = qbar[:, :, :, r0:r0 + step, None, :]
            lo = qs * kmin[:, :, None, None]
            hi = qs * kmax[:, :, None, None]
            scores[:, :, :, r0:r0 + step] = torch.maximum(lo, hi).sum(-1)
    scores = scores.reshape(b, h, r, nb)
    j = torch.arange(nb, device=q.device)
    group = first_group(lq, lk, block) + torch.arange(r, device=q.device)
    cand = (j.view(1, -1) <= group.view(-1, 1)) if causal else torch.ones((r, nb), dtype=torch.bool, device=q.device)
    cand = cand.expand(b, h, r, nb)
    # Best first, ties to the lower block: a stable sort by score, then a stable
    # sort that moves non-candidates behind the candidates.
    order = torch.sort(scores.masked_fill(~cand, float("-inf")), dim=-1, descending=True, stable=True).indices
    flags = torch.gather(cand, -1, order)
    order = torch.gather(order, -1, torch.sort(flags.to(torch.int8), dim=-1, descending=True, stable=True).indices)
    take = min(n, nb)
    chosen = order[..., :take]
    valid = torch.gather(cand, -1, chosen)
    big = torch.iinfo(torch.int32).max
    chosen = torch.where(valid, chosen, torch.full_like(chosen, big)).sort(dim=-1).values
    out[..., :take] = torch.where(chosen == big, -1, chosen).to(torch.int32)
    return out


def select_given(scores: torch.Tensor, n: int, block: int, q_len, kv_len, causal: bool, num_heads: int,
                 threshold: float | None = None) -> torch.Tensor:
    """topk(score=given): the n best of the given block scores per selection row, int32
    [B, H, R, n], ids ascending, -1 for empty slots. scores: float [B, H or Hk, R, nb] (one
    row per query group, first = (Lk - Lq) // block, as the selection's rows; nb >= the key
    blocks). q_len / kv_len: ints, or int tensors [B] (per entry: padded, packed, decoding).
    Candidates: the entry's key blocks (causal: up to the group's own), of groups that hold
    queries, whose score is a number above -inf (and >= threshold); ties to the lower block.
    Torch operations on the scores' device, fixed sizes: no host synchronisation."""
    b, hs, r, nb = scores.shape
    dev = scores.device
    if hs != num_heads:  # one score per KV head, shared by its query heads
        scores = scores.repeat_interleave(num_heads // hs, 1)
    lq = torch.as_tensor(q_len, device=dev).view(-1, 1, 1, 1).long()
    lk = torch.as_tensor(kv_len, device=dev).view(-1, 1, 1, 1).long()
    group = torch.div(lk - lq, block, rounding_mode="floor") + torch.arange(r, device=dev).view(1, 1, -1, 1)
    j = torch.arange(nb, device=dev).view(1, 1, 1, -1)
    cand = (j * block < lk) & (group <= torch.div(lk - 1, block, rounding_mode="floor")) & (lq > 0)
    if causal:
        cand = cand & (j <= group)
    cand = cand & (scores > float("-inf"))  # (NaN compares false: never a candidate)
    if threshold is not None:
        cand = cand & (scores >= threshold)
    take = min(n, nb)
    order = torch.sort(scores.masked_fill(~cand, float("-inf")), dim=-1, descending=True, stable=True).indices
    chosen = order[..., :take]
    big = torch.iinfo(torch.int32).max
    ids = torch.where(torch.gather(cand.expand_as(scores), -1, chosen), chosen, big).sort(dim=-1).values
    out = torch.full((b, num_heads, r, n), -1, dtype=torch.int32, device=dev)
    out[..., :take] = torch.where(ids == big, -1, ids).to(torch.int32)
    return out


def selected_block_mask(selection: torch.Tensor, num_key_blocks: int) -> torch.Tensor:
    """bool [B, H, R, nb]: True where the selection names the block."""
    b, h, r, n = selection.shape
    idx = selection.long().clamp(min=-1)
    idx = torch.where((idx < 0) | (idx >= num_key_blocks), num_key_blocks, idx)
    hit = torch.zeros((b, h, r, num_key_blocks + 1), dtype=torch.bool, device=selection.device)
    hit.scatter_(-1, idx, True)
    return hit[..., :num_key_blocks]


def landmark_keys(k: torch.Tensor, v: torch.Tensor, block: int):
    """Mean key and value of every complete key block: [B, Hk, Lk // block, D]."""
    b, hk, lk, d = k.shape
    nl = lk // block
    if nl == 0:  # (also a block longer than the keys: no reshape by a huge block)
        return k.new_zeros((b, hk, 0, d)), v.new_zeros((b, hk, 0, v.shape[-1]))
    kl = k[:, :, : nl * block].reshape(b, hk, nl, block, d).mean(3)
    vl = v[:, :, : nl * block].reshape(b, hk, nl, block, v.shape[-1]).mean(3)
    return kl, vl
