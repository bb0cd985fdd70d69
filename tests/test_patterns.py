"""The shipped pattern library (patterns/*.attn) against independent references.

Every expected mask here is written directly from the paper's (or library's)
formula in numpy, over absolute positions (bottom-right aligned when
q_len < kv_len); nothing in this file asks sparsedsl to build an expected value.
Dynamic patterns are checked against a naive per-group loop in float64, and
landmark patterns against a naive per-row softmax that appends the landmark
keys/values.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import sparsedsl

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"

# (q_len, kv_len): lengths around the block sizes used below (16, 64), and
# bottom-right aligned decoding / chunked-prefill shapes.
SHAPES = [(1, 1), (63, 63), (64, 64), (65, 65), (200, 200), (257, 257),
          (1, 257), (65, 200), (37, 257)]
# (num_heads, num_kv_heads): MHA and GQA.
HEADS = [(1, 1), (4, 4), (8, 2), (12, 4), (12, 12)]
# Every shape with two head layouts, plus every head layout on two shapes.
RUNS = ([(s, hh) for s in SHAPES for hh in [(1, 1), (12, 4)]]
        + [(s, hh) for s in [(65, 65), (37, 257)] for hh in [(4, 4), (8, 2), (12, 12)]])

_compiled: dict = {}


def compile_pattern(file: str, pattern: str | None = None, **params):
    key = (file, pattern, tuple(sorted(params.items())))
    if key not in _compiled:
        kw = dict(params)
        if pattern is not None:
            kw["pattern"] = pattern
        _compiled[key] = sparsedsl.compile_pattern(str(PATTERNS / file), **kw)
    return _compiled[key]


# --------------------------------------------------------------------------
# Independent references (numpy, absolute positions)
# --------------------------------------------------------------------------

def grid(lq: int, lk: int, H: int, Hk: int):
    """Broadcastable Q, K positions [1, Lq, 1] / [1, 1, Lk] and head ids h, hk [H, 1, 1]."""
    Q = np.arange(lk - lq, lk, dtype=np.int64)[None, :, None]
    K = np.arange(lk, dtype=np.int64)[None, None, :]
    h = np.arange(H, dtype=np.int64)[:, None, None]
    hk = h // (H // Hk)
    return Q, K, h, hk


def full_shape(m, lq, lk, H):
    return np.broadcast_to(m, (H, lq, lk)).copy()


def ref_streaming_llm(lq, lk, H, Hk, sink=4, window=1024):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    return full_shape((K <= Q) & ((K < sink) | (K > Q - window)), lq, lk, H)


def ref_s2(lq, lk, H, Hk, local=16, stride=8, block=64, head_offset=0, dense_heads=0):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    qb, kb = Q // block, K // block
    step = max(1, stride // Hk)
    vert = (kb + hk * step + head_offset) % stride == 0
    dense = hk >= Hk - dense_heads
    return full_shape((K <= Q) & (((qb - kb >= 0) & (qb - kb < local)) | vert | dense), lq, lk, H)


def dkernel_layout(lq, lk, H, Hk, local, stride, block, head_offset=0, dense_heads=0):
    """Transcription of DKernel's get_sparse_attn_mask(return_dense=True) and
    LocalStrideSparseAttention's GQA head mapping (homo_head=False,
    homo_within_group_head=True), for seqlen=kv_len, past_len=kv_len-q_len."""
    seqlen, past_len = lk, lk - lq
    num_q_per_kv = H // Hk
    is_gqa = num_q_per_kv > 1
    num_patterns = Hk if is_gqa else H
    num_sparse_heads = Hk - dense_heads
    blocks = -(-seqlen // block)
    q_pos = torch.arange(blocks)[None, :, None]
    k_pos = torch.arange(blocks)[None, None]
    head_sliding_step = max(1, stride // num_patterns)
    mask_vert_strided = [
        (torch.arange(blocks) + p * head_sliding_step + head_offset) % stride == 0
        if p < num_sparse_heads else torch.ones(blocks).bool()
        for p in range(num_patterns)]
    mask_vert_strided = torch.vstack(mask_vert_strided).unsqueeze(1)
    block_mask = ((q_pos >= k_pos) & ((q_pos - k_pos < local) | mask_vert_strided)).to(torch.int32)
    dense = torch.kron(block_mask, block_mask.new_ones((block, block)))[..., :seqlen, :seqlen]
    causal = torch.tril(torch.ones(seqlen, seqlen, dtype=torch.int32))[past_len:]
    dense = dense[..., past_len:, :] * causal[None]
    if num_patterns != H:  # one pattern per KV head, shared by its query heads
        dense = dense.repeat_interleave(num_q_per_kv, dim=0)
    return dense.bool().numpy()


def vllm_layout(lq, lk, H, local, stride, block):
    """Transcription of vLLM's blocksparse get_sparse_attn_mask (homo_head=False),
    dense mask, q_len=lq, max_seqlen=lk: note the `+ 1` and the q-head index."""
    num_blocks = -(-lk // block)
    q_pos = torch.arange(num_blocks)[None, :, None]
    k_pos = torch.arange(num_blocks)[None, None]
    head_sliding_step = max(1, int(stride / H))
    mask_vert_strided = [(torch.arange(num_blocks) + h * head_sliding_step + 1) % stride == 0
                         for h in range(H)]
    mask_vert_strided = torch.vstack(mask_vert_strided).unsqueeze(1)
    bm = ((q_pos >= k_pos) & ((q_pos - k_pos < local) | mask_vert_strided)).to(torch.int32)
    # vLLM takes max_seqlen as a multiple of block; trim the padded block rows
    # first so that `-q_len:` picks the last real rows for any length.
    dense = torch.kron(bm, bm.new_ones((block, block)))[..., :lk, :lk]
    causal = torch.tril(torch.ones(lk, lk, dtype=torch.int32))[-lq:]
    dense = dense[..., -lq:, :] * causal[None]
    return dense.bool().numpy()


def ref_s2_vllm(lq, lk, H, Hk, local=16, stride=8, block=64):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    qb, kb = Q // block, K // block
    vert = (kb + h * max(1, stride // H) + 1) % stride == 0
    return full_shape((K <= Q) & (((qb - kb >= 0) & (qb - kb < local)) | vert), lq, lk, H)


def ref_longgen_sparse(lq, lk, H, Hk, sink=64, window=4096, stride=8, block=64):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    return full_shape((K <= Q) & ((K < sink) | (K > Q - window) | ((K // block) % stride == 0)),
                      lq, lk, H)


def ref_longgen_full(lq, lk, H, Hk):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    return full_shape(K <= Q, lq, lk, H)


def ref_longgen(lq, lk, H, Hk, layer=0, num_layers=32, **sparse):
    if num_layers // 3 <= layer < num_layers - num_layers // 3:
        return ref_longgen_full(lq, lk, H, Hk)
    return ref_longgen_sparse(lq, lk, H, Hk, **sparse)


def ref_duo(lq, lk, H, Hk, retrieval=8, sink=64, recent=256):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    streaming = (K <= Q) & ((K < sink) | (K > Q - recent))
    is_retrieval = np.isin(h, list(range(H))[0:retrieval])   # heads[0:retrieval], Python slicing
    return full_shape(np.where(is_retrieval, K <= Q, streaming), lq, lk, H)


def ref_duo_gqa(lq, lk, H, Hk, retrieval_kv=2, sink=64, recent=256):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    streaming = (K <= Q) & ((K < sink) | (K > Q - recent))
    return full_shape(np.where(hk < retrieval_kv, K <= Q, streaming), lq, lk, H)


def ref_moa(lq, lk, H, Hk, sink=64, alpha=1024, beta_den=8):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    a = alpha * (1 + h % 4)                      # alpha_h
    b = (h // 4) % 4                             # beta_h * beta_den
    span = a + ((Q + 1) * b) // beta_den         # S_h(N) with N = q + 1
    return full_shape((K <= Q) & ((K < sink) | (Q - K < span)), lq, lk, H)


def ref_longformer(lq, lk, H, Hk, window=512, num_global=1):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    return full_shape((np.abs(Q - K) <= window // 2) | (Q < num_global) | (K < num_global),
                      lq, lk, H)


def ref_longformer_lm(lq, lk, H, Hk, window=512, dilation=2, dilated_heads=2):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    d = Q - K
    dil = (d >= 0) & (d < window * dilation) & (d % dilation == 0)
    plain = (d >= 0) & (d < window)
    is_dilated = np.isin(h, list(range(H))[:dilated_heads])  # heads[:dilated_heads]
    return full_shape(np.where(is_dilated, dil, plain), lq, lk, H)


def bigbird_hash_keep(qb: int, kb: int, seed: int, rand_num: int, rand_den: int) -> bool:
    """The seeded block hash of bigbird.attn, in plain Python integers."""
    x = (qb * 92821 + kb * 68917 + seed * 40503) % 65536
    y = (x * 2654435761) % 4294967296 // 65536
    return y % rand_den < rand_num


def ref_bigbird(lq, lk, H, Hk, block=64, window_blocks=3, global_blocks=2, rand_num=3,
                rand_den=64, seed=0, autoregressive=False):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    nb = -(-lk // block)
    rnd = np.array([[bigbird_hash_keep(i, j, seed, rand_num, rand_den) for j in range(nb)]
                    for i in range(nb)], dtype=bool)
    qb, kb = Q // block, K // block
    m = ((Q < global_blocks * block) | (K < global_blocks * block)
         | (np.abs(qb - kb) <= window_blocks // 2) | rnd[qb, kb])
    if autoregressive:
        m = m & (K <= Q)
    return full_shape(m, lq, lk, H)


def ref_bigbird_exact(lq, lk, H, Hk, block=64, window_blocks=3, global_blocks=2, num_rand=3, seed=0,
                      autoregressive=False):
    """bigbird_exact: the window and global blocks of ref_bigbird, and num_rand random blocks per
    query block picked by the stratified hash that docs/language.md states for random_blocks."""
    Q, K, h, hk = grid(lq, lk, H, Hk)
    nb = -(-max(lq, lk) // block) + 1
    rnd = np.zeros((H, nb, nb), dtype=bool)
    for head in range(H):
        for qb in range(nb):
            m, r = qb + 1, min(num_rand, qb + 1)
            for i in range(r):
                lo, hi = i * m // r, (i + 1) * m // r
                x = ((seed % 65536) * 40503 + head * 24593 + qb * 92821 + i * 68917) % 65536
                rnd[head, qb, lo + (x * 2654435761 % 4294967296 // 65536) % (hi - lo)] = True
    qb, kb = Q // block, K // block
    m = ((Q < global_blocks * block) | (K < global_blocks * block)
         | (np.abs(qb - kb) <= window_blocks // 2) | rnd[h, np.maximum(qb, 0), kb] & (qb >= 0))
    if autoregressive:
        m = m & (K <= Q)
    return full_shape(m, lq, lk, H)


def ref_longnet_segment(lq, lk, H, Hk, segment=2048, ratio=1):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    off = h % ratio                              # head j uses offset j mod r
    m = ((K <= Q) & (Q // segment == K // segment)
         & ((Q - (Q // segment) * segment) % ratio == off)
         & ((K - (K // segment) * segment) % ratio == off))
    return full_shape(m, lq, lk, H)


def ref_longnet(lq, lk, H, Hk, **p):
    cfg = dict(w1=2048, r1=1, w2=4096, r2=2, w3=8192, r3=4, w4=16384, r4=6, w5=32768, r5=12)
    cfg.update(p)
    out = np.zeros((H, lq, lk), dtype=bool)
    for i in range(1, 6):
        out |= ref_longnet_segment(lq, lk, H, Hk, segment=cfg[f"w{i}"], ratio=cfg[f"r{i}"])
    return out


def ref_longnet_dilated(lq, lk, H, Hk, size=2048):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    d = Q - K
    m = np.zeros_like(d, dtype=bool)
    for r in (1, 2, 4, 8, 16):
        m |= (d >= 0) & (d < size * r) & (d % r == 0)
    return full_shape(m, lq, lk, H)


STATIC = [
    # (file, pattern, reference, [param sets])
    ("streaming_llm.attn", None, ref_streaming_llm,
     [{}, dict(sink=3, window=17), dict(sink=0, window=1), dict(sink=70, window=5)]),
    ("s2_attention.attn", "s2_attention", ref_s2,
     [dict(local=2, stride=3, block=16), dict(local=1, stride=4, block=16, head_offset=1),
      dict(local=3, stride=16, block=16, head_offset=5, dense_heads=1),
      dict(local=2, stride=2, block=64), {}]),
    ("s2_attention.attn", "s2_attention_vllm", ref_s2_vllm,
     [dict(local=2, stride=3, block=16), dict(local=1, stride=16, block=16), {}]),
    ("longgen.attn", "longgen_sparse", ref_longgen_sparse,
     [{}, dict(sink=5, window=20, stride=3, block=16)]),
    ("longgen.attn", "longgen_full", ref_longgen_full, [{}]),
    ("longgen.attn", "longgen", ref_longgen,
     [dict(layer=0, sink=5, window=20, stride=3, block=16),
      dict(layer=12, sink=5, window=20, stride=3, block=16),
      dict(layer=21, sink=5, window=20, stride=3, block=16),
      dict(layer=22, sink=5, window=20, stride=3, block=16),
      dict(layer=3, num_layers=9, sink=2, window=9, stride=2, block=16)]),
    ("duo_attention.attn", "duo_attention", ref_duo,
     [{}, dict(retrieval=3, sink=4, recent=16), dict(retrieval=0, sink=2, recent=7),
      dict(retrieval=-2, sink=1, recent=30)]),
    ("duo_attention.attn", "duo_attention_gqa", ref_duo_gqa,
     [{}, dict(retrieval_kv=1, sink=4, recent=16)]),
    ("moa.attn", None, ref_moa,
     [{}, dict(sink=4, alpha=8, beta_den=8), dict(sink=0, alpha=3, beta_den=5)]),
    ("longformer.attn", "longformer", ref_longformer,
     [{}, dict(window=16, num_global=3), dict(window=7, num_global=0)]),
    ("longformer.attn", "longformer_lm", ref_longformer_lm,
     [{}, dict(window=8, dilation=3, dilated_heads=2), dict(window=5, dilation=2, dilated_heads=-1)]),
    ("bigbird.attn", None, ref_bigbird,
     [{}, dict(block=16, window_blocks=3, global_blocks=1, rand_num=2, rand_den=7, seed=11),
      dict(block=16, window_blocks=5, global_blocks=0, rand_num=1, rand_den=3, seed=123456,
           autoregressive=True)]),
    ("bigbird.attn", "bigbird_exact", ref_bigbird_exact,
     [{}, dict(block=16, window_blocks=3, global_blocks=1, num_rand=2, seed=11),
      dict(block=8, window_blocks=5, global_blocks=0, num_rand=4, seed=-5, autoregressive=True)]),
    ("longnet.attn", "longnet_segment", ref_longnet_segment,
     [{}, dict(segment=32, ratio=4), dict(segment=50, ratio=3)]),
    ("longnet.attn", "longnet", ref_longnet,
     [{}, dict(w1=8, r1=1, w2=16, r2=2, w3=32, r3=4, w4=48, r4=6, w5=96, r5=12)]),
    ("longnet.attn", "longnet_dilated", ref_longnet_dilated, [{}, dict(size=3), dict(size=1)]),
]


def _static_cases():
    for file, pat, ref, psets in STATIC:
        for i, params in enumerate(psets):
            yield pytest.param(file, pat, ref, params, id=f"{pat or file[:-5]}-{i}")


@pytest.mark.parametrize("file,pat,ref,params", list(_static_cases()))
def test_static_pattern_matches_reference(file, pat, ref, params):
    p = compile_pattern(file, pat, **params)
    for (lq, lk), (H, Hk) in RUNS:
        got = p.mask(lq, lk, num_heads=H, num_kv_heads=Hk)
        assert got.dtype == torch.bool and tuple(got.shape) == (H, lq, lk)
        want = ref(lq, lk, H, Hk, **params)
        if not np.array_equal(got.numpy(), want):
            bad = np.argwhere(got.numpy() != want)[0]
            hh, i, kk = (int(x) for x in bad)
            pytest.fail(f"{pat or file} {params} Lq={lq} Lk={lk} H={H} Hk={Hk}: first mismatch at "
                        f"head {hh}, q={lk - lq + i}, k={kk}: got {bool(got[hh, i, kk])}, "
                        f"want {bool(want[hh, i, kk])}")


def test_static_mask_default_kv_len_and_heads():
    p = compile_pattern("streaming_llm.attn", sink=2, window=5)
    got = p.mask(40)
    assert tuple(got.shape) == (1, 40, 40)
    assert np.array_equal(got.numpy(), ref_streaming_llm(40, 40, 1, 1, sink=2, window=5))


# S2: block-for-block against DKernel's and vLLM's layout code ---------------

S2_CONFIGS = [dict(local=2, stride=3, block=16), dict(local=1, stride=4, block=16),
              dict(local=3, stride=8, block=16), dict(local=2, stride=16, block=32),
              dict(local=16, stride=8, block=64), dict(local=1, stride=2, block=16)]


@pytest.mark.parametrize("cfg", S2_CONFIGS, ids=lambda c: "l{local}s{stride}b{block}".format(**c))
@pytest.mark.parametrize("head_offset,dense_heads", [(0, 0), (1, 0), (3, 1), (0, 2)])
def test_s2_matches_dkernel_layout(cfg, head_offset, dense_heads):
    p = compile_pattern("s2_attention.attn", "s2_attention", head_offset=head_offset,
                        dense_heads=dense_heads, **cfg)
    if (head_offset, dense_heads) == (0, 0):
        runs = RUNS + [(s, (2, 2)) for s in [(64, 64), (200, 200)]]
        runs += [(s, hh) for s in [(300, 1000), (1, 1000)] for hh in [(4, 4), (8, 2)]]
        runs += [(s, hh) for s in [(65, 200), (257, 257)] for hh in [(32, 8), (32, 32)]]
    else:
        runs = [(s, hh) for s in [(1, 1), (65, 65), (257, 257), (1, 257), (37, 257)]
                for hh in [(1, 1), (8, 2), (12, 4)]]
    for (lq, lk), (H, Hk) in runs:
        if dense_heads > Hk:
            continue
        want = dkernel_layout(lq, lk, H, Hk, cfg["local"], cfg["stride"], cfg["block"],
                              head_offset, dense_heads)
        got = p.mask(lq, lk, num_heads=H, num_kv_heads=Hk).numpy()
        assert np.array_equal(got, want), (cfg, head_offset, dense_heads, lq, lk, H, Hk)


@pytest.mark.parametrize("cfg", S2_CONFIGS, ids=lambda c: "l{local}s{stride}b{block}".format(**c))
def test_s2_vllm_matches_vllm_layout(cfg):
    p = compile_pattern("s2_attention.attn", "s2_attention_vllm", **cfg)
    runs = [(s, H) for s in SHAPES for H in (1, 12)] + [((65, 65), 4), ((37, 257), 8),
                                                         ((300, 1000), 4), ((257, 257), 32)]
    for (lq, lk), H in runs:
        want = vllm_layout(lq, lk, H, cfg["local"], cfg["stride"], cfg["block"])
        got = p.mask(lq, lk, num_heads=H, num_kv_heads=H).numpy()
        assert np.array_equal(got, want), (cfg, lq, lk, H)


def test_s2_default_is_phi3_small_layout():
    # Phi-3-small: 32 query heads, 8 KV heads, block 64, 16 local blocks, stride 8.
    p = compile_pattern("s2_attention.attn", "s2_attention")
    got = p.mask(2048, 2048, num_heads=32, num_kv_heads=8).numpy()
    assert np.array_equal(got, dkernel_layout(2048, 2048, 32, 8, 16, 8, 64))
    # Heads of different KV groups stride over different blocks, a group shares one.
    assert not np.array_equal(got[0], got[4]) and np.array_equal(got[0], got[3])


# --------------------------------------------------------------------------
# Dynamic patterns: naive selection, ordinary-key mask, forward
# --------------------------------------------------------------------------

def naive_topk(q: np.ndarray, k: np.ndarray, n: int, block: int, score: str = "mean",
               causal: bool = True):
    """Plain-loop reference of the topk atom. q [B,H,Lq,D], k [B,Hk,Lk,D] (float64).

    Returns the selection [B,H,R,n] (ascending block ids, -1 pads) and, per
    (b, h, r), the score gap between the n-th and (n+1)-th best candidate
    (inf when every candidate is selected), so that callers can leave out
    groups whose choice a float32 kernel could legitimately flip."""
    B, H, Lq, D = q.shape
    Hk, Lk = k.shape[1], k.shape[2]
    q0 = Lk - Lq
    first, last = q0 // block, (Lk - 1) // block
    R = last - first + 1
    nkb = -(-Lk // block)
    sel = np.full((B, H, R, n), -1, dtype=np.int64)
    gap = np.full((B, H, R), math.inf)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hk)
            for r in range(R):
                i = first + r
                rows = [t for t in range(Lq) if (q0 + t) // block == i]
                qbar = np.mean([q[b, h, t] for t in rows], axis=0)
                cands = list(range(0, i + 1)) if causal else list(range(nkb))
                scores = {}
                for j in cands:
                    keys = k[b, g, j * block:min((j + 1) * block, Lk)]
                    if score == "mean":
                        s = float(np.dot(qbar, keys.mean(axis=0)))
                    else:  # Quest: sum_d max(qbar_d * kmin_d, qbar_d * kmax_d)
                        s = float(np.maximum(qbar * keys.min(axis=0), qbar * keys.max(axis=0)).sum())
                    scores[j] = s
                order = sorted(cands, key=lambda j: (-scores[j], j))
                chosen = sorted(order[:n])
                sel[b, h, r, :len(chosen)] = chosen
                if len(order) > n > 0:
                    gap[b, h, r] = scores[order[n - 1]] - scores[order[n]]
    return sel, gap


def planted_qk(B, H, Hk, lq, lk, D, block, seed, needles=3):
    """Gaussian q/k plus planted needles: for every (b, query head), `needles` key
    blocks of its KV head get a strong component along a head-specific direction
    that the head's queries share, with distinct strengths."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, lq, D)) * 0.3
    k = rng.standard_normal((B, Hk, lk, D)) * 0.3
    nkb = -(-lk // block)
    planted = {}
    for b in range(B):
        for h in range(H):
            g = h // (H // Hk)
            d = h % D
            q[b, h, :, d] += 2.0 + rng.random(lq)
            blocks = rng.choice(nkb, size=min(needles, nkb), replace=False)
            for s, j in enumerate(blocks):
                k[b, g, j * block:(j + 1) * block, d] += 3.0 + 2.0 * s
            planted[(b, h)] = [int(j) for j in blocks]
    return q.astype(np.float32).astype(np.float64), k.astype(np.float32).astype(np.float64), planted


def t32(x):
    return torch.from_numpy(x).to(torch.float32)


def blocks_to_mask(sel: np.ndarray, lq: int, lk: int, block: int) -> np.ndarray:
    """[B,H,R,n] selected block ids -> [B,H,Lq,Lk] visibility of those blocks."""
    B, H, R, n = sel.shape
    q0 = lk - lq
    out = np.zeros((B, H, lq, lk), dtype=bool)
    for b in range(B):
        for h in range(H):
            for t in range(lq):
                r = (q0 + t) // block - q0 // block
                for j in sel[b, h, r]:
                    if j >= 0:
                        out[b, h, t, j * block:min((j + 1) * block, lk)] = True
    return out


def naive_forward(q, k, v, visible, landmark_block=None):
    """Per-row float64 softmax over the visible ordinary keys plus, when
    landmark_block is set, one landmark per complete key block j < q // block
    (its key/value: the mean of the block's keys/values)."""
    B, H, Lq, D = q.shape
    Hk, Lk = k.shape[1], k.shape[2]
    q0 = Lk - Lq
    scale = 1.0 / math.sqrt(D)
    out = np.zeros((B, H, Lq, v.shape[-1]))
    lse = np.full((B, H, Lq), -math.inf)
    L = landmark_block
    n_complete = Lk // L if L else 0
    for b in range(B):
        for h in range(H):
            g = h // (H // Hk)
            lm_k = [k[b, g, j * L:(j + 1) * L].mean(0) for j in range(n_complete)]
            lm_v = [v[b, g, j * L:(j + 1) * L].mean(0) for j in range(n_complete)]
            for t in range(Lq):
                pos = q0 + t
                ks = list(k[b, g][visible[b, h, t]])
                vs = list(v[b, g][visible[b, h, t]])
                if L:
                    ks += lm_k[:min(pos // L, n_complete)]
                    vs += lm_v[:min(pos // L, n_complete)]
                if not ks:
                    continue
                logits = np.stack(ks) @ q[b, h, t] * scale
                m = logits.max()
                w = np.exp(logits - m)
                lse[b, h, t] = m + math.log(w.sum())
                out[b, h, t] = (w[:, None] * np.stack(vs)).sum(0) / w.sum()
    return out, lse


def static_grid(lq, lk, H, Hk):
    Q, K, h, hk = grid(lq, lk, H, Hk)
    return Q[None], K[None]


# Each dynamic case: file, pattern, params, topk spec (n, block, score, causal) or
# None, the static part of the ordinary-key mask as f(Q, K) -> (enclosing, union
# operands), and the landmark block (or None).
def _quest_static(Q, K, p):
    return K <= Q, np.zeros(1, dtype=bool)


def _reatt_static(Q, K, p):
    return K <= Q, (K < p["sink"]) | (K > Q - p["local"])


def _nsa_static(Q, K, p):
    sb = p["sel_block"]
    return K <= Q, ((K > Q - p["window"]) | (K < sb)
                    | ((Q // sb - K // sb >= 0) & (Q // sb - K // sb < 2)))


def _landmark_static(Q, K, p):
    b = p["block"]
    return np.ones(1, dtype=bool), (K <= Q) & (Q // b == K // b)


def _landret_static(Q, K, p):
    b = p["block"]
    return K <= Q, (Q // b == K // b)


def _cca_static(Q, K, p):
    g = p["group"]
    return np.ones(1, dtype=bool), (K <= Q) & (K >= (Q // g) * g - p["local"])


DYNAMIC = [
    # file, pattern, params, topk(n, block, score, causal) | None, static fn, landmark block
    ("quest.attn", None, dict(budget=48, page=16), (3, 16, "minmax", True), _quest_static, None),
    ("quest.attn", None, dict(budget=40, page=8), (5, 8, "minmax", True), _quest_static, None),
    ("reattention.attn", None, dict(sink=3, local=10, budget=32, chunk=16),
     (2, 16, "mean", True), _reatt_static, None),
    ("reattention.attn", None, dict(sink=1, local=1, budget=4, chunk=1),   # token-level
     (4, 1, "mean", True), _reatt_static, None),
    ("nsa.attn", None, dict(window=12, selected=5, sel_block=16, cmp_block=8),
     (2, 16, "mean", True), _nsa_static, 8),
    ("landmark.attn", "landmark", dict(block=16), None, _landmark_static, 16),
    ("landmark.attn", "landmark", dict(block=10), None, _landmark_static, 10),
    ("landmark.attn", "landmark_retrieval", dict(block=16, retrieved=2),
     (2, 16, "mean", True), _landret_static, None),
    ("cca.attn", None, dict(group=8, local=16), None, _cca_static, 8),
    ("cca.attn", None, dict(group=16, local=0), None, _cca_static, 16),
]

DYN_SHAPES = [(1, 1), (16, 16), (65, 65), (70, 70), (1, 70), (23, 70), (40, 103)]
DYN_SHAPES_TOKEN = [(1, 1), (16, 16), (1, 45), (23, 45)]   # block 1: one group per query
DYN_HEADS = [(1, 1), (4, 2), (4, 4)]


def _dyn_id(case):
    return f"{case[1] or case[0][:-5]}-" + "-".join(f"{k}{v}" for k, v in case[2].items())


@pytest.mark.parametrize("case", DYNAMIC, ids=_dyn_id)
def test_dynamic_pattern(case):
    file, pat, params, spec, static_fn, lm_block = case
    p = compile_pattern(file, pat, **params)
    B, D = 2, 8
    compared = total = 0
    shapes = DYN_SHAPES if spec is None or spec[1] > 1 else DYN_SHAPES_TOKEN
    for si, (lq, lk) in enumerate(shapes):
        for H, Hk in DYN_HEADS:
            block = spec[1] if spec else 16
            q, k, _ = planted_qk(B, H, Hk, lq, lk, D, block, seed=17 * si + H + Hk)
            v = np.random.default_rng(si).standard_normal((B, Hk, lk, D)).astype(np.float32)
            v = v.astype(np.float64)
            where = f"{file}:{pat} {params} Lq={lq} Lk={lk} H={H} Hk={Hk}"
            Q, K = static_grid(lq, lk, H, Hk)
            enclosing, ops = static_fn(Q, K, params)
            ordinary = np.broadcast_to(ops, (B, H, lq, lk)).copy()
            rows_ok = np.ones((B, H, lq), dtype=bool)  # rows whose selection is unambiguous
            if spec is not None:
                n, blk, score, causal = spec
                sel, gap = naive_topk(q, k, n, blk, score, causal)
                clear = gap > 1e-4
                total += clear.size
                compared += int(clear.sum())
                got_sel = p.select_blocks(t32(q), t32(k))
                assert tuple(got_sel.shape) == sel.shape, (where, tuple(got_sel.shape), sel.shape)
                got_sel = got_sel.numpy().astype(np.int64)
                bad = ~(got_sel == sel).all(-1) & clear
                if bad.any():
                    b_, h_, r_ = (int(x) for x in np.argwhere(bad)[0])
                    pytest.fail(f"select_blocks differs at {where}, batch {b_} head {h_} row {r_}: "
                                f"got {got_sel[b_, h_, r_].tolist()}, want {sel[b_, h_, r_].tolist()}")
                ordinary |= blocks_to_mask(sel, lq, lk, blk)
                r_of_row = (np.arange(lk - lq, lk) // blk) - (lk - lq) // blk
                rows_ok = clear[:, :, r_of_row]
            ordinary &= np.broadcast_to(enclosing, (B, H, lq, lk))
            got = p.mask(lq, lk, num_heads=H, num_kv_heads=Hk, q=t32(q), k=t32(k))
            assert tuple(got.shape) == (B, H, lq, lk) and got.dtype == torch.bool, where
            diff = (got.numpy() != ordinary).any(-1) & rows_ok
            if diff.any():
                b_, h_, t_ = (int(x) for x in np.argwhere(diff)[0])
                pytest.fail(f"mask differs at {where}, batch {b_} head {h_} q={lk - lq + t_}: got keys "
                            f"{np.flatnonzero(got.numpy()[b_, h_, t_]).tolist()}, want "
                            f"{np.flatnonzero(ordinary[b_, h_, t_]).tolist()}")
            out, lse = p(t32(q), t32(k), t32(v), return_lse=True)
            want_out, want_lse = naive_forward(q, k, v, ordinary, lm_block)
            lse, out = lse.numpy(), out.numpy()
            assert np.array_equal(np.isneginf(lse)[rows_ok], np.isneginf(want_lse)[rows_ok]), where
            fin = np.isfinite(want_lse) & rows_ok
            np.testing.assert_allclose(lse[fin], want_lse[fin], rtol=1e-4, atol=1e-4, err_msg=where)
            np.testing.assert_allclose(out[fin], want_out[fin], rtol=1e-4, atol=1e-4, err_msg=where)
    if spec is not None:
        assert compared >= 0.9 * total, f"too many near-ties in the test data ({compared}/{total})"


def test_planted_needles_are_selected():
    # The planted blocks carry by far the largest scores, and in the last query
    # group every block is a causal candidate, so a top-3 selection there must be
    # exactly the 3 planted blocks of the head.
    p = compile_pattern("reattention.attn", sink=1, local=1, budget=48, chunk=16)
    lq = lk = 160
    q, k, planted = planted_qk(1, 4, 2, lq, lk, 8, 16, seed=5, needles=3)
    sel = p.select_blocks(t32(q), t32(k)).numpy()
    last = sel.shape[2] - 1
    for (b, h), blocks in planted.items():
        assert sel[b, h, last].tolist() == sorted(blocks), (h, blocks, sel[b, h, last])


def test_topk_ties_pick_lower_blocks_and_pad():
    # All keys identical -> every candidate block ties; the selection must be the
    # lowest block ids, padded with -1 when there are fewer candidates than n.
    n, page = 5, 8
    p = compile_pattern("quest.attn", budget=n * page, page=page)
    for lq, lk in [(32, 32), (20, 44), (1, 44)]:
        q = torch.ones(1, 2, lq, 4)
        k = torch.ones(1, 1, lk, 4) * 0.5
        got = p.select_blocks(q, k).numpy()
        first = (lk - lq) // page
        for r in range(got.shape[2]):
            i = first + r
            want = list(range(min(n, i + 1))) + [-1] * max(0, n - (i + 1))
            assert got[0, 0, r].tolist() == want and got[0, 1, r].tolist() == want, (lq, lk, r)


def test_minmax_differs_from_mean_scoring():
    # One key block whose mean is zero but whose spread is large: the Quest
    # upper bound picks it, a mean score would not.
    page = 4
    lk = 16
    k = torch.zeros(1, 1, lk, 2)
    k[0, 0, 0:4, 0] = torch.tensor([5.0, -5.0, 5.0, -5.0])  # block 0: mean 0, max 5
    k[0, 0, 4:8, 0] = 1.0                                   # block 1: mean 1, max 1
    k[0, 0, 8:12, 0] = 0.5                                  # block 2
    k[0, 0, 12:16, 0] = 0.25                                # block 3
    q = torch.zeros(1, 1, 1, 2)
    q[0, 0, 0, 0] = 1.0
    quest = compile_pattern("quest.attn", budget=page, page=page)  # n = 1
    assert quest.select_blocks(q, k).numpy()[0, 0, 0].tolist() == [0]
    q64, k64 = q.double().numpy(), k.double().numpy()
    assert naive_topk(q64, k64, 1, page, "minmax")[0][0, 0, 0].tolist() == [0]
    assert naive_topk(q64, k64, 1, page, "mean")[0][0, 0, 0].tolist() == [1]


# --------------------------------------------------------------------------
# Every shipped file and pattern compiles with its defaults
# --------------------------------------------------------------------------

ALL_PATTERNS = {
    "streaming_llm.attn": ["streaming_llm"],
    "s2_attention.attn": ["s2_attention", "s2_attention_vllm"],
    "longgen.attn": ["longgen_sparse", "longgen_full", "longgen"],
    "duo_attention.attn": ["duo_attention", "duo_attention_gqa"],
    "moa.attn": ["moa"],
    "longformer.attn": ["longformer", "longformer_lm"],
    "bigbird.attn": ["bigbird", "bigbird_exact"],
    "longnet.attn": ["longnet_segment", "longnet", "longnet_dilated"],
    "landmark.attn": ["landmark", "landmark_retrieval"],
    "nsa.attn": ["nsa"],
    "cca.attn": ["cca"],
    "quest.attn": ["quest"],
    "reattention.attn": ["reattention"],
    "razor_attention.attn": ["razor_attention"],
    "seer_attention.attn": ["seer_attention"],
    "snapkv.attn": ["snapkv"],
}


def test_library_is_complete():
    assert sorted(p.name for p in PATTERNS.glob("*.attn")) == sorted(ALL_PATTERNS)
    for f in PATTERNS.glob("*.attn"):
        head = f.read_text().lstrip().splitlines()[0]
        assert head.startswith("#"), f"{f.name} must start with its documentation comment"
        assert "arXiv:" in f.read_text(), f"{f.name} must cite its paper"


@pytest.mark.parametrize("file,pattern", [(f, p) for f, ps in ALL_PATTERNS.items() for p in ps])
def test_every_pattern_compiles_with_defaults(file, pattern):
    p = compile_pattern(file, pattern)
    if file == "seer_attention.attn":  # the gate's scores come with the call: one query block, one key block
        q, k, v = torch.randn(1, 2, 9, 4), torch.randn(1, 1, 9, 4), torch.randn(1, 1, 9, 4)
        out = p(q, k, v, scores=torch.ones(1, 1, 1, 1))
        assert tuple(out.shape) == (1, 2, 9, 4) and torch.isfinite(out).all()
    elif file in ("quest.attn", "reattention.attn", "nsa.attn", "landmark.attn", "cca.attn", "razor_attention.attn",
                  "snapkv.attn"):
        q = torch.randn(1, 2, 9, 4)
        k = torch.randn(1, 1, 9, 4)
        out = p(q, k, torch.randn(1, 1, 9, 4))
        assert tuple(out.shape) == (1, 2, 9, 4) and torch.isfinite(out).all()
    else:
        m = p.mask(9, 9, num_heads=2, num_kv_heads=1)
        assert tuple(m.shape) == (2, 9, 9) and m.dtype == torch.bool


# --------------------------------------------------------------------------
# SeerAttention: the gate's block scores given with the call
# --------------------------------------------------------------------------

def naive_seer(q, k, v, scores, n, block, threshold=None):
    """SeerAttention from the paper: each query block attends, with token causality, to
    the n key blocks its gate scores highest among the blocks up to its own (ties to the
    lower block; -inf and NaN never chosen; with a threshold only blocks scoring >= it).
    Per row, in float64; scores [B, H or Hk, R, blocks] in query-block rows from
    (Lk - Lq) // block."""
    B, H, lq, D = q.shape
    Hk, lk = k.shape[1], k.shape[2]
    out, lse = np.zeros((B, H, lq, v.shape[-1])), np.full((B, H, lq), -np.inf)
    first = (lk - lq) // block
    for b in range(B):
        for h in range(H):
            hk = h // (H // Hk)
            for t in range(lq):
                pos = lk - lq + t
                g = pos // block
                s = scores[b, h if scores.shape[1] == H else hk, g - first]
                cands = [j for j in range(g + 1) if np.isfinite(s[j]) and (threshold is None or s[j] >= threshold)]
                chosen = sorted(cands, key=lambda j: (-s[j], j))[:n]
                keys = [kk for kk in range(pos + 1) if kk // block in chosen]
                if not keys:
                    continue
                logits = k[b, hk, keys] @ q[b, h, t] / math.sqrt(D)
                m = logits.max()
                w = np.exp(logits - m)
                lse[b, h, t] = m + math.log(w.sum())
                out[b, h, t] = (w[:, None] * v[b, hk, keys]).sum(0) / w.sum()
    return out, lse


@pytest.mark.parametrize("per_kv_head,threshold", [(False, None), (True, None), (False, 0.0)])
def test_seer_attention_matches_the_paper(per_kv_head, threshold):
    block, n, B, H, Hk, lq, lk, D = 16, 2, 2, 4, 2, 40, 70, 8
    p = compile_pattern("seer_attention.attn", budget=n * block, block=block)
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(s) for s in ((B, H, lq, D), (B, Hk, lk, D), (B, Hk, lk, D)))
    rows = (lk - 1) // block - (lk - lq) // block + 1
    scores = np.round(rng.standard_normal((B, Hk if per_kv_head else H, rows, -(-lk // block))), 1)  # ties
    scores[0, 0, 1, 0] = -np.inf
    scores[1, -1, 2, 1] = np.nan
    want_out, want_lse = naive_seer(q, k, v, scores, n, block, threshold)
    kw = dict(scores=torch.from_numpy(scores), threshold=threshold)
    out, lse = p(*(torch.from_numpy(x) for x in (q, k, v)), return_lse=True, **kw)
    assert np.array_equal(np.isneginf(lse.numpy()), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse.numpy()[fin], want_lse[fin], atol=1e-10)
    np.testing.assert_allclose(out.numpy(), want_out, atol=1e-10)
    from sparsedsl.kernels.launch import interpreter_ready

    if interpreter_ready():  # the kernels, float32
        out32, lse32 = p(*(torch.from_numpy(x).float() for x in (q, k, v)), return_lse=True, backend="triton",
                         _config=(16, 16), **kw)
        np.testing.assert_allclose(lse32.numpy()[fin], want_lse[fin], atol=1e-4)
        np.testing.assert_allclose(out32.numpy(), want_out, atol=1e-4)
