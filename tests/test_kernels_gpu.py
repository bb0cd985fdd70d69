"""The generated Triton kernels on a real GPU (pytest -m gpu): bf16 included,
larger shapes, lengths up to 64K, FlexAttention as an independent cross-check."""
import pytest
import torch

import sparsedsl
from sparsedsl.reference.attention import reference_attention

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STATIC = [
    ("pattern c() { causal }", {}),
    ("patterns/streaming_llm.attn", dict(sink=128, window=1024)),
    ("patterns/s2_attention.attn", dict(pattern="s2_attention")),
    ("patterns/s2_attention.attn", dict(pattern="s2_attention", dense_heads=1, block=128, local=4)),
    ("patterns/duo_attention.attn", dict(pattern="duo_attention", retrieval=3)),
    ("patterns/duo_attention.attn", dict(pattern="duo_attention_gqa")),
    ("patterns/longformer.attn", dict(pattern="longformer", window=256, num_global=17)),
    ("patterns/longformer.attn", dict(pattern="longformer_lm")),
    ("patterns/bigbird.attn", {}),
    ("patterns/longnet.attn", dict(pattern="longnet")),
    ("patterns/longnet.attn", dict(pattern="longnet_dilated")),
    ("patterns/moa.attn", {}),
    ("patterns/longgen.attn", dict(pattern="longgen_sparse")),
    ("pattern d() { dilated(256, 4) }", {}),
    ("pattern w() { where((q + 3 * k) % 5 < 2) & band(300, 40) - sink(7) }", {}),
]


def errors(out, ref, golden):
    assert not torch.isnan(out).any(), "NaN in kernel output"
    finite = torch.isfinite(golden)
    e_k = (out.double() - golden)[finite].abs().mean()
    e_r = (ref.double() - golden)[finite].abs().mean()
    return float(e_k), float(e_r)


def check(p, b, h, hk, lq, lk, d, dtype, dv=None, factor=2.0, config=(64, 64)):
    gen = torch.Generator(device="cuda").manual_seed(lq * 31 + lk)
    q = torch.randn(b, h, lq, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, hk, lk, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, hk, lk, dv or d, device="cuda", dtype=dtype, generator=gen)
    out, lse = p(q, k, v, return_lse=True, backend="triton", _config=config)
    golden, glse = reference_attention(p.root, q.double(), k.double(), v.double())
    ref, rlse = reference_attention(p.root, q, k, v, compute_dtype=dtype)
    e_k, e_r = errors(out, ref, golden)
    assert e_k <= factor * e_r + 1e-6, (e_k, e_r)
    assert torch.equal(torch.isinf(lse), torch.isinf(glse)), "rows seeing nothing must have lse -inf"
    le_k, le_r = errors(lse, rlse.float(), glse)
    assert le_k <= factor * le_r + 1e-5, (le_k, le_r)


@pytest.mark.parametrize("src,params", STATIC, ids=lambda x: str(x)[:40])
def test_patterns_gpu(src, params):
    p = sparsedsl.compile_pattern(src, **params)
    for lq, lk in [(1000, 1000), (257, 3001), (4097, 4097)]:
        check(p, 2, 8, 2, lq, lk, 64, torch.bfloat16)
    check(p, 1, 4, 4, 777, 777, 64, torch.float16, config=(128, 32))


def test_strided_block_smaller_than_tile_gpu():
    """Blocks the key tile does not divide: walked as masked ranges (fixed and autotuned tiles)."""
    p = sparsedsl.compile_pattern("patterns/s2_attention.attn", pattern="s2_attention", block=16, local=3, stride=5)
    check(p, 1, 4, 2, 1500, 1500, 64, torch.bfloat16, config=(64, 64))
    check(p, 1, 4, 2, 1500, 1500, 64, torch.bfloat16, config=None)


def test_autotuned_path_gpu():
    p = sparsedsl.compile_pattern("patterns/s2_attention.attn", pattern="s2_attention", local=4, stride=4)
    check(p, 1, 8, 2, 3000, 3000, 128, torch.bfloat16, config=None)


@pytest.mark.parametrize("d,dv", [(16, 16), (96, 96), (128, 128), (80, 64), (256, 256)])
def test_head_dims_gpu(d, dv):
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=5, window=300)
    check(p, 1, 4, 1, 1031, 1031, d, torch.bfloat16, dv)


def test_float32_gpu():
    p = sparsedsl.compile_pattern("patterns/s2_attention.attn", pattern="s2_attention", local=3, stride=4)
    check(p, 1, 4, 4, 700, 900, 64, torch.float32)


@pytest.mark.parametrize("L", [16384, 65536])
def test_long_gpu(L):
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=64, window=512)
    check(p, 1, 2, 1, L, L, 64, torch.bfloat16)


def test_matches_flex_attention_gpu():
    from torch.nn.attention.flex_attention import flex_attention

    for src, params in STATIC[:8]:
        p = sparsedsl.compile_pattern(src, **params)
        L, h, hk = 4096, 8, 2
        q, k, v = (torch.randn(1, n, L, 64, device="cuda", dtype=torch.bfloat16) for n in (h, hk, hk))
        bm = p.to_flex_block_mask(L, L, h, hk)
        ref = torch.compile(flex_attention)(q, k, v, block_mask=bm, enable_gqa=True)
        out = p(q, k, v)
        assert float((out.float() - ref.float()).abs().max()) < 2e-2


def test_poisoned_and_padded_inputs_gpu():
    """NaN past the sequence ends of q/k/v must not leak; every output element is written."""
    p = sparsedsl.compile_pattern("patterns/s2_attention.attn", pattern="s2_attention", local=2, stride=3)
    L, pad = 1000, 64
    q, k, v = (torch.randn(1, 4, L + pad, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for t in (q, k, v):
        t[:, :, L:] = float("nan")
    out = p(q[:, :, :L], k[:, :, :L], v[:, :, :L])
    assert not torch.isnan(out).any()
    clean = p(q[:, :, :L].clone(), k[:, :, :L].clone(), v[:, :, :L].clone())
    assert torch.equal(out, clean)


def test_strided_inputs_gpu():
    p = sparsedsl.compile_pattern("pattern c() { causal & window(100) }")
    x = torch.randn(1, 600, 3, 4, 64, device="cuda", dtype=torch.bfloat16)  # [B, L, (q,k,v), H, D]
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    assert torch.equal(p(q, k, v), p(q.contiguous(), k.contiguous(), v.contiguous()))


def test_cuda_graph_capture_gpu():
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=4, window=256)
    q, k, v = (torch.randn(1, 4, 2048, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    expected = p(q, k, v)  # warm: compile and autotune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = p(q, k, v)
    q.normal_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, p(q, k, v)) and not torch.equal(out, expected)


@pytest.mark.parametrize("src", ["pattern c() { causal }", "pattern s() { causal & (sink(4) | window(100)) }",
                                 "pattern d() { causal & dilated(64, 4) }"])
def test_nonfinite_value_in_v_reaches_only_its_queries_gpu(src):
    # a NaN or infinity in V must reach only the rows that see its key, on the autotuned kernels
    p = sparsedsl.compile_pattern(src)
    gen = torch.Generator(device="cuda").manual_seed(7)
    q, k, v = (torch.randn(1, 4, 700, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    v[0, 0, 699] = float("nan")
    v[0, 1, 300, 5] = float("inf")
    v[0, 2, 5, 7] = float("-inf")
    golden, _ = reference_attention(p.root, q.double(), k.double(), v.double())
    out = p(q, k, v, backend="triton")
    assert golden.isfinite().float().mean() > 0.5
    for bad in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(bad(out), bad(golden)), bad.__name__
    finite = golden.isfinite()
    assert (out.double() - golden)[finite].abs().max() < 0.05
