"""topk(score=attention(window=w, pool=p)) (SnapKV, patterns/snapkv.attn) against a naive
reading of the paper written here in float64 Python (explicit loops, softmax and padding; none
of the library's reference code): the reference's selection exactly, the kernels' block scores
within float32 error and their selection as a top-n of the naive scores; attention with the
selection against the float64 reference (error-ratio rule); decoding with the prefill's
selection reused; the error messages."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import sparsedsl as sd
from sparsedsl import InputError, PatternError
from sparsedsl.reference.attention import reference_attention
from sparsedsl.testing import assert_matches_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SNAPKV = Path(__file__).resolve().parent.parent / "patterns" / "snapkv.attn"


def src(n, block, window, pool, causal=True):
    return (f"pattern s() {{ causal & (window({window}) | topk({n}, block={block}, "
            f"score=attention(window={window}, pool={pool}), causal={'true' if causal else 'false'})) }}")


def naive_scores(q, k, window, pool, block, scale=None):
    """SnapKV's block scores of one entry, float64 nested lists [H][nb] (None: no prefix key).
    q [H, Lq, D], k [Hk, Lk, D]. The observation window is the last min(window, Lq) queries; each
    attends causally (softmax over keys 0 .. its position); a prefix key's vote is the sum of its
    probabilities over the window; max-pool of size `pool` (stride 1, padding pool // 2 on the
    left, the rest on the right, padding never wins); a block takes its best prefix key."""
    h, lq, d = q.shape
    hk, lk = k.shape[0], k.shape[1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    m = min(window, lq)
    prefix = lk - m
    qs, ks = q.double().tolist(), k.double().tolist()
    out = []
    for head in range(h):
        kv = head // (h // hk)
        votes = [0.0] * max(prefix, 0)
        for i in range(lq - m, lq):
            pos = lk - lq + i
            logits = [sum(a * b for a, b in zip(qs[head][i], ks[kv][j])) * scale for j in range(pos + 1)]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            total = sum(weights)
            for j in range(prefix):
                votes[j] += weights[j] / total
        pooled = [max(votes[i] for i in range(j - pool // 2, j - pool // 2 + pool) if 0 <= i < prefix)
                  for j in range(prefix)]
        nb = -(-lk // block)
        out.append([max(pooled[j * block:(j + 1) * block]) if j * block < prefix else None for j in range(nb)])
    return out


def naive_selection(scores, n, block, lq, lk, causal):
    """int32 [H, R, n]: each query group's n best candidates (blocks with a score; causal: up to
    the group's own), ids ascending, ties to the lower block, -1 for empty slots."""
    first, last = (lk - lq) // block, (lk - 1) // block
    out = []
    for row in scores:
        rows = []
        for g in range(first, last + 1):
            cand = [j for j, s in enumerate(row) if s is not None and (not causal or j <= g)]
            best = sorted(sorted(cand, key=lambda j: (-row[j], j))[:n])
            rows.append(best + [-1] * (n - len(best)))
        out.append(rows)
    return torch.tensor(out, dtype=torch.int32).view(len(scores), last - first + 1 if lq else 0, n)


def _qk(b, h, hk, lq, lk, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, lq, d, generator=g), torch.randn(b, hk, lk, d, generator=g)


def _naive(q, k, n, block, window, pool, causal, scale=None):
    scores = [naive_scores(q[i], k[i], window, pool, block, scale) for i in range(q.shape[0])]
    sel = torch.stack([naive_selection(s, n, block, q.shape[2], k.shape[2], causal) for s in scores])
    return scores, sel


# (H, Hk, Lq, Lk, n, block, window, pool, causal): pool 1, even pools, block > 1, GQA, a window
# longer than the call (Lq < window < Lk, and window >= Lq = Lk: no prefix), Lq < Lk
CASES = [
    (2, 2, 24, 24, 3, 1, 5, 3, True),
    (4, 2, 24, 24, 4, 1, 6, 1, False),
    (4, 1, 19, 31, 5, 1, 4, 4, True),
    (2, 1, 24, 24, 2, 4, 5, 2, True),
    (2, 2, 7, 33, 3, 8, 12, 5, False),
    (2, 1, 9, 9, 3, 1, 12, 3, True),
    (2, 2, 33, 33, 40, 1, 4, 6, True),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_reference_matches_the_paper(case):
    h, hk, lq, lk, n, block, window, pool, causal = case
    q, k = _qk(2, h, hk, lq, lk, seed=lq + pool)
    p = sd.compile_pattern(src(n, block, window, pool, causal))
    scores, want = _naive(q, k, n, block, window, pool, causal)
    got = p.select_blocks(q.double(), k.double(), backend="reference")
    assert torch.equal(got, want)
    # the selection of a float32 call (its rows all share one vector of block scores)
    assert torch.equal(p.select_blocks(q, k, backend="reference"), want)
    # the window's queries alone vote the same: their call's last row is the decoding row
    last = p.select_blocks(q[:, :, -window:].double(), k.double(), backend="reference")[:, :, -1:]
    assert torch.equal(last, want[:, :, -1:])
    # the scale takes part in the softmax
    half = _naive(q[:1], k[:1], n, block, window, pool, causal, scale=0.5)[1]
    assert torch.equal(p.select_blocks(q[:1].double(), k[:1].double(), backend="reference", scale=0.5), half)


def _assert_top_n(sel, scores, n, block, lq, lk, causal, tol=1e-5):
    """Each row of sel [B, H, R, n] holds n best candidates of the naive scores up to tol (so that
    float32 near-ties may go either way), ascending, -1 only for missing candidates."""
    first = (lk - lq) // block
    for b, per_head in enumerate(scores):
        for h, row in enumerate(per_head):
            for r in range(sel.shape[2]):
                cand = [j for j, s in enumerate(row) if s is not None and (not causal or j <= first + r)]
                got = [j for j in sel[b, h, r].tolist() if j >= 0]
                assert got == sorted(set(got)) and set(got) <= set(cand) and len(got) == min(n, len(cand))
                rest = [row[j] for j in cand if j not in got]
                if got and rest:
                    assert min(row[j] for j in got) >= max(rest) - tol, (b, h, r)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[4]], ids=["dense", "gqa4", "block4", "block8"])
def test_kernel_scores_and_selection(case):
    from sparsedsl.kernels.votes import block_scores

    h, hk, lq, lk, n, block, window, pool, causal = case
    q, k = _qk(1, h, hk, lq, lk, seed=lq + pool)
    p = sd.compile_pattern(src(n, block, window, pool, causal))
    scores, _ = _naive(q, k, n, block, window, pool, causal)
    got = block_scores(q.to(DEV), k.to(DEV), window, pool, block, q.shape[-1] ** -0.5).cpu()
    want = torch.tensor([[-math.inf if s is None else s for s in row] for row in scores[0]], dtype=torch.float64)
    torch.testing.assert_close(got[0].double(), want, atol=1e-6, rtol=1e-5)
    sel = p.select_blocks(q.to(DEV), k.to(DEV), backend="triton").cpu()
    _assert_top_n(sel, scores, n, block, lq, lk, causal)


def test_padded_and_packed_calls_select_each_entry_on_its_own():
    p = sd.compile_pattern(src(3, 1, 4, 3))
    q, k = _qk(2, 2, 1, 20, 20, seed=5)
    lens = [20, 13]
    n = torch.tensor(lens, dtype=torch.int32)
    padded = p.select_blocks(q.to(DEV), k.to(DEV), q_lengths=n.to(DEV), kv_lengths=n.to(DEV), backend="triton").cpu()
    ref = p.select_blocks(q, k, q_lengths=n, kv_lengths=n, backend="reference")
    for b, L in enumerate(lens):
        scores, want = _naive(q[b:b + 1, :, :L], k[b:b + 1, :, :L], 3, 1, 4, 3, True)
        assert torch.equal(ref[b, :, :L], want[0]), b
        _assert_top_n(padded[b:b + 1, :, :L], scores, 3, 1, L, L, True)
        assert (padded[b, :, L:] == -1).all() and (ref[b, :, L:] == -1).all()
    qp = torch.cat([q[0], q[1, :, :13]], 1).transpose(0, 1).contiguous().to(DEV)
    kp = torch.cat([k[0], k[1, :, :13]], 1).transpose(0, 1).contiguous().to(DEV)
    cu = torch.tensor([0, 20, 33], dtype=torch.int32, device=DEV)
    v = torch.randn_like(kp)
    _, packed = p(qp, kp, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=20, max_seqlen_k=20, backend="triton",
                  return_selection=True)
    assert torch.equal(packed.cpu(), padded)


def test_attention_and_decoding_with_the_shipped_pattern():
    """patterns/snapkv.attn: the prefill on the kernels against the float64 reference (error-ratio
    rule, the same selection); the kernels' selection, its last row reused by decode on both
    backends, token by token."""
    p = sd.compile_pattern(SNAPKV, window=4, pool=3, capacity=8)
    g = torch.Generator().manual_seed(11)
    b, h, hk, lp, d, new = 1, 2, 1, 20, 16, 2
    kc, vc = (torch.randn(b, hk, lp + new, d, generator=g).to(DEV) for _ in range(2))
    q = torch.randn(b, h, lp + new, d, generator=g).to(DEV)
    assert_matches_reference(p, q[:, :, :lp], kc[:, :, :lp], vc[:, :, :lp], _config=(16, 16))
    sel = p.select_blocks(q[:, :, :lp], kc[:, :, :lp], backend="triton")  # what the call selects
    assert sel.shape == (b, h, lp, 4)
    scores, _ = _naive(q[:, :, :lp].cpu(), kc[:, :, :lp].cpu(), 4, 1, 4, 3, True)
    _assert_top_n(sel.cpu(), scores, 4, 1, lp, lp, True)
    last = sel[:, :, -1:]
    assert torch.equal(p.select_blocks(q[:, :, lp - 4:lp], kc[:, :, :lp], backend="triton")[:, :, -1:], last)
    atom = p.dynamic_atoms[0]
    for step in range(1, new + 1):
        L = lp + step
        lens = torch.full((b,), L, dtype=torch.int32, device=DEV)
        qt = q[:, :, L - 1:L]
        gold = reference_attention(p.root, qt.double().cpu(), kc[:, :, :L].double().cpu(), vc[:, :, :L].double().cpu(),
                                   selection={atom: last.long().cpu()})[0]
        for backend in ("triton", "reference"):
            out = p.decode(qt, kc, vc, lens, selection=last, backend=backend)
            torch.testing.assert_close(out.cpu().double(), gold, atol=2e-5, rtol=1e-5)


def test_errors():
    p = sd.compile_pattern(src(3, 1, 4, 3))
    q, k = _qk(1, 2, 2, 8, 8)
    with pytest.raises(InputError, match=r"selects once, from the prompt's last queries.*selection="):
        p.decode(q[:, :, -1:], k, k, torch.tensor([8], dtype=torch.int32))
    with pytest.raises(InputError, match="scores its blocks itself"):
        p(q, k, k, scores=torch.zeros(1, 2, 8, 8))
    bad = {
        "topk(3, score=attention(window=0, pool=3))": "window of attention(...) must be at least 1, got 0",
        "topk(3, score=attention(window=2, pool=0))": "pool of attention(...) must be at least 1, got 0",
        "topk(3, score=attention(window=2))": "attention(...) needs its argument 'pool'",
        "topk(3, score=attention(window=2, pol=3))": "attention(...) has no argument 'pol'",
        "topk(3, score=attention(2, 3))": "pass the arguments of attention(...) by name",
        "topk(3, score=attention(window=h + 1, pool=3))": "window of attention(...) must be the same for every head",
        "topk(3, score=attn)": "score of topk must be one of mean, minmax, given or attention(window=..., pool=...)",
        "causal & attention(window=2, pool=3)": "attention(...) is a value of topk's score, not a mask",
        "window(attention)": "attention(...) is a value of topk's score, not a mask",
    }
    for body, msg in bad.items():
        with pytest.raises(PatternError, match=re.escape(msg)) as e:
            sd.compile_pattern(f"pattern s() {{ {body} }}")
        assert e.value.span is not None, body
