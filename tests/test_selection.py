"""Top-k key-block selection, `p.select_blocks(q, k)`, against a naive Python
loop in float64, and the attention it drives.

The rule (written out in `naive_select`): query row i of a call with Lq
queries and Lk keys sits at q = Lk - Lq + i and belongs to group q // B; row r
of the output is group (Lk - Lq) // B + r. The candidates of group g are the
key blocks j <= g (causal=true) or all blocks. Score "mean" is
dot(mean of the group's queries, mean of block j's present keys); "minmax" is
sum_d max(qbar_d * kmin_jd, qbar_d * kmax_jd). The n best win, ties going to
the lower j; the output is int32 [B, H, R, n], ascending, padded with -1.

Planted-signal tests state the expected blocks by hand; exact ties use
integer-valued data so every score is computed exactly.
"""
from __future__ import annotations

import math

import pytest
import torch

sd = pytest.importorskip("sparsedsl")

NEG_INF = float("-inf")
_compiled: dict = {}


def C(src: str):
    if src not in _compiled:
        _compiled[src] = sd.compile_pattern(src)
    return _compiled[src]


def topk_pattern(n, block, score="mean", causal=True):
    return C(f"pattern p() {{ topk({n}, block={block}, score={score}, causal={'true' if causal else 'false'}) }}")


def randn(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------
# naive reference
# --------------------------------------------------------------------------

def naive_select(q, k, n, block, score="mean", causal=True):
    b_, h_, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    g = h_ // hk
    ql, kl = q.double().tolist(), k.double().tolist()  # plain Python floats from here on
    first = (lk - lq) // block
    groups = sorted({(lk - lq + i) // block for i in range(lq)})
    if groups:
        assert groups == list(range(first, groups[-1] + 1))
    nb = -(-lk // block)
    out = torch.full((b_, h_, len(groups), n), -1, dtype=torch.int32)
    for b in range(b_):
        for h in range(h_):
            for r, grp in enumerate(groups):
                rows = [i for i in range(lq) if (lk - lq + i) // block == grp]
                qbar = [sum(ql[b][h][i][c] for i in rows) / len(rows) for c in range(d)]
                scored = []
                for j in range(nb):
                    if causal and j > grp:
                        continue
                    keys = kl[b][h // g][j * block:min((j + 1) * block, lk)]
                    cols = list(zip(*keys))  # d columns of the block's present keys
                    if score == "mean":
                        s = sum(a * (sum(col) / len(col)) for a, col in zip(qbar, cols))
                    else:
                        s = sum(max(a * min(col), a * max(col)) for a, col in zip(qbar, cols))
                    scored.append((-s, j))
                best = sorted(j for _, j in sorted(scored)[:n])
                out[b, h, r, :len(best)] = torch.tensor(best, dtype=torch.int32)
    return out


def expand_selection(sel, lq, lk, block):
    """bool [B, H, Lq, Lk]: key kp is selected for query row i."""
    first = (lk - lq) // block
    b_, h_ = sel.shape[:2]
    out = torch.zeros(b_, h_, lq, lk, dtype=torch.bool)
    for b in range(b_):
        for h in range(h_):
            for i in range(lq):
                r = (lk - lq + i) // block - first
                for j in sel[b, h, r].tolist():
                    if j >= 0:
                        out[b, h, i, j * block:(j + 1) * block] = True
    return out


def dense_attention(q, k, v, mask, scale=None):
    b, h, lq, d = q.shape
    g = h // k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kk = k.double().repeat_interleave(g, 1)
    vv = v.double().repeat_interleave(g, 1)
    logits = ((q.double() @ kk.transpose(-1, -2)) * scale).masked_fill(~mask, NEG_INF)
    lse = torch.logsumexp(logits, -1)
    w = torch.where(mask, torch.exp(logits - lse.unsqueeze(-1)), torch.zeros((), dtype=torch.float64))
    return w @ vv, lse


def _kernels_run() -> bool:
    if torch.cuda.is_available():
        return True
    try:
        from sparsedsl.kernels.launch import interpreter_ready
    except ImportError:  # no triton
        return False
    return interpreter_ready()


KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def select(p, q, k):
    """The reference's selection; with the kernels available (GPU, or the interpreter),
    also the selection kernel's, which must be the same tensor (float64 data goes
    to the kernel as float32: these tests' scores are exact or far from ties there)."""
    sel = p.select_blocks(q, k, backend="reference")
    assert sel.dtype == torch.int32
    if _kernels_run() and sum(a.kind == "topk" for a in p.dynamic_atoms) == 1:
        from sparsedsl.kernels import selection as kernels

        cast = (lambda t: t.float()) if q.dtype == torch.float64 else (lambda t: t)
        for few in (0, 1 << 30):  # both scoring kernels: the tile kernel, and the few-rows (decoding) one
            saved, kernels.FEW_ROWS = kernels.FEW_ROWS, few
            try:
                got = p.select_blocks(cast(q).to(KERNEL_DEVICE), cast(k).to(KERNEL_DEVICE), backend="triton")
            finally:
                kernels.FEW_ROWS = saved
            assert got.dtype == torch.int32 and got.shape == sel.shape
            assert torch.equal(got.cpu(), sel), (f"selection kernel (FEW_ROWS={few}) {got.tolist()} != "
                                                 f"reference {sel.tolist()}")
    return sel


def test_naive_select_by_hand():
    """The naive reference itself on a 2-block example computed by hand."""
    q = torch.tensor([[[[1.0], [1.0], [-1.0], [-1.0]]]])  # groups 0, 1 (block 2)
    k = torch.tensor([[[[3.0], [-1.0], [0.0], [4.0]]]])   # block means 1, 2
    assert naive_select(q, k, 1, 2).tolist() == [[[[0], [0]]]]  # group 1: -1 vs -2
    assert naive_select(q, k, 1, 2, causal=False).tolist() == [[[[1], [0]]]]
    assert naive_select(q, k, 3, 2).tolist() == [[[[0, -1, -1], [0, 1, -1]]]]
    # minmax, group 1 (qbar -1): block 0 max(-3, 1) = 1, block 1 max(0, -4) = 0
    assert naive_select(q, k, 1, 2, "minmax").tolist() == [[[[0], [0]]]]


# --------------------------------------------------------------------------
# planted signals: the expected blocks stated by hand
# --------------------------------------------------------------------------

def planted(block, scores, lq=None, noise=0.25, dtype=torch.float64):
    """q, k with D = G query groups of one-hot queries (group g's queries are e_g)
    and key block j of mean scores[j] (a list of G numbers) plus zero-mean noise,
    so the mean score of (group g, block j) is exactly scores[j][g]."""
    nb, G = len(scores), len(scores[0])
    lk = nb * block
    lq = lk if lq is None else lq
    qg = torch.zeros(lq, G, dtype=torch.float64)
    for i in range(lq):
        qg[i, (lk - lq + i) // block] = 1.0
    keys = torch.tensor(scores, dtype=torch.float64).repeat_interleave(block, 0)
    sign = torch.tensor([(-1.0) ** t for t in range(block)]).repeat(nb).unsqueeze(1)
    keys = keys + noise * sign * torch.arange(1, G + 1, dtype=torch.float64)  # pairs cancel in each block
    return qg.view(1, 1, lq, G).to(dtype), keys.view(1, 1, lk, G).to(dtype)


# scores[j][g]: block 0 is strong for every group (10), block g-2 is good (5),
# the diagonal block weak (1), everything else 0.
def _scores(nb=8):
    s = [[0.0] * nb for _ in range(nb)]
    for g in range(nb):
        s[g][g] = 1.0
        if g >= 2:
            s[g - 2][g] = 5.0
        s[0][g] = 10.0
    return s


EXPECTED_PLANTED = [[0, -1], [0, 1], [0, 2], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_planted_mean(dtype):
    q, k = planted(4, _scores(), dtype=dtype)
    sel = select(topk_pattern(2, 4), q, k)
    assert sel.tolist() == [[EXPECTED_PLANTED]]
    assert torch.equal(naive_select(q, k, 2, 4), sel)


def test_planted_n_larger_than_candidates():
    q, k = planted(4, _scores())
    sel = select(topk_pattern(5, 4), q, k)
    assert sel[0, 0, :4].tolist() == [[0, -1, -1, -1, -1], [0, 1, -1, -1, -1], [0, 1, 2, -1, -1],
                                      [0, 1, 2, 3, -1]]
    assert sel[0, 0, 7].tolist() == [0, 1, 2, 5, 7]  # 10, 5 (block 5), 1 (diagonal 7), then ties at 0 -> 1, 2
    assert torch.equal(naive_select(q, k, 5, 4), sel)


def test_n_larger_than_all_blocks():
    q, k = planted(4, _scores(3))
    sel = select(topk_pattern(6, 4, causal=False), q, k)
    assert sel.tolist() == [[[[0, 1, 2, -1, -1, -1]] * 3]]


def test_planted_non_causal_sees_future_blocks():
    s = _scores()
    s[7][1] = 20.0  # the last block is the best for group 1
    q, k = planted(4, s)
    causal_sel = select(topk_pattern(2, 4), q, k)
    free_sel = select(topk_pattern(2, 4, causal=False), q, k)
    assert causal_sel[0, 0, 1].tolist() == [0, 1]
    assert free_sel[0, 0, 1].tolist() == [0, 7]
    assert free_sel[0, 0, 0].tolist() == [0, 1]  # group 0: 10, then ties at 0 -> block 1
    assert torch.equal(naive_select(q, k, 2, 4, causal=False), free_sel)


def test_planted_diagonal_block():
    """Only the diagonal block scores: with causal the diagonal block is a candidate."""
    nb = 6
    s = [[0.0] * nb for _ in range(nb)]
    for g in range(nb):
        s[g][g] = 3.0
        for j in range(g):
            s[j][g] = -1.0
    q, k = planted(8, s)
    sel = select(topk_pattern(1, 8), q, k)
    assert sel.flatten().tolist() == list(range(nb))


def test_planted_minmax_differs_from_mean():
    """Block 1 has mean 0 but a spread of +-6 in dim 0, block 2 a constant 2:
    mean prefers block 2, minmax (max of qbar * kmin, qbar * kmax) block 1.
    Group 3's query is -e_0: minmax uses kmin there."""
    block, d = 4, 2
    k = torch.zeros(1, 1, 4 * block, d, dtype=torch.float64)
    k[0, 0, 4:8, 0] = torch.tensor([6.0, -6.0, 1.0, -1.0])  # block 1
    k[0, 0, 8:12, 0] = 2.0                                  # block 2
    k[0, 0, 0:4, 0] = -1.0                                  # block 0
    q = torch.zeros(1, 1, 4 * block, d, dtype=torch.float64)
    q[0, 0, :12, 0] = 1.0
    q[0, 0, 12:, 0] = -1.0
    mean = select(topk_pattern(1, block, "mean"), q, k)
    minmax = select(topk_pattern(1, block, "minmax"), q, k)
    # group 1: mean -1, 0 -> block 1; group 2: mean -1, 0, 2 -> block 2 but minmax -1, 6, 2 -> block 1;
    # group 3 (qbar = -e0): mean 1, 0, -2, 0 -> block 0; minmax 1, 6, -2, 0 -> block 1
    assert mean.flatten().tolist() == [0, 1, 2, 0]
    assert minmax.flatten().tolist() == [0, 1, 1, 1]
    assert torch.equal(naive_select(q, k, 1, block, "mean"), mean)
    assert torch.equal(naive_select(q, k, 1, block, "minmax"), minmax)


# --------------------------------------------------------------------------
# exact ties (integer-valued data: every score is exact)
# --------------------------------------------------------------------------

def _int_data(b, h, hk, lq, lk, d, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (b, h, lq, d), generator=g).double()
    k = torch.randint(-2, 3, (b, hk, lk, d), generator=g).double()
    return q, k


@pytest.mark.parametrize("score", ["mean", "minmax"])
def test_identical_blocks_tie_to_lower_block(score):
    block = 4
    q = torch.ones(1, 1, 24, 3, dtype=torch.float64)
    blk = torch.tensor([[1.0, 0.0, 2.0], [1.0, 2.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    k = blk.repeat(6, 1).view(1, 1, 24, 3)  # six identical blocks
    sel = select(topk_pattern(3, block, score), q, k)
    assert sel[0, 0].tolist() == [[0, -1, -1], [0, 1, -1], [0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2]]
    sel = select(topk_pattern(2, block, score, causal=False), q, k)
    assert sel[0, 0].tolist() == [[0, 1]] * 6


def test_tie_between_two_best_and_a_lower_one():
    """Blocks 1 and 3 tie for best, block 0 and 2 tie below: n=3 picks 1, 3 and then 0."""
    q = torch.ones(1, 1, 16, 1, dtype=torch.float64)
    k = torch.tensor([1.0, 2.0, 1.0, 2.0]).repeat_interleave(4).view(1, 1, 16, 1)
    sel = select(topk_pattern(3, 4), q, k)
    assert sel[0, 0, 3].tolist() == [0, 1, 3]
    assert sel[0, 0, 2].tolist() == [0, 1, 2]
    assert sel[0, 0, 1].tolist() == [0, 1, -1]


@pytest.mark.parametrize("score", ["mean", "minmax"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_integer_data_with_many_ties(score, causal, seed):
    q, k = _int_data(1, 2, 1, 24, 24, 2, seed)
    p = topk_pattern(3, 4, score, causal)
    assert torch.equal(select(p, q, k), naive_select(q, k, 3, 4, score, causal))


@pytest.mark.parametrize("score", ["mean", "minmax"])
@pytest.mark.parametrize("seed", [0, 1])
def test_integer_data_with_many_ties_decode(score, seed):
    """Decoding over 130 blocks of integer keys: ties across the scoring tiles go to the lower block."""
    q, k = _int_data(1, 4, 2, 1, 520, 2, seed)
    p = topk_pattern(6, 4, score, True)
    assert torch.equal(select(p, q, k), naive_select(q, k, 6, 4, score, True))


# --------------------------------------------------------------------------
# random data against the naive loop: shapes, partial blocks, decode, GQA
# --------------------------------------------------------------------------

CASES = [
    # b, h, hk, lq, lk, n, block
    (1, 1, 1, 32, 32, 2, 8),
    (1, 2, 2, 30, 30, 3, 8),     # partial last block (6 keys)
    (2, 4, 2, 21, 21, 2, 4),     # GQA 2, partial last block (1 key)
    (1, 8, 1, 17, 17, 3, 4),     # MQA
    (1, 4, 2, 1, 33, 3, 8),      # decode: Lq = 1, last block holds one key
    (1, 2, 1, 1, 32, 2, 8),      # decode at a block boundary
    (1, 2, 2, 10, 33, 2, 8),     # Lq < Lk: first group has one row
    (1, 2, 2, 5, 40, 4, 8),      # Lq < Lk inside one group
    (1, 1, 1, 12, 5, 2, 4),      # Lq > Lk: negative positions
    (1, 2, 1, 9, 9, 20, 3),      # n larger than all blocks
    (1, 1, 1, 7, 7, 1, 16),      # one partial block
    (1, 4, 2, 1, 600, 5, 4),     # decode, 150 blocks: several tiles of the few-rows kernel
    (1, 2, 1, 2, 300, 40, 4),    # decode, two rows (one launch each), n = 40
]


@pytest.mark.parametrize("score", ["mean", "minmax"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("b, h, hk, lq, lk, n, block", CASES)
def test_against_naive(b, h, hk, lq, lk, n, block, score, causal):
    seed = lq * 100 + lk + n
    q = randn(b, h, lq, 6, seed=seed)
    k = randn(b, hk, lk, 6, seed=seed + 1)
    sel = select(topk_pattern(n, block, score, causal), q, k)
    first = (lk - lq) // block
    r = (lk - 1) // block - first + 1
    assert sel.shape == (b, h, r, n)
    expected = naive_select(q, k, n, block, score, causal)
    assert torch.equal(sel, expected), (sel, expected)


def test_selection_is_ascending_and_padded():
    q = randn(2, 4, 40, 8, seed=3)
    k = randn(2, 2, 40, 8, seed=4)
    sel = select(topk_pattern(4, 8), q, k)
    for row in sel.reshape(-1, 4).tolist():
        valid = [j for j in row if j >= 0]
        assert row == valid + [-1] * (4 - len(valid))
        assert valid == sorted(set(valid))


def test_decode_row_against_prefill_row():
    """The last query's selection in a decode call (Lq = 1) equals the selection of
    its group in the full call when that group has only that one row."""
    q = randn(1, 2, 33, 6, seed=9)
    k = randn(1, 2, 33, 6, seed=10)
    p = topk_pattern(3, 8)
    full = select(p, q, k)
    dec = select(p, q[:, :, 32:], k)
    assert dec.shape == (1, 2, 1, 3)
    assert torch.equal(dec[:, :, 0], full[:, :, 4])


def test_gqa_selection_uses_the_heads_kv_head():
    """H=4, Hk=2: heads 0, 1 read kv head 0 and heads 2, 3 kv head 1."""
    q = torch.ones(1, 4, 8, 1, dtype=torch.float64)
    k = torch.zeros(1, 2, 8, 1, dtype=torch.float64)
    k[0, 0, 0:2] = 1.0  # kv head 0: block 0 best
    k[0, 1, 4:6] = 1.0  # kv head 1: block 2 best
    sel = select(topk_pattern(1, 2, causal=False), q, k)
    assert sel[0, :, 0, 0].tolist() == [0, 0, 2, 2]


def test_empty_inputs():
    p = topk_pattern(2, 4)
    assert select(p, randn(1, 2, 0, 4), randn(1, 2, 8, 4)).shape == (1, 2, 0, 2)
    assert select(p, randn(0, 2, 8, 4), randn(0, 2, 8, 4)).shape == (0, 2, 2, 2)


def test_two_topk_atoms_give_a_tuple():
    p = C("pattern p() { causal & (topk(1, block=4) | topk(2, block=8, score=minmax)) }")
    q, k = randn(1, 2, 24, 4, seed=1), randn(1, 1, 24, 4, seed=2)
    a, b = p.select_blocks(q, k)
    assert torch.equal(a, naive_select(q, k, 1, 4))
    assert torch.equal(b, naive_select(q, k, 2, 8, "minmax"))


# --------------------------------------------------------------------------
# mask(q=, k=) and attention with a selection
# --------------------------------------------------------------------------

def static_part(lq, lk, w):
    Q = torch.arange(lk - lq, lk).view(-1, 1)
    K = torch.arange(lk).view(1, -1)
    return (K <= Q), (K > Q - w)


@pytest.mark.parametrize("b, h, hk, lq, lk, w, n, block", [
    (1, 2, 2, 32, 32, 4, 2, 8),
    (2, 4, 2, 27, 27, 3, 2, 4),
    (1, 4, 1, 9, 30, 5, 3, 8),
    (1, 2, 1, 1, 33, 4, 2, 8),
])
def test_mask_with_data(b, h, hk, lq, lk, w, n, block):
    p = C(f"pattern p() {{ causal & (window({w}) | topk({n}, block={block})) }}")
    q = randn(b, h, lq, 8, seed=lq + 1)
    k = randn(b, hk, lk, 8, seed=lk + 2)
    m = p.mask(lq, lk, h, hk, q=q, k=k)
    assert m.shape == (b, h, lq, lk) and m.dtype == torch.bool
    sel = naive_select(q, k, n, block)
    causal, window = static_part(lq, lk, w)
    expected = causal & (window | expand_selection(sel, lq, lk, block))
    assert torch.equal(m, expected)
    # the window alone is not the whole story: some selected block adds keys
    assert (m & ~(causal & window)).any()


def test_mask_with_data_non_causal_topk_under_causal():
    """topk(causal=false) can pick future blocks; the enclosing causal clips them."""
    p = C("pattern p() { causal & (window(2) | topk(2, block=4, causal=false)) }")
    q, k = randn(1, 2, 20, 4, seed=5), randn(1, 2, 20, 4, seed=6)
    m = p.mask(20, 20, 2, 2, q=q, k=k)
    causal, window = static_part(20, 20, 2)
    sel = naive_select(q, k, 2, 4, causal=False)
    assert torch.equal(m, causal & (window | expand_selection(sel, 20, 20, 4)))


HAND_SELECTION = torch.tensor([[  # [B=1, H=2, R=4, n=2] for Lq = Lk = 32, block 8
    [[0, -1], [0, 1], [1, 2], [0, 3]],
    [[-1, -1], [1, -1], [0, 2], [-1, -1]],
]], dtype=torch.int32)


def test_attention_with_hand_made_selection():
    p = C("pattern p() { causal & (window(3) | topk(2, block=8)) }")
    q, k, v = randn(1, 2, 32, 8, seed=1), randn(1, 1, 32, 8, seed=2), randn(1, 1, 32, 5, seed=3)
    out, lse = p(q, k, v, return_lse=True, selection=HAND_SELECTION)
    causal, window = static_part(32, 32, 3)
    mask = causal & (window | expand_selection(HAND_SELECTION, 32, 32, 8))
    # spot-check the expansion by hand: head 1, row 20 (group 2) sees blocks 0 and 2
    assert mask[0, 1, 20].nonzero().flatten().tolist() == list(range(8)) + list(range(16, 21))
    ref_out, ref_lse = dense_attention(q, k, v, mask)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=1e-12)
    # and it differs from the data's own selection
    assert not torch.allclose(out, p(q, k, v))


def test_attention_with_computed_selection_equals_default():
    p = C("pattern p() { causal & (window(3) | topk(2, block=4, score=minmax)) }")
    q, k, v = randn(2, 4, 19, 8, seed=4), randn(2, 2, 19, 8, seed=5), randn(2, 2, 19, 8, seed=6)
    sel = p.select_blocks(q, k)
    torch.testing.assert_close(p(q, k, v, selection=sel), p(q, k, v), atol=0, rtol=0)
    causal, window = static_part(19, 19, 3)
    mask = causal & (window | expand_selection(naive_select(q, k, 2, 4, "minmax"), 19, 19, 4))
    ref_out, _ = dense_attention(q, k, v, mask)
    torch.testing.assert_close(p(q, k, v), ref_out, atol=1e-12, rtol=1e-12)


def test_attention_with_selection_float32_decode():
    p = C("pattern p() { causal & (window(2) | topk(2, block=8)) }")
    q = randn(1, 2, 1, 8, seed=1, dtype=torch.float32)
    k = randn(1, 2, 33, 8, seed=2, dtype=torch.float32)
    v = randn(1, 2, 33, 8, seed=3, dtype=torch.float32)
    sel = torch.tensor([[[[1, 3]], [[0, -1]]]], dtype=torch.int32)
    out, lse = p(q, k, v, return_lse=True, selection=sel)
    causal, window = static_part(1, 33, 2)
    ref_out, ref_lse = dense_attention(q, k, v, causal & (window | expand_selection(sel, 1, 33, 8)))
    torch.testing.assert_close(out.double(), ref_out, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("bad, phrase", [
    (torch.zeros(1, 2, 3, 2, dtype=torch.int32), r"shape \(1, 2, 4, 2\)"),    # R too small
    (torch.zeros(1, 2, 4, 3, dtype=torch.int32), r"shape \(1, 2, 4, 2\)"),    # n wrong
    (torch.zeros(2, 2, 4, 2, dtype=torch.int32), r"shape \(1, 2, 4, 2\)"),    # batch wrong
    (torch.zeros(1, 1, 4, 2, dtype=torch.int32), r"shape \(1, 2, 4, 2\)"),    # kv heads instead of heads
    (torch.zeros(2, 4, 2, dtype=torch.int32), r"shape \(1, 2, 4, 2\)"),       # 3-D
    (torch.zeros(1, 2, 4, 2, dtype=torch.float32), r"integer tensor"),        # float
    ((HAND_SELECTION, HAND_SELECTION), r"expected 1 tensor\(s\), one per topk atom, got 2"),
    ([0, 1], r"expected 1 tensor"),
    ("x", r"topk\(n=2, block=8\) must be an integer tensor"),
])
def test_selection_errors(bad, phrase):
    p = C("pattern p() { causal & (window(3) | topk(2, block=8)) }")
    q, k, v = randn(1, 2, 32, 8), randn(1, 1, 32, 8), randn(1, 1, 32, 5)
    with pytest.raises(sd.InputError, match=phrase):
        p(q, k, v, selection=bad)


def test_select_blocks_input_errors():
    p = topk_pattern(2, 4)
    with pytest.raises(sd.InputError, match=r"select_blocks: q must have 4 dimensions"):
        p.select_blocks(randn(2, 8, 4), randn(1, 2, 8, 4))
    with pytest.raises(sd.InputError, match=r"head dims differ"):
        p.select_blocks(randn(1, 2, 8, 4), randn(1, 2, 8, 5))
    with pytest.raises(sd.InputError, match=r"query heads \(3\) must be a multiple of the number of KV heads \(2\)"):
        p.select_blocks(randn(1, 3, 8, 4), randn(1, 2, 8, 4))


_UNVALIDATED = "runtime/pattern.py _selection_dict checks only the shape and that the dtype is not floating"


@pytest.mark.parametrize("bad", [
    torch.full((1, 2, 4, 2), 4, dtype=torch.int32),    # block id past the 4 key blocks
    torch.full((1, 2, 4, 2), -2, dtype=torch.int32),   # below the -1 padding value
    torch.zeros(1, 2, 4, 2, dtype=torch.bool),         # not an integer dtype
])
def test_selection_values_are_validated(bad):
    """An invalid selection must raise, not be silently ignored (FAILURE_MODES 18)."""
    p = C("pattern p() { causal & (window(3) | topk(2, block=8)) }")
    q, k, v = randn(1, 2, 32, 8), randn(1, 1, 32, 8), randn(1, 1, 32, 5)
    try:
        p(q, k, v, selection=bad)
    except sd.InputError:
        return
    raise AssertionError("accepted an invalid selection")
