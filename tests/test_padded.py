"""Padded batches without packing: q_lengths= / kv_lengths= (int32 [B]) with padding_side
"right" or "left". Each batch entry's real rows are a sequence of their own (positions from 0,
queries aligned to the end of the keys), padded rows give output 0 and LSE -inf and get zero
gradients. The oracle is written here, row by row, from the independent tests/naive.py mask in
float64; nothing of sparsedsl's reference is used."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import sparsedsl
from sparsedsl import InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import naive  # noqa: E402

PATTERNS = {
    "streaming": "pattern s() { causal & (sink(2) | window(5)) }",
    "chunked": "pattern c() { causal & chunked(8, 3) }",
    "dilated": "pattern d() { dilated(6, 2) }",
}


def _span(n_real: int, n_all: int, side: str) -> slice:
    return slice(0, n_real) if side == "right" else slice(n_all - n_real, n_all)


def oracle(p, q, k, v, q_lengths, kv_lengths, side, scale=None):
    """(out, lse) in float64, entry by entry: dense softmax over the naive mask of the real rows."""
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    outs, lses = [], []
    for i in range(b):
        nq, nk = int(q_lengths[i]), int(kv_lengths[i])
        sq, sk = _span(nq, lq, side), _span(nk, lk, side)
        out = q.new_zeros((h, lq, v.shape[-1]), dtype=torch.float64)
        lse = torch.full((h, lq), -math.inf, dtype=torch.float64)
        if nq and nk:
            mask = torch.tensor(naive.dense(p.root, nq, nk, h, hk), dtype=torch.bool)  # [H, nq, nk]
            kk = k[i, :, sk].double().repeat_interleave(h // hk, 0)
            vv = v[i, :, sk].double().repeat_interleave(h // hk, 0)
            logits = (q[i, :, sq].double() @ kk.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
            row_lse = torch.logsumexp(logits, -1)
            probs = torch.where(mask, torch.exp(logits - row_lse[..., None].clamp_min(-1e300)), 0.0)
            out = torch.cat([out[:, :sq.start], probs @ vv, out[:, sq.stop:]], 1)
            lse = torch.cat([lse[:, :sq.start], row_lse, lse[:, sq.stop:]], 1)
        outs.append(out)
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def inputs(b=3, h=4, hk=2, lq=19, lk=19, d=16, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    t = [torch.randn(b, n, L, d, generator=gen) for n, L in ((h, lq), (hk, lk), (hk, lk))]
    return [x.requires_grad_(requires_grad) for x in t]


CASES = [  # (Lq, Lk, q_lengths, kv_lengths)
    (19, 19, [19, 11, 0], [19, 11, 0]),   # self-attention, one full row, one short, one empty
    (6, 19, [6, 3, 1], [19, 8, 2]),       # a few queries at the end of each row's keys
    (19, 19, [4, 19, 9], [17, 19, 0]),    # a row with queries and no keys
]


@pytest.mark.parametrize("name,backend", [(n, "triton") for n in sorted(PATTERNS)] + [("streaming", "reference")])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_padded_forward_matches_each_row_alone(name, case, side, backend):
    lq, lk, ql, kl = CASES[case]
    p = sparsedsl.compile_pattern(PATTERNS[name])
    q, k, v = inputs(lq=lq, lk=lk)
    qlen, klen = torch.tensor(ql, dtype=torch.int32), torch.tensor(kl, dtype=torch.int32)
    out, lse = p(q, k, v, q_lengths=qlen, kv_lengths=klen, padding_side=side, return_lse=True, backend=backend)
    ref, rlse = oracle(p, q, k, v, ql, kl, side)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    assert torch.equal(lse == -math.inf, rlse == -math.inf)  # padded rows and rows that see nothing
    fin = rlse > -math.inf
    torch.testing.assert_close(lse.double()[fin], rlse[fin], atol=2e-5, rtol=1e-5)
    for i, n in enumerate(ql):  # padded query rows: exactly zero
        pad = torch.ones(lq, dtype=torch.bool)
        pad[_span(n, lq, side)] = False
        assert torch.equal(out[i, :, pad], torch.zeros_like(out[i, :, pad]))


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_padded_backward_matches_each_row_alone(name, side):
    lq, lk, ql, kl = CASES[2]
    p = sparsedsl.compile_pattern(PATTERNS[name])
    q, k, v = inputs(lq=lq, lk=lk, requires_grad=True)
    qlen, klen = torch.tensor(ql, dtype=torch.int32), torch.tensor(kl, dtype=torch.int32)
    dout = torch.randn(q.shape[0], q.shape[1], lq, v.shape[-1], generator=torch.Generator().manual_seed(1))
    out = p(q, k, v, q_lengths=qlen, kv_lengths=klen, padding_side=side, backend="triton")
    got = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, _ = oracle(p, q64, k64, v64, ql, kl, side)
    want = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    for g, w, what in zip(got, want, "qkv"):
        assert not g.isnan().any(), what
        torch.testing.assert_close(g.double(), w, atol=1e-4, rtol=1e-4, msg=f"d{what}")
    for i, (nq, nk) in enumerate(zip(ql, kl)):  # padded rows get exactly zero gradient
        for g, n, L in ((got[0], nq, lq), (got[1], nk, lk), (got[2], nk, lk)):
            pad = torch.ones(L, dtype=torch.bool)
            pad[_span(n, L, side)] = False
            assert not g[i, :, pad].any()


def test_padded_lengths_default_to_the_whole_axis():
    p = sparsedsl.compile_pattern(PATTERNS["streaming"])
    q, k, v = inputs()
    full = torch.full((3,), 19, dtype=torch.int32)
    ref = p(q, k, v, backend="triton")
    torch.testing.assert_close(p(q, k, v, kv_lengths=full, backend="triton"), ref, atol=0, rtol=0)
    torch.testing.assert_close(p(q, k, v, q_lengths=full, backend="triton"), ref, atol=0, rtol=0)


def test_padded_bshd_layout():
    p = sparsedsl.compile_pattern(PATTERNS["chunked"])
    q, k, v = inputs()
    ql = torch.tensor([19, 11, 5], dtype=torch.int32)
    want = p(q, k, v, q_lengths=ql, kv_lengths=ql, padding_side="left", backend="triton")
    got = p(*(t.transpose(1, 2) for t in (q, k, v)), q_lengths=ql, kv_lengths=ql, padding_side="left",
            layout="bshd", backend="triton")
    torch.testing.assert_close(got.transpose(1, 2), want, atol=0, rtol=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(q_lengths=[3, 4, 5]), "q_lengths must be an int32 tensor"),
    (dict(q_lengths=torch.tensor([3, 4, 5])), "q_lengths must be an int32 tensor"),
    (dict(kv_lengths=torch.tensor([3, 4], dtype=torch.int32)), r"kv_lengths must be an int32 tensor \[3\]"),
    (dict(kv_lengths=torch.tensor([3, 40, 5], dtype=torch.int32)), r"kv_lengths must lie in \[0, 19\]"),
    (dict(q_lengths=torch.tensor([3, -1, 5], dtype=torch.int32)), r"q_lengths must lie in \[0, 19\]"),
    (dict(kv_lengths=torch.tensor([3, 4, 5], dtype=torch.int32), padding_side="middle"), "padding_side"),
    (dict(padding_side="left"), "padding_side without q_lengths or kv_lengths"),
])
def test_padded_input_errors(kwargs, message):
    p = sparsedsl.compile_pattern(PATTERNS["streaming"])
    q, k, v = inputs()
    with pytest.raises(InputError, match=message):
        p(q, k, v, **kwargs)


def test_padded_refuses_packed():
    q, k, v = inputs()
    ql = torch.tensor([3, 4, 5], dtype=torch.int32)
    p = sparsedsl.compile_pattern(PATTERNS["streaming"])
    cu = torch.tensor([0, 19], dtype=torch.int32)
    with pytest.raises(InputError, match="cu_seqlens"):
        p(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu_seqlens_q=cu, cu_seqlens_k=cu,
          max_seqlen_q=19, max_seqlen_k=19, kv_lengths=ql[:1])


def test_padded_under_torch_compile_fullgraph():
    """The lengths are device tensors: no value is read while dynamo traces (no graph break)."""
    p = sparsedsl.compile_pattern(PATTERNS["streaming"])
    q, k, v = inputs()
    ql = torch.tensor([19, 11, 5], dtype=torch.int32)

    def f(a, b, c, n):
        return p(a, b, c, q_lengths=n, kv_lengths=n, padding_side="left", backend="triton", _config=(16, 16))

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, ql)
    torch.testing.assert_close(got, f(q, k, v, ql), atol=0, rtol=0)




@pytest.mark.parametrize("config", [None, (64, 64)])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_padded_on_the_gpu(name, side, config):
    """The kernels on the GPU (float32: the dots run in IEEE float32), forward and backward,
    at lengths past a 128-row tile, against the float64 row-by-row oracle."""
    p = sparsedsl.compile_pattern(PATTERNS[name])
    lq = lk = 300
    ql, kl = [300, 131, 0, 64], [300, 131, 17, 200]
    q, k, v = (t.cuda().requires_grad_() for t in inputs(b=4, lq=lq, lk=lk, d=64))
    qlen, klen = (torch.tensor(x, dtype=torch.int32, device="cuda") for x in (ql, kl))
    kw = {} if config is None else {"_config": config}
    out, lse = p(q, k, v, q_lengths=qlen, kv_lengths=klen, padding_side=side, return_lse=True, **kw)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    ref, rlse = oracle(p, q64, k64, v64, ql, kl, side)
    want = torch.autograd.grad(ref, (q64, k64, v64), dout.cpu().double())
    torch.testing.assert_close(out.cpu().double(), ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(lse.cpu() == -math.inf, rlse == -math.inf)
    for g, w, what in zip(got, want, "qkv"):
        assert not g.isnan().any(), what
        torch.testing.assert_close(g.cpu().double(), w, atol=5e-4, rtol=5e-4, msg=f"d{what}")


# ---- decoding from left-padded caches (cache_leftpad, FlashAttention's name) ----------------

def decode_oracle(p, q, k_cache, v_cache, seqlens, leftpad, scale=None):
    """Each sequence alone: its keys are the slots [leftpad, seqlens), its Lq queries the last ones."""
    b, h, lq, d = q.shape
    hk = k_cache.shape[1]
    scale = d ** -0.5 if scale is None else scale
    outs = []
    for i in range(b):
        s, n = int(leftpad[i]), int(seqlens[i])
        mask = torch.tensor(naive.dense(p.root, lq, n - s, h, hk), dtype=torch.bool).reshape(h, lq, n - s)
        kk = k_cache[i, :, s:n].double().repeat_interleave(h // hk, 0)
        vv = v_cache[i, :, s:n].double().repeat_interleave(h // hk, 0)
        logits = (q[i].double() @ kk.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
        lse = torch.logsumexp(logits, -1, keepdim=True)
        outs.append(torch.where(mask, torch.exp(logits - lse.clamp_min(-1e300)), 0.0) @ vv)
    return torch.stack(outs)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_decode_from_left_padded_caches(name, backend):
    p = sparsedsl.compile_pattern(PATTERNS[name])
    gen = torch.Generator().manual_seed(3)
    b, h, hk, cap, d = 3, 4, 2, 40, 16
    q = torch.randn(b, h, 2, d, generator=gen)
    kc, vc = (torch.randn(b, hk, cap, d, generator=gen) for _ in range(2))
    seqlens = torch.tensor([40, 23, 9], dtype=torch.int32)
    leftpad = torch.tensor([0, 6, 7], dtype=torch.int32)  # 40, 17 and 2 real keys
    kc[1, :, :6] = kc[2, :, :7] = float("nan")  # the padding is never read
    vc[1, :, :6] = vc[2, :, :7] = float("nan")
    out = p.decode(q, kc, vc, seqlens, cache_leftpad=leftpad, backend=backend)
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), decode_oracle(p, q, kc, vc, seqlens, leftpad), atol=2e-5, rtol=1e-5)


def test_decode_leftpad_errors():
    p = sparsedsl.compile_pattern(PATTERNS["streaming"])
    q = torch.randn(2, 4, 1, 16)
    kc = torch.randn(2, 2, 10, 16)
    lens = torch.tensor([10, 5], dtype=torch.int32)
    with pytest.raises(InputError, match=r"cache_leftpad must be an int32 tensor \[2\]"):
        p.decode(q, kc, kc, lens, cache_leftpad=torch.tensor([0, 1]))
    with pytest.raises(InputError, match=r"cache_leftpad must lie in \[0, cache_seqlens\]"):
        p.decode(q, kc, kc, lens, cache_leftpad=torch.tensor([0, 6], dtype=torch.int32))


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_decode_reads_flash_attention_layout_in_place(backend):
    """decode(layout='bshd'): q [B, Lq, H, D] and a cache [B, Lmax, Hk, D], as
    flash_attn_with_kvcache takes them, with left padding; out [B, Lq, H, Dv]."""
    p = sparsedsl.compile_pattern(PATTERNS["chunked"])
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(3, 2, 4, 16, generator=gen)
    kc, vc = (torch.randn(3, 30, 2, 16, generator=gen) for _ in range(2))
    seqlens = torch.tensor([30, 21, 12], dtype=torch.int32)
    leftpad = torch.tensor([0, 5, 9], dtype=torch.int32)
    out, lse = p.decode(q, kc, vc, seqlens, cache_leftpad=leftpad, layout="bshd", return_lse=True, backend=backend)
    assert out.shape == (3, 2, 4, 16) and lse.shape == (3, 4, 2)
    want = decode_oracle(p, q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), seqlens, leftpad)
    torch.testing.assert_close(out.transpose(1, 2).double(), want, atol=2e-5, rtol=1e-5)
    with pytest.raises(InputError, match="layout must be"):
        p.decode(q, kc, vc, seqlens, layout="sbhd")


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_from_left_padded_caches_on_the_gpu(name):
    p = sparsedsl.compile_pattern(PATTERNS[name])
    gen = torch.Generator().manual_seed(5)
    b, h, hk, cap, d = 4, 4, 2, 700, 64
    q = torch.randn(b, h, 3, d, generator=gen)
    kc, vc = (torch.randn(b, hk, cap, d, generator=gen) for _ in range(2))
    seqlens = torch.tensor([700, 523, 90, 5], dtype=torch.int32)
    leftpad = torch.tensor([0, 200, 81, 5], dtype=torch.int32)
    for i, s in enumerate(leftpad.tolist()):  # the padding is never read
        kc[i, :, :s] = vc[i, :, :s] = float("nan")
    out = p.decode(q.cuda(), kc.cuda(), vc.cuda(), seqlens.cuda(), cache_leftpad=leftpad.cuda())
    want = decode_oracle(p, q, kc, vc, seqlens, leftpad)
    assert not out[:3].isnan().any()
    torch.testing.assert_close(out.cpu().double()[:3], want[:3], atol=1e-4, rtol=1e-4)
    assert torch.equal(out[3].cpu(), torch.zeros_like(out[3].cpu()))  # no key: output 0


def test_padded_with_sinks():
    """sinks join each real row's denominator; a padded row (LSE -inf) gives 0 and LSE = its sink."""
    p = sparsedsl.compile_pattern(PATTERNS["streaming"])
    q, k, v = inputs()
    ql = torch.tensor([19, 11, 0], dtype=torch.int32)
    sinks = torch.tensor([0.5, -1.0, 2.0, -math.inf])
    out, lse = p(q, k, v, q_lengths=ql, kv_lengths=ql, padding_side="left", sinks=sinks, return_lse=True,
                 backend="triton")
    ref, rlse = oracle(p, q, k, v, [19, 11, 0], [19, 11, 0], "left")
    s = sinks.double()[None, :, None]
    want_lse = torch.logaddexp(rlse, s.expand_as(rlse))
    want = ref * torch.exp(rlse - want_lse).nan_to_num(0.0)[..., None]
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=1e-5)
    fin = want_lse > -math.inf
    torch.testing.assert_close(lse.double()[fin], want_lse[fin], atol=2e-5, rtol=1e-5)
    assert torch.equal(lse[2, :2], sinks[:2].float().expand(19, 2).T)  # entry 2 is all padding
