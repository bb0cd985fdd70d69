"""Learnable attention sinks (gpt-oss): `sinks=` [H] logits that join every row's softmax
denominator. The oracle is written here from the definition (softmax over the visible keys
and one extra column holding the head's sink logit, whose value row is zero), on the mask
of the independent tests/naive.py, in float64; nothing of sparsedsl's reference is used."""
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

def oracle(p, q, k, v, sinks, scale=None):
    """(out, lse) in float64: softmax over [visible logits, sink] (the sink's value row is 0)."""
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    mask = torch.tensor(naive.dense(p.root, lq, lk, h, hk), dtype=torch.bool)  # [H, Lq, Lk]
    kk = k.double().repeat_interleave(h // hk, 1)
    vv = v.double().repeat_interleave(h // hk, 1)
    logits = (q.double() @ kk.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~mask, -math.inf)
    s = sinks.double()[None, :, None, None].expand(b, h, lq, 1)
    full = torch.cat([logits, s], -1)
    lse = torch.logsumexp(full, -1)
    probs = torch.exp(full - lse[..., None])[..., :-1]
    return probs @ vv, lse


def inputs(b=2, h=4, hk=2, lq=13, lk=21, d=16, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=gen, dtype=dtype)
    k = torch.randn(b, hk, lk, d, generator=gen, dtype=dtype)
    v = torch.randn(b, hk, lk, d, generator=gen, dtype=dtype)
    sinks = torch.randn(h, generator=gen, dtype=dtype) * 2
    return q, k, v, sinks


PATTERNS = ["causal", "causal & window(5)", "sink(2) | window(4)", "full"]


@pytest.mark.parametrize("body", PATTERNS)
def test_reference_backend_equals_the_oracle(body):
    p = sparsedsl.compile_pattern(f"pattern t() {{ {body} }}")
    q, k, v, sinks = inputs()
    out, lse = p(q, k, v, sinks=sinks, return_lse=True, backend="reference")
    want_out, want_lse = oracle(p, q, k, v, sinks)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)


def test_gradients_of_q_k_v_and_the_sinks_equal_the_oracle():
    p = sparsedsl.compile_pattern("pattern t() { causal & window(6) }")
    q, k, v, sinks = (t.requires_grad_() for t in inputs(lq=9, lk=14))
    dout = torch.randn(2, 4, 9, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out, lse = p(q, k, v, sinks=sinks, return_lse=True, backend="reference")
    got = torch.autograd.grad((out * dout).sum() + 0.5 * lse.sum(), (q, k, v, sinks))
    want_out, want_lse = oracle(p, q, k, v, sinks)
    want = torch.autograd.grad((want_out * dout).sum() + 0.5 * want_lse.sum(), (q, k, v, sinks))
    for name, a, b in zip("q k v sinks".split(), got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"d{name}")
    assert want[3].abs().min() > 0  # the sinks' gradient is checked on non-zero values


def test_a_row_that_sees_nothing_gives_zero_and_the_sink_as_lse():
    # Lq > Lk with causal: the first Lq - Lk rows sit before every key
    p = sparsedsl.compile_pattern("pattern t() { causal }")
    q, k, v, sinks = (t.requires_grad_() for t in inputs(lq=8, lk=5))
    out, lse = p(q, k, v, sinks=sinks, return_lse=True, backend="reference")
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    assert torch.equal(lse[:, :, :3], sinks.detach()[None, :, None].expand(2, 4, 3))
    grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v, sinks))
    assert all(torch.isfinite(g).all() for g in grads)


def test_minus_infinity_sinks_are_no_sinks_and_keep_empty_rows_finite():
    p = sparsedsl.compile_pattern("pattern t() { causal }")
    q, k, v, _ = inputs(lq=8, lk=5)
    none = torch.full((4,), -math.inf, dtype=torch.float64, requires_grad=True)
    out, lse = p(q, k, v, sinks=none, return_lse=True, backend="reference")
    want_out, want_lse = p(q, k, v, return_lse=True, backend="reference")
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    assert torch.equal(lse[:, :, :3], torch.full_like(lse[:, :, :3], -1e30))  # the clamped "no sink"
    torch.testing.assert_close(lse[:, :, 3:], want_lse[:, :, 3:], rtol=0, atol=0)
    assert torch.isfinite(torch.autograd.grad(out.sum(), none)[0]).all()


def test_decode_with_sinks_equals_the_prefill_rows():
    p = sparsedsl.compile_pattern("pattern t() { sink(2) | window(5) }")
    q, k, v, sinks = inputs(lq=11, lk=11)
    full_out, full_lse = p(q, k, v, sinks=sinks, return_lse=True, backend="reference")
    lens = torch.tensor([11, 11], dtype=torch.int32)
    out, lse = p.decode(q[:, :, -2:], k, v, lens, sinks=sinks, return_lse=True, backend="reference")
    torch.testing.assert_close(out, full_out[:, :, -2:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, full_lse[:, :, -2:], rtol=1e-12, atol=1e-12)


def test_packed_batch_and_bshd_layout_take_sinks():
    p = sparsedsl.compile_pattern("pattern t() { causal & window(4) }")
    q, k, v, sinks = inputs(b=1, lq=12, lk=12)
    # a packed batch of sequences of 5 and 7 tokens: each equals its own call
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    packed = [t[0].transpose(0, 1) for t in (q, k, v)]  # [T, H, D]
    out, lse = p(*packed, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=7, max_seqlen_k=7, sinks=sinks,
                 return_lse=True, backend="reference")
    for a, b in ((0, 5), (5, 12)):
        one = p(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], sinks=sinks, return_lse=True, backend="reference")
        torch.testing.assert_close(out[a:b], one[0][0].transpose(0, 1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse.reshape(4, 12)[:, a:b], one[1][0], rtol=1e-12, atol=1e-12)
    bshd = p(*(t.transpose(1, 2) for t in (q, k, v)), layout="bshd", sinks=sinks, backend="reference")
    torch.testing.assert_close(bshd.transpose(1, 2), oracle(p, q, k, v, sinks)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("body", ["causal & window(5)", "sink(2) | window(4)"])
def test_kernels_with_sinks_forward_and_gradients(body):
    """The Triton kernels (interpreter), float32: out, lse and the four gradients within
    10x the float32 oracle's own error against the float64 oracle (plus a tiny floor)."""
    p = sparsedsl.compile_pattern(f"pattern t() {{ {body} }}")
    q, k, v, sinks = inputs(b=1, lq=40, lk=40, d=16, dtype=torch.float32, seed=1)
    dout = torch.randn(1, 4, 40, 16, generator=torch.Generator().manual_seed(2))

    def run(fn, dtype):
        args = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, sinks)]
        out, lse = fn(*args)
        grads = torch.autograd.grad((out * dout.to(dtype)).sum() + 0.3 * lse.sum(), args)
        return [out, lse, *grads]

    got = run(lambda *a: p(*a[:3], sinks=a[3], return_lse=True, backend="triton", _config=(16, 16)),
              torch.float32)
    same = run(lambda *a: oracle(p, *a[:3], a[3]), torch.float32)  # (the oracle computes in float64 ...)
    same = [t.float().double() for t in same]                       # ... rounded to float32 once
    gold = run(lambda *a: oracle(p, *a[:3], a[3]), torch.float64)
    for name, g, s, w in zip(["out", "lse", "dq", "dk", "dv", "dsinks"], got, same, gold):
        assert not torch.isnan(g).any(), name
        err, ref_err = (g.double() - w).abs().max(), (s - w).abs().max()
        assert err <= 10 * ref_err + 1e-5 * (1 + w.abs().max()), (name, float(err), float(ref_err))


@pytest.mark.parametrize("sinks,message", [
    ("zero", "sinks must be a tensor of shape [4]"),
    (torch.zeros(3), "sinks must have shape [4] (one logit per query head), got [3]"),
    (torch.zeros(4, dtype=torch.int32), "sinks must be a floating-point tensor, got torch.int32"),
])
def test_bad_sinks_are_clear_errors(sinks, message):
    p = sparsedsl.compile_pattern("pattern t() { causal }")
    q, k, v, _ = inputs(dtype=torch.float32)
    with pytest.raises(InputError) as e:
        p(q, k, v, sinks=sinks)
    assert message in str(e.value)
    with pytest.raises(InputError) as e:
        p.decode(q[:, :, -1:], k, v, torch.tensor([21, 21], dtype=torch.int32), sinks=sinks)
    assert message in str(e.value) and str(e.value).startswith("decode:")
