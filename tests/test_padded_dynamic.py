"""Padded batches (q_lengths=, kv_lengths=, padding_side=) with dynamic patterns: topk
selection and landmark entries per batch entry, each entry's blocks counted from its own
first key. The oracle is each entry's real rows run alone in float64 through the reference
(its own selection, compute_selection, and its own landmarks), placed at the entry's rows;
the padding of q, k and v holds NaN, which must never be read.

On the CPU the kernels run in Triton's interpreter; the same tests run on a GPU."""
from __future__ import annotations

import math

import pytest
import torch

import sparsedsl
from sparsedsl.ir.topk import num_groups, padded_groups
from sparsedsl.reference.attention import compute_selection, reference_attention

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CFG = None if DEV == "cuda" else (16, 16)

PATTERNS = {
    "topk": "pattern t() { causal & (sink(2) | window(5) | topk(2, block=8)) }",
    "minmax": "pattern m() { causal & topk(2, block=8, score=minmax) }",
    "landmarks": "pattern l() { causal & local_blocks(1, block=8) | landmarks(block=4) }",
    "both": "pattern b() { causal & (window(6) | topk(1, block=8) | landmarks(block=8)) }",
    "noncausal": "pattern n() { topk(2, block=8, causal=false) }",
}
CASES = [  # (Lq, Lk, q_lengths, kv_lengths)
    (19, 19, [19, 11, 0], [19, 11, 0]),   # self-attention: full, short, empty
    (6, 27, [6, 3, 1], [27, 13, 2]),      # a few queries at the end of each entry's keys
    (19, 19, [4, 19, 9], [17, 19, 0]),    # an entry with queries and no keys
]


def _span(n: int, total: int, side: str) -> slice:
    return slice(0, n) if side == "right" else slice(total - n, total)


def _inputs(lq, lk, ql, kl, side, b=3, h=4, hk=2, d=16, seed=0):
    """q, k, v with NaN in every padded row."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for heads, total, lengths in ((h, lq, ql), (hk, lk, kl), (hk, lk, kl)):
        x = torch.full((b, heads, total, d), float("nan"))
        for i, n in enumerate(lengths):
            x[i, :, _span(n, total, side)] = torch.randn(heads, n, d, generator=gen)
        out.append(x)
    return out


def _entry(x, i, n, side):
    return x[i:i + 1, :, _span(n, x.shape[2], side)]


def oracle(p, q, k, v, ql, kl, side):
    """(out, lse) float64 and the padded selection, entry by entry through the reference."""
    b, h, lq, _ = q.shape
    out = torch.zeros((b, h, lq, v.shape[-1]), dtype=torch.float64)
    lse = torch.full((b, h, lq), -math.inf, dtype=torch.float64)
    atoms = [a for a in p.dynamic_atoms if a.kind == "topk"]
    sel = None
    for i, (nq, nk) in enumerate(zip(ql, kl)):
        qi, ki, vi = (_entry(x, i, n, side).double() for x, n in ((q, nq), (k, nk), (v, nk)))
        chosen = compute_selection(p.root, qi, ki) if atoms else {}
        if atoms and sel is None:
            n_slots = chosen[atoms[0]].shape[-1]
            sel = torch.full((b, h, padded_groups(lq, _block(atoms[0])), n_slots), -1, dtype=torch.int32)
        if atoms:
            rows = chosen[atoms[0]]
            assert rows.shape[2] == num_groups(nq, nk, _block(atoms[0]))
            sel[i:i + 1, :, :rows.shape[2]] = rows
        if nq:
            o, s = reference_attention(p.root, qi, ki, vi, selection=chosen or None)
            out[i:i + 1, :, _span(nq, lq, side)] = o
            lse[i:i + 1, :, _span(nq, lq, side)] = s
    return out, lse, sel


def _block(atom) -> int:
    from sparsedsl.passes.dynamic import decode_topk

    return decode_topk(atom).block


def _check(out, lse, ref, rlse, ql, side, tol=2e-5):
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out.cpu().double(), ref, atol=tol, rtol=tol)
    assert torch.equal(lse.cpu() == -math.inf, rlse == -math.inf)
    fin = rlse > -math.inf
    torch.testing.assert_close(lse.cpu().double()[fin], rlse[fin], atol=tol, rtol=tol)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_padded_dynamic_forward_selects_per_entry(name, case, side):
    """The kernels select (and summarise) each entry on its own: the selection equals the
    reference's per entry, and the output equals each entry run alone."""
    lq, lk, ql, kl = CASES[case]
    p = sparsedsl.compile_pattern(PATTERNS[name])
    q, k, v = _inputs(lq, lk, ql, kl, side, seed=case)
    ref, rlse, want_sel = oracle(p, q, k, v, ql, kl, side)
    qlen, klen = (torch.tensor(x, dtype=torch.int32, device=DEV) for x in (ql, kl))
    q, k, v = (t.to(DEV) for t in (q, k, v))
    kw = dict(q_lengths=qlen, kv_lengths=klen, padding_side=side)
    if want_sel is not None:
        for backend in ("triton", "reference"):
            got = p.select_blocks(q, k, backend=backend, **kw)
            assert torch.equal(got.cpu(), want_sel), backend
    out, lse = p(q, k, v, return_lse=True, backend="triton", _config=CFG, **kw)
    _check(out, lse, ref, rlse, ql, side)
    out, lse = p(q, k, v, return_lse=True, backend="reference", **kw)
    _check(out, lse, ref, rlse, ql, side)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", ["topk", "landmarks", "both"])
def test_padded_dynamic_backward(name, side):
    """Gradients of a padded batch with a given selection (not differentiated, as in NSA) and
    landmark entries (their gradient reaches the keys they average): each entry's alone, zero
    on the padded rows."""
    lq, lk, ql, kl = CASES[2]
    p = sparsedsl.compile_pattern(PATTERNS[name])
    q, k, v = _inputs(lq, lk, ql, kl, side, seed=5)
    _, _, sel = oracle(p, q, k, v, ql, kl, side)
    q, k, v = (t.nan_to_num(0.0).to(DEV).requires_grad_() for t in (q, k, v))  # autograd: no NaN in the padding
    qlen, klen = (torch.tensor(x, dtype=torch.int32, device=DEV) for x in (ql, kl))
    dout = torch.randn(q.shape[0], q.shape[1], lq, v.shape[-1], generator=torch.Generator().manual_seed(1))
    kw = dict(q_lengths=qlen, kv_lengths=klen, padding_side=side)
    given = None if sel is None else sel.to(DEV)
    out = p(q, k, v, backend="triton", _config=CFG, selection=given, **kw)
    got = torch.autograd.grad(out, (q, k, v), dout.to(DEV))
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    ref, _, _ = oracle(p, q64, k64, v64, ql, kl, side)
    want = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    for g, w, what in zip(got, want, "qkv"):
        assert not g.isnan().any(), what
        torch.testing.assert_close(g.cpu().double(), w, atol=1e-4, rtol=1e-4, msg=f"d{what}")
    for i, (nq, nk) in enumerate(zip(ql, kl)):  # padded rows: exactly zero
        for g, n, total in ((got[0], nq, lq), (got[1], nk, lk), (got[2], nk, lk)):
            pad = torch.ones(total, dtype=torch.bool)
            pad[_span(n, total, side)] = False
            assert not g[i, :, pad].any()


def test_padded_dynamic_given_selection_layout():
    """A given selection of a padded batch has ceil((Lq - 1) / block) + 1 rows, each entry's
    counted from its own first group; another row count is refused with that shape."""
    p = sparsedsl.compile_pattern(PATTERNS["topk"])
    lq, lk, ql, kl = CASES[1]
    q, k, v = (t.to(DEV) for t in _inputs(lq, lk, ql, kl, "left", seed=2))
    qlen, klen = (torch.tensor(x, dtype=torch.int32, device=DEV) for x in (ql, kl))
    r = padded_groups(lq, 8)
    assert r == 2  # 6 queries span at most 2 groups of 8, whatever their alignment
    with pytest.raises(sparsedsl.InputError, match=rf"shape \(3, 4, {r}, 2\)"):
        p(q, k, v, q_lengths=qlen, kv_lengths=klen, padding_side="left",
          selection=torch.zeros((3, 4, num_groups(lq, lq, 8), 2), dtype=torch.int32, device=DEV))


# ---- decoding from left-padded caches: summaries and selection from each sequence's first slot ----

def decode_oracle(p, q, kc, vc, seqlens, leftpad):
    """(out, lse) float64: each sequence alone, its keys the slots [leftpad, seqlens), its queries the last."""
    outs, lses = [], []
    for i, (s, n) in enumerate(zip(leftpad, seqlens)):
        qi, ki, vi = q[i:i + 1].double(), kc[i:i + 1, :, s:n].double(), vc[i:i + 1, :, s:n].double()
        o, lse = reference_attention(p.root, qi, ki, vi, selection=compute_selection(p.root, qi, ki) or None)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def _cache(b=3, h=4, hk=2, cap=48, d=16, lq=1, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=gen), *(torch.randn(b, hk, cap, d, generator=gen) for _ in range(2)))


@pytest.mark.parametrize("lq", [1, 3])
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_padded_dynamic_decode_from_left_padded_caches(name, backend, lq):
    p = sparsedsl.compile_pattern(PATTERNS[name])
    q, kc, vc = _cache(lq=lq)
    seqlens, leftpad = [48, 30, 12], [0, 5, 9]  # 48, 25 and 3 real keys: blocks off the cache's grid
    for i, s in enumerate(leftpad):  # the padding is never read
        kc[i, :, :s] = vc[i, :, :s] = float("nan")
    want, wlse = decode_oracle(p, q, kc, vc, seqlens, leftpad)
    lens, lp = (torch.tensor(x, dtype=torch.int32, device=DEV) for x in (seqlens, leftpad))
    out, lse = p.decode(q.to(DEV), kc.to(DEV), vc.to(DEV), lens, cache_leftpad=lp, backend=backend,
                        return_lse=True)
    assert not out.isnan().any()
    torch.testing.assert_close(out.cpu().double(), want, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.cpu().double(), wlse, atol=2e-5, rtol=1e-5)


def test_padded_dynamic_decode_keeps_summaries_across_steps():
    """summarize(cache_leftpad=) then two steps that append a key each, refreshing the kept
    summaries in place: each step equals the reference on the whole cache."""
    p = sparsedsl.compile_pattern(PATTERNS["both"])
    q, kc, vc = _cache(cap=40, seed=4)
    seqlens, leftpad = [30, 21, 15], [0, 7, 13]
    lens, lp = (torch.tensor(x, dtype=torch.int32, device=DEV) for x in (seqlens, leftpad))
    kd, vd = kc.to(DEV), vc.to(DEV)
    kept = p.summarize(kd, vd, lens, cache_leftpad=lp)
    for step in range(2):
        lens = lens + 1  # the new key is already in the cache (slot seqlens + step)
        seqlens = [n + 1 for n in seqlens]
        qs = (q + step).to(DEV)
        out = p.decode(qs, kd, vd, lens, summaries=kept, cache_leftpad=lp, backend="triton")
        want, _ = decode_oracle(p, qs.cpu(), kc, vc, seqlens, leftpad)
        torch.testing.assert_close(out.cpu().double(), want, atol=2e-5, rtol=1e-5)


# ---- packed batches (cu_seqlens): each sequence selected and summarised on its own ----

@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_packed_dynamic_forward_and_backward(name):
    """A packed batch of three sequences (one empty) equals each sequence run alone in float64,
    forward (the kernels' own selection) and backward (a given selection, as in the padded case)."""
    p = sparsedsl.compile_pattern(PATTERNS[name])
    lens = [40, 0, 29]  # 5 and 4 key blocks of 8: topk(2) must choose
    gen = torch.Generator().manual_seed(9)
    t = sum(lens)
    q, k, v = (torch.randn(t, n, 16, generator=gen) for n in (4, 2, 2))
    cu = torch.tensor([0, 40, 40, 69], dtype=torch.int32)
    # the oracle: the packed batch as a right-padded one, each entry alone (its own selection)
    pad = [torch.zeros(3, n, 40, 16) for n in (4, 2, 2)]
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        for dst, src in zip(pad, (q, k, v)):
            dst[i, :, :b - a] = src[a:b].transpose(0, 1)
    ref, rlse, sel = oracle(p, *pad, lens, lens, "right")
    kw = dict(cu_seqlens_q=cu.to(DEV), cu_seqlens_k=cu.to(DEV), max_seqlen_q=40, max_seqlen_k=40)
    qd, kd, vd = (x.to(DEV).requires_grad_() for x in (q, k, v))
    if sel is not None:
        assert sel.shape[2] == padded_groups(40, 8)  # the packed layout: R from the longest sequence
    out, lse = p(qd, kd, vd, return_lse=True, backend="triton", _config=CFG, **kw)
    want = torch.cat([ref[i, :, :n].transpose(0, 1) for i, n in enumerate(lens)])
    wlse = torch.cat([rlse[i, :, :n] for i, n in enumerate(lens)], 1)
    assert out.shape == (t, 4, 16) and lse.shape == (4, t)
    torch.testing.assert_close(out.detach().cpu().double(), want, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.detach().cpu().double(), wlse, atol=2e-5, rtol=1e-5)
    # backward with the reference's selection given, against the float64 padded oracle's gradients
    dout = torch.randn(t, 4, 16, generator=gen)
    out = p(qd, kd, vd, backend="triton", _config=CFG, selection=None if sel is None else sel.to(DEV), **kw)
    got = torch.autograd.grad(out, (qd, kd, vd), dout.to(DEV))
    pad64 = [x.double().requires_grad_() for x in pad]
    ref64, _, _ = oracle(p, *pad64, lens, lens, "right")
    dpad = torch.zeros_like(ref64)
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        dpad[i, :, :b - a] = dout[a:b].transpose(0, 1).double()
    wants = torch.autograd.grad(ref64, pad64, dpad)
    for g, w, what in zip(got, wants, "qkv"):
        w = torch.cat([w[i, :, :n].transpose(0, 1) for i, n in enumerate(lens)])
        torch.testing.assert_close(g.cpu().double(), w, atol=1e-4, rtol=1e-4, msg=f"d{what}")
    # the reference backend agrees (the same selection, each sequence alone)
    out_r = p(q, k, v, backend="reference", selection=sel, **{k_: (x.cpu() if hasattr(x, "cpu") else x)
                                                              for k_, x in kw.items()})
    torch.testing.assert_close(out_r.double(), want, atol=2e-5, rtol=1e-5)


def test_padded_and_packed_dynamic_under_torch_compile_fullgraph():
    """The per-entry selection runs inside the registered ops: no graph break, no value read."""
    p = sparsedsl.compile_pattern(PATTERNS["both"])
    q, k, v = _inputs(19, 19, [19, 11, 0], [19, 11, 0], "left", seed=6)
    q, k, v = (t.nan_to_num(0.0).to(DEV) for t in (q, k, v))
    n = torch.tensor([19, 11, 0], dtype=torch.int32, device=DEV)

    def padded(a, b, c, n):
        return p(a, b, c, q_lengths=n, kv_lengths=n, padding_side="left", backend="triton", _config=CFG)

    torch.testing.assert_close(torch.compile(padded, fullgraph=True, backend="aot_eager")(q, k, v, n),
                               padded(q, k, v, n), atol=0, rtol=0)
    cu = torch.tensor([0, 19, 30], dtype=torch.int32, device=DEV)
    qp, kp, vp = (torch.cat([t[0, :, :19], t[1, :, 8:]], 1).transpose(0, 1).contiguous() for t in (q, k, v))

    def packed(a, b, c, cu):
        return p(a, b, c, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=19, max_seqlen_k=19, backend="triton",
                 _config=CFG)

    got = torch.compile(packed, fullgraph=True, backend="aot_eager")(qp, kp, vp, cu)
    torch.testing.assert_close(got, packed(qp, kp, vp, cu), atol=0, rtol=0)
    # and the packed batch equals the padded one, row for row
    want = padded(q, k, v, n)
    torch.testing.assert_close(got[:19], want[0].transpose(0, 1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[19:], want[1, :, 8:].transpose(0, 1), atol=1e-6, rtol=1e-6)
