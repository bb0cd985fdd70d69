"""topk(n, block=b, score=given) with the call's scores= (SeerAttention's gate scores) and
threshold=: the selection against a plain-Python reading of the rule (each row's n best
candidate blocks, ties to the lower block, -inf / NaN / below-threshold never chosen), for
dense, padded, packed and decoding calls, on the kernels (interpreter) and the reference; the
outputs against the float64 reference given that selection."""
from __future__ import annotations

import math

import pytest
import torch

import sparsedsl as sd
from sparsedsl import InputError
from sparsedsl.reference.attention import reference_attention

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SRC = "pattern g() { causal & (window(4) | topk(2, block=8, score=given)) }"
NONCAUSAL = "pattern g() { sink(2) | topk(3, block=8, score=given, causal=false) }"


def naive(scores, n, block, q_len, kv_len, causal, threshold=None):
    """int32 [H, R, n] of one entry: scores [H, R, nb] as nested lists."""
    first, last = (kv_len - q_len) // block, (kv_len - 1) // block
    out = []
    for head in scores.tolist():
        rows = []
        for r, row in enumerate(head):
            g = first + r
            cand = [j for j, s in enumerate(row)
                    if j * block < kv_len and g <= last and q_len > 0 and (not causal or j <= g)
                    and not math.isnan(s) and s > -math.inf and (threshold is None or s >= threshold)]
            best = sorted(sorted(cand, key=lambda j: (-row[j], j))[:n])
            rows.append(best + [-1] * (n - len(best)))
        out.append(rows)
    return torch.tensor(out, dtype=torch.int32)


def _scores(*shape, seed):
    s = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    s[..., 1] = float("-inf")  # never chosen
    s.view(-1)[::7] = float("nan")  # never chosen
    if s.shape[-1] > 3:
        s[..., 2] = s[..., 3]  # ties: the lower block first
    return s


@pytest.mark.parametrize("src,causal,n", [(SRC, True, 2), (NONCAUSAL, False, 3)])
@pytest.mark.parametrize("lq,lk", [(40, 40), (13, 40), (40, 21)])
@pytest.mark.parametrize("threshold", [None, 0.3])
@pytest.mark.parametrize("kv_heads_scores", [False, True])
def test_dense_prefill_selects_the_best_given_blocks(src, causal, n, lq, lk, threshold, kv_heads_scores):
    p = sd.compile_pattern(src)
    g = torch.Generator().manual_seed(lq + lk)
    q, k, v = (torch.randn(2, h, L, 16, generator=g) for h, L in ((4, lq), (2, lk), (2, lk)))
    r, nb = (lk - 1) // 8 - (lk - lq) // 8 + 1, -(-lk // 8)
    sc = _scores(2, 2 if kv_heads_scores else 4, r, nb, seed=lq)
    full = sc.repeat_interleave(2, 1) if kv_heads_scores else sc
    want = torch.stack([naive(full[b], n, 8, lq, lk, causal, threshold) for b in range(2)])
    gold = reference_attention(p.root, q.double(), k.double(), v.double(), selection={p.dynamic_atoms[0]: want})[0]
    for backend in ("triton", "reference"):
        out, sel = p(q.to(DEV), k.to(DEV), v.to(DEV), scores=sc.to(DEV), threshold=threshold, backend=backend,
                     return_selection=True)
        assert torch.equal(sel.cpu(), want), backend
        torch.testing.assert_close(out.cpu().double(), gold, atol=2e-5, rtol=1e-5)


def test_padded_packed_and_decoding_calls_select_per_entry():
    p = sd.compile_pattern(SRC)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, h, 40, 16, generator=g).to(DEV) for h in (4, 2, 2))
    lens = [40, 23]
    sc = _scores(2, 4, 6, 5, seed=4).to(DEV)  # padded layout: ceil(39 / 8) + 1 rows
    n = torch.tensor(lens, dtype=torch.int32, device=DEV)
    _, sel = p(q, k, v, q_lengths=n, kv_lengths=n, scores=sc, backend="triton", return_selection=True)
    for b, L in enumerate(lens):
        want = naive(sc[b].cpu(), 2, 8, L, L, True)
        assert torch.equal(sel[b].cpu(), want), b
    # packed: the same two sequences one after the other
    qp, kp, vp = (torch.cat([t[0, :, :40], t[1, :, :23]], 1).transpose(0, 1).contiguous() for t in (q, k, v))
    cu = torch.tensor([0, 40, 63], dtype=torch.int32, device=DEV)
    _, sel_p = p(qp, kp, vp, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=40, max_seqlen_k=40, scores=sc,
                 backend="triton", return_selection=True)
    assert torch.equal(sel_p.cpu(), sel.cpu())
    # decoding one token per sequence: one row, the blocks of the whole cache
    seqlens = torch.tensor([40, 23], dtype=torch.int32, device=DEV)
    dsc = _scores(2, 2, 1, 5, seed=5).to(DEV)
    out, dsel = p.decode(q[:, :, -1:], k, v, seqlens, scores=dsc, backend="triton", return_selection=True)
    for b, L in enumerate(lens):
        assert torch.equal(dsel[b].cpu(), naive(dsc[b].repeat_interleave(2, 0).cpu(), 2, 8, 1, L, True)), b
    ref = p.decode(q[:, :, -1:], k, v, seqlens, scores=dsc, backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_given_scores_errors():
    p = sd.compile_pattern(SRC)
    q, k, v = torch.randn(1, 4, 16, 16), torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16)
    with pytest.raises(InputError, match=r"score=given\) needs scores="):
        p(q, k, v)
    with pytest.raises(InputError, match=r"must be a floating tensor \[1, H or Hk, 2, 2\]"):
        p(q, k, v, scores=torch.zeros(1, 4, 3, 2))
    with pytest.raises(InputError, match="not both"):
        p(q, k, v, scores=torch.zeros(1, 4, 2, 2), selection=torch.zeros(1, 4, 2, 2, dtype=torch.int32))
    with pytest.raises(InputError, match="threshold must be a number"):
        p(q, k, v, scores=torch.zeros(1, 4, 2, 2), threshold="high")
    mean = sd.compile_pattern("pattern m() { causal & topk(2, block=8) }")
    with pytest.raises(InputError, match="scores its blocks itself"):
        mean(q, k, v, scores=torch.zeros(1, 4, 2, 2))
    with pytest.raises(InputError, match="score=given"):
        p.mask(16, num_heads=4, num_kv_heads=2, q=q, k=k)  # the reference cannot score by itself either


def test_checks_and_fuzz_draw_gate_scores(tmp_path):
    """assert_matches_reference and `sparsedsl fuzz` on a score=given pattern: the selection of
    seeded scores, as a gate would give them, shared by the kernel and the reference runs."""
    from sparsedsl.cli import main
    from sparsedsl.testing import assert_grads_match_reference, assert_matches_reference

    p = sd.compile_pattern(SRC)
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, h, 37, 16, generator=g).to(DEV) for h in (4, 2, 2))
    assert_matches_reference(p, q, k, v, _config=(16, 16))
    assert_grads_match_reference(p, q, k, v, _config=(16, 16))
    f = tmp_path / "seer.attn"
    f.write_text("pattern seer(block: int = 16) {\n    causal & topk(2, block=block, score=given)\n}\n")
    assert main(["fuzz", str(f), "--examples", "4", "--max-len", "80"]) == 0


def test_mask_takes_the_gate_scores():
    """mask(q=, k=, scores=) of a score=given pattern: the selected blocks, token-causal,
    from a plain reading of the rule (each row's n best candidate blocks, ties low)."""
    p = sd.compile_pattern("pattern g() { causal & topk(2, block=4, score=given) }")
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 12, 8, generator=g), torch.randn(1, 1, 12, 8, generator=g)
    scores = torch.tensor([[[[5.0, 0.0, 0.0], [1.0, 2.0, 0.0], [3.0, 1.0, 4.0]]]])
    got = p.mask(12, num_heads=1, q=q, k=k, scores=scores)[0, 0]
    chosen = {0: [0], 1: [0, 1], 2: [0, 2]}  # row 0: only block 0 is a candidate
    for i in range(12):
        want = [j for j in range(i + 1) if j // 4 in chosen[i // 4]]
        assert torch.nonzero(got[i]).flatten().tolist() == want, i
    with pytest.raises(sd.InputError, match="needs scores="):
        p.mask(12, q=q, k=k)
    with pytest.raises(sd.InputError, match="come with q and k"):
        p.mask(12, scores=scores)
