"""The backward kernels and packed batches on a real GPU (pytest -m gpu): bf16,
autotuned tiles, long sequences, FlexAttention's gradients as a cross-check,
determinism under load, torch.compile with inductor."""
import pytest
import torch

import sparsedsl
from sparsedsl.testing import assert_grads_match_reference
from test_kernels_gpu import STATIC

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def make(b, h, hk, lq, lk, d, dtype, dv=None, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(b, n, length, dim, device="cuda", dtype=dtype, generator=gen)
            for n, length, dim in ((h, lq, d), (hk, lk, d), (hk, lk, dv or d)))


@pytest.mark.parametrize("src,params", STATIC, ids=lambda x: str(x)[:40])
def test_pattern_gradients_gpu(src, params):
    """Every benchmark/shipped static pattern: bf16, Lq = Lk and Lq != Lk (fixed tiles: one compile each)."""
    p = sparsedsl.compile_pattern(src, **params)
    for lq, lk in [(1000, 1000), (257, 1501)]:
        q, k, v = make(1, 4, 2, lq, lk, 64, torch.bfloat16, seed=lq)
        assert_grads_match_reference(p, q, k, v, _config=(64, 64))


@pytest.mark.parametrize("config", [(64, 64), (128, 32), (64, 32, 4, 3)])
def test_fixed_tiles_gpu(config):
    p = sparsedsl.compile_pattern("patterns/s2_attention.attn", pattern="s2_attention", local=3, stride=4, block=64)
    q, k, v = make(2, 4, 1, 1100, 1100, 64, torch.bfloat16, seed=1)
    assert_grads_match_reference(p, q, k, v, _config=config)


@pytest.mark.parametrize("d,dv", [(16, 16), (96, 96), (128, 128), (80, 64), (256, 256)])
def test_head_dims_gpu(d, dv):
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=5, window=300)
    q, k, v = make(1, 4, 1, 777, 777, d, torch.bfloat16, dv, seed=d)
    assert_grads_match_reference(p, q, k, v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_dtypes_gpu(dtype):
    p = sparsedsl.compile_pattern("patterns/longformer.attn", pattern="longformer", window=64, num_global=9)
    q, k, v = make(1, 4, 4, 600, 600, 64, dtype, seed=3)
    assert_grads_match_reference(p, q, k, v)


def test_poisoned_and_strided_gpu():
    """NaN past the sequence end, non-contiguous grad_out: no leak, no NaN."""
    p = sparsedsl.compile_pattern("pattern c() { causal & (sink(4) | window(200)) }")
    L, pad = 900, 70
    bufs = [torch.full((1, 4, L + pad, 64), float("nan"), device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    for t in bufs:
        t[:, :, :L] = torch.randn(1, 4, L, 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = (t[:, :, :L] for t in bufs)
    dout = torch.randn(1, L, 4, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    assert_grads_match_reference(p, q, k, v, dout)


def test_gradients_match_flex_attention_gpu():
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention)
    for src, params in STATIC[:8]:
        p = sparsedsl.compile_pattern(src, **params)
        L, h, hk = 4096, 8, 2
        q, k, v = (t.requires_grad_() for t in make(1, h, hk, L, L, 64, torch.bfloat16, seed=5))
        dout = torch.randn(1, h, L, 64, device="cuda", dtype=torch.bfloat16)
        ours = torch.autograd.grad(p(q, k, v), (q, k, v), dout)
        ref = torch.autograd.grad(flex(q, k, v, block_mask=p.to_flex_block_mask(L, L, h, hk), enable_gqa=True),
                                  (q, k, v), dout)
        for name, a, b in zip("qkv", ours, ref):
            scale = float(b.float().abs().max())
            err = float((a.float() - b.float()).abs().max())
            assert err <= 3e-2 * scale, (src, params, name, err, scale)


def test_long_sequence_gradients_gpu():
    """64K keys: no int32 overflow, gradients of a window pattern checked on rows that matter."""
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=64, window=512)
    L = 65536
    q, k, v = (t.requires_grad_() for t in make(1, 2, 1, L, L, 64, torch.bfloat16, seed=6))
    dout = torch.randn(1, 2, L, 64, device="cuda", dtype=torch.bfloat16)
    dq, dk, dv = torch.autograd.grad(p(q, k, v), (q, k, v), dout)
    assert not any(torch.isnan(g).any() for g in (dq, dk, dv))
    # dq of the last 700 queries, which see the 64 sinks and keys [L - 1211, L), in float64
    qq = q.detach()[:, :, -700:].double().requires_grad_()
    kk = torch.cat([k.detach()[:, :, :64], k.detach()[:, :, -1211:]], 2).double()
    vv = torch.cat([v.detach()[:, :, :64], v.detach()[:, :, -1211:]], 2).double()
    pos_k = torch.cat([torch.arange(64), torch.arange(L - 1211, L)]).cuda()
    pos_q = torch.arange(L - 700, L).cuda()
    vis = (pos_k[None] <= pos_q[:, None]) & ((pos_k[None] < 64) | (pos_k[None] > pos_q[:, None] - 512))
    s = (qq @ kk.repeat_interleave(2, 1).transpose(-1, -2)) * 64 ** -0.5
    out = torch.softmax(s.masked_fill(~vis, float("-inf")), -1) @ vv.repeat_interleave(2, 1)
    (gq,) = torch.autograd.grad(out, qq, dout[:, :, -700:].double())
    err = float((dq[:, :, -700:].double() - gq).abs().max())
    assert err < 2e-2 * float(gq.abs().max()), err


def test_determinism_under_load_gpu():
    """13: no atomics, so dK/dV (and dQ) are bitwise equal across runs, with a big batch."""
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=16, window=256)
    q, k, v = (t.requires_grad_() for t in make(32, 8, 2, 1024, 1024, 64, torch.bfloat16, seed=7))
    dout = torch.randn(32, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
    out = p(q, k, v)
    first = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    for _ in range(40):
        again = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_torch_compile_inductor_gpu():
    p = sparsedsl.compile_pattern("patterns/s2_attention.attn", pattern="s2_attention", local=3, stride=4)

    def loss(a, b, c):
        return (p(a, b, c).float() ** 2).mean()

    compiled = torch.compile(loss, fullgraph=True)
    xs = [t.requires_grad_() for t in make(1, 4, 2, 2048, 2048, 64, torch.bfloat16, seed=8)]
    ys = [t.detach().clone().requires_grad_() for t in xs]
    compiled(*xs).backward()
    loss(*ys).backward()
    for x, y in zip(xs, ys):
        assert torch.equal(x.grad, y.grad)


def test_varlen_gpu():
    """Packed documents = each document alone (through the batched kernels), forward and backward."""
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=8, window=300)
    lens = [700, 1, 0, 2100, 333, 1024]
    h, hk, d = 8, 2, 64
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    T = sum(lens)
    q, k, v = (torch.randn(T, n, d, device="cuda", dtype=torch.bfloat16).requires_grad_() for n in (h, hk, hk))
    dout = torch.randn(T, h, d, device="cuda", dtype=torch.bfloat16)
    out = p(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens), max_seqlen_k=max(lens))
    got = torch.autograd.grad(out, (q, k, v), dout)
    start = 0
    for n in lens:
        if n:
            xs = [t.detach()[start:start + n].transpose(0, 1)[None].requires_grad_() for t in (q, k, v)]
            o = p(*xs)
            ref = torch.autograd.grad(o, xs, dout[start:start + n].transpose(0, 1)[None])
            torch.testing.assert_close(out[start:start + n], o[0].transpose(0, 1), atol=2e-2, rtol=2e-2)
            for g, r in zip(got, ref):
                torch.testing.assert_close(g[start:start + n], r[0].transpose(0, 1), atol=2e-2, rtol=2e-2)
        start += n


@pytest.mark.parametrize("src,params", [("patterns/streaming_llm.attn", dict(sink=100, window=512)),
                                        ("patterns/longformer.attn", dict(pattern="longformer", window=256,
                                                                          num_global=64))])
def test_split_sink_tiles_gpu(src, params):
    """GQA with 4096 queries per head: the sink / global key tiles' dK/dV are split over
    programs and summed; all gradients against float64 golden."""
    from sparsedsl.kernels import launch

    p = sparsedsl.compile_pattern(src, **params)
    q, k, v = make(1, 8, 2, 4096, 4096, 64, torch.bfloat16, seed=9)
    assert launch.split_plan(launch._Launch(p.plan, q, k, v, False, None, None))[1] > 1
    assert_grads_match_reference(p, q, k, v, _config=(64, 32, 4, 3))
