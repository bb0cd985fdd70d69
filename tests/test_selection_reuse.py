"""Selection reuse (TidalDecode, Recycled Attention): the topk selection a call used comes back
with return_selection=True, in the layout selection= takes, and a later call (another layer,
another decoding step) given it attends exactly those blocks. Checked against the float64
reference given the same selection, sequence by sequence; on the kernels (interpreter) and the
reference backend."""
from __future__ import annotations

import pytest
import torch

import sparsedsl as sd
from sparsedsl import InputError
from sparsedsl.ir.topk import num_groups
from sparsedsl.reference.attention import reference_attention

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOPK = "pattern t() { causal & (sink(2) | window(4) | topk(2, block=8)) }"
BOTH = "pattern b() { causal & (window(4) | topk(1, block=8) | landmarks(block=8)) }"


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEV)


def _cache(b=2, h=4, hk=2, cap=64, d=16, lq=1, seed=0):
    return _rand(b, h, lq, d, seed=seed), _rand(b, hk, cap, d, seed=seed + 1), _rand(b, hk, cap, d, seed=seed + 2)


def _golden(p, q, kc, vc, lens, sel):
    """float64: each sequence alone on its first lens[b] keys, with its rows of `sel`."""
    atom = next(a for a in p.dynamic_atoms if a.kind == "topk")
    block = 8
    outs = []
    for b, n in enumerate(lens):
        qi, ki, vi = q[b:b + 1].double().cpu(), kc[b:b + 1, :, :n].double().cpu(), vc[b:b + 1, :, :n].double().cpu()
        rows = sel[b:b + 1, :, :num_groups(q.shape[2], n, block)].long().cpu()
        outs.append(reference_attention(p.root, qi, ki, vi, selection={atom: rows})[0])
    return torch.cat(outs)


@pytest.mark.parametrize("lq", [1, 3])
@pytest.mark.parametrize("src", [TOPK, BOTH])
def test_decode_returns_its_selection_and_another_layer_reuses_it(src, lq):
    p = sd.compile_pattern(src)
    lens = [64, 37]
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    q, kc, vc = _cache(lq=lq, seed=1)
    out, sel = p.decode(q, kc, vc, seqlens, backend="triton", return_selection=True)
    _, ref_sel = p.decode(q.cpu().double(), kc.cpu().double(), vc.cpu().double(), seqlens.cpu(),
                          backend="reference", return_selection=True)
    assert torch.equal(sel.cpu(), ref_sel)  # the kernels chose what the reference chooses
    assert sel.shape[2] == -(-(lq - 1) // 8) + 1
    torch.testing.assert_close(out.cpu().double(), _golden(p, q, kc, vc, lens, sel), atol=2e-5, rtol=1e-5)
    # a later layer: its own queries, keys and values, the first layer's blocks (TidalDecode)
    q2, kc2, vc2 = _cache(lq=lq, seed=7)
    for backend in ("triton", "reference"):
        got = p.decode(q2, kc2, vc2, seqlens, backend=backend, selection=sel)
        torch.testing.assert_close(got.cpu().double(), _golden(p, q2, kc2, vc2, lens, sel), atol=2e-5, rtol=1e-5)


def test_a_given_selection_needs_no_block_summaries(monkeypatch):
    import sparsedsl.kernels.decode as kd

    p = sd.compile_pattern(TOPK)
    seqlens = torch.tensor([64, 37], dtype=torch.int32, device=DEV)
    q, kc, vc = _cache(seed=2)
    _, sel = p.decode(q, kc, vc, seqlens, backend="triton", return_selection=True)
    calls = []
    real = kd.summarize
    monkeypatch.setattr(kd, "summarize", lambda *a, **k: calls.append(1) or real(*a, **k))
    p.decode(q, kc, vc, seqlens, backend="triton", selection=sel)
    assert calls == []  # no pass over the cache: the reuse is what makes it cheap
    p.decode(q, kc, vc, seqlens, backend="triton")
    assert calls == [1]


def test_recycled_across_decoding_steps():
    """Recycled Attention: the selection of step t serves step t + 1 (one more key); a
    sequence whose new query enters a new group reads that group's row (row 0 of the step)."""
    p = sd.compile_pattern(TOPK)
    q, kc, vc = _cache(cap=80, seed=3)
    lens = [64, 40]
    _, sel = p.decode(q, kc, vc, torch.tensor(lens, dtype=torch.int32, device=DEV), backend="triton",
                      return_selection=True)
    nxt = [n + 1 for n in lens]  # the new queries (positions 64, 40) enter groups 8 and 5
    q2 = _rand(2, 4, 1, 16, seed=9)
    got = p.decode(q2, kc, vc, torch.tensor(nxt, dtype=torch.int32, device=DEV), backend="triton", selection=sel)
    torch.testing.assert_close(got.cpu().double(), _golden(p, q2, kc, vc, nxt, sel), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "padded", "packed"])
def test_prefill_returns_its_selection(kind):
    p = sd.compile_pattern(TOPK)
    q, k, v = _rand(2, 4, 40, 16, seed=4), _rand(2, 2, 40, 16, seed=5), _rand(2, 2, 40, 16, seed=6)
    kw = {}
    if kind == "padded":
        n = torch.tensor([40, 23], dtype=torch.int32, device=DEV)
        kw = dict(q_lengths=n, kv_lengths=n, padding_side="left")
    elif kind == "packed":
        q, k, v = (t.transpose(1, 2).reshape(80, t.shape[1], 16) for t in (q, k, v))
        cu = torch.tensor([0, 40, 80], dtype=torch.int32, device=DEV)
        kw = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=40, max_seqlen_k=40)
    out, lse, sel = p(q, k, v, backend="triton", return_lse=True, return_selection=True, **kw)
    ref_kw = {name: (t.cpu() if isinstance(t, torch.Tensor) else t) for name, t in kw.items()}
    _, ref_sel = p(q.cpu().double(), k.cpu().double(), v.cpu().double(), backend="reference",
                   return_selection=True, **ref_kw)
    assert torch.equal(sel.cpu(), ref_sel)
    again = p(q, k, v, backend="triton", selection=sel, **kw)
    assert torch.equal(again, out)  # the same blocks: the same output, bit for bit


def test_selection_reuse_errors():
    p = sd.compile_pattern(TOPK)
    seqlens = torch.tensor([64, 37], dtype=torch.int32, device=DEV)
    q, kc, vc = _cache(seed=8)
    with pytest.raises(InputError, match=r"decode: selection for topk\(n=2, block=8\) must be an integer tensor "
                                         r"of shape \(2, 4, 1, 2\)"):
        p.decode(q, kc, vc, seqlens, selection=torch.zeros(2, 4, 3, 2, dtype=torch.int32, device=DEV))
    static = sd.compile_pattern("pattern s() { causal & window(4) }")
    with pytest.raises(InputError, match="one topk"):
        static.decode(q, kc, vc, seqlens, selection=torch.zeros(2, 4, 1, 2, dtype=torch.int32, device=DEV))
    with pytest.raises(InputError, match="return_selection takes a pattern with one topk"):
        static(q, kc, vc, return_selection=True)
