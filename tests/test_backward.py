"""Backward kernels (dQ, dK/dV) and packed variable-length batches, run in
Triton's interpreter on the CPU, against the float64 reference's gradients
(sparsedsl.testing.assert_grads_match_reference: the error-ratio rule).

The FAILURE_MODES.md items that apply to a backward or a packed batch are
marked with their number."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("hypothesis")
pytest.importorskip("triton")

from hypothesis import example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsedsl as sd  # noqa: E402
from sparsedsl.builder import Mask  # noqa: E402
from sparsedsl.ir import nodes as ir  # noqa: E402
from sparsedsl.ir.printer import to_text  # noqa: E402
from sparsedsl.testing import assert_grads_match_reference, attention_inputs, kernel_shapes, patterns  # noqa: E402
from test_kernels import CONFIGS, PATTERNS, SMALL, _shipped, inputs, pytestmark  # noqa: E402,F401

_compiled: dict = {}


def P(body: str) -> sd.CompiledPattern:
    if body not in _compiled:
        _compiled[body] = sd.compile_pattern(f"pattern p() {{ {body} }}")
    return _compiled[body]


def grads(p, q, k, v, dout, config=(16, 16), **kw):
    xs = [t.detach().requires_grad_() for t in (q, k, v)]
    out = p(*xs, backend="triton", _config=config, **kw)
    return torch.autograd.grad(out, xs, dout)


# ---- random static patterns and shapes --------------------------------------------------------

@settings(max_examples=settings().max_examples)
@given(patterns(max_depth=3), kernel_shapes(max_len=40), st.sampled_from(CONFIGS), st.integers(0, 2 ** 16),
       st.sampled_from((None, None, 0.3)))
@example(ir.Pattern("p", ir.Atom("causal", ())),
         dict(batch=1, num_heads=4, num_kv_heads=1, q_len=33, kv_len=17, head_dim=24, head_dim_v=12,
              dtype="float16", layout="nan_padded"), (16, 16), 0, None)
# found by this test: a dq that cancels to 0 (one visible key); fp16 rounding of dS
@example(ir.Pattern("p", ir.Atom("full", ())),
         dict(batch=1, num_heads=1, num_kv_heads=1, q_len=1, kv_len=1, head_dim=16, head_dim_v=16,
              dtype="float32", layout="contiguous"), (16, 16), 1, None)
@example(ir.Pattern("p", ir.Atom("full", ())),
         dict(batch=1, num_heads=2, num_kv_heads=1, q_len=2, kv_len=2, head_dim=24, head_dim_v=16,
              dtype="float16", layout="contiguous"), (16, 16), 0, None)
# found by this test: delta = dO . O from O rounded to float16 (the flash backward's own error)
@example(ir.Pattern("p", ir.Atom("causal", ())),
         dict(batch=1, num_heads=2, num_kv_heads=1, q_len=2, kv_len=2, head_dim=24, head_dim_v=16,
              dtype="float16", layout="contiguous"), (16, 16), 0, None)
def test_random_static_patterns_gradients(root, shape, config, seed, scale):
    """2, 3, 7, 8, 9, 14: lengths around the tile, NaN padding, GQA, odd head dims, Lq != Lk, strides."""
    note(to_text(root))
    p = sd.compile_pattern(Mask(root.body), pattern="p")
    q, k, v = attention_inputs(shape, seed)
    assert_grads_match_reference(p, q, k, v, scale=scale, _config=config, seed=seed)


@pytest.mark.parametrize("file,name,params", _shipped())
def test_shipped_patterns_gradients(file, name, params):
    """Every static pattern in patterns/ trains through the generated kernels."""
    p = sd.compile_pattern(PATTERNS / file, pattern=name, **params)
    q, k, v = inputs(1, 4, 2, 37, 37, d=16, dtype="float32", seed=5)
    assert_grads_match_reference(p, q, k, v, _config=(16, 16))


@pytest.mark.parametrize("body", ["causal", "causal & (sink(2) | window(5))", "dilated(4, 3) & causal",
                                  "strided(2, block=16) | local_blocks(16, 1)", "global(3) | band(1, 2)"])
@pytest.mark.parametrize("lq,lk", [(1, 33), (16, 16), (17, 17), (33, 20), (20, 33), (48, 48)])
def test_lengths_around_the_tile(body, lq, lk):
    """2, 9: Q and KV lengths independently around the tile; bottom-right alignment."""
    q, k, v = inputs(1, 2, 1, lq, lk, seed=lq * 100 + lk)
    assert_grads_match_reference(P(body), q, k, v, _config=(16, 16))


@pytest.mark.parametrize("h,hk", [(1, 1), (2, 1), (4, 2), (8, 2), (8, 1), (4, 4)])
def test_gqa_reduction_over_query_heads(h, hk):
    """7: dK/dV of a KV head sum over its query heads (ratios 1, 2, 4, 8; MQA)."""
    q, k, v = inputs(2, h, hk, 21, 29, seed=h + 10 * hk)
    assert_grads_match_reference(P("causal & window(9)"), q, k, v, _config=(16, 16))


def test_gqa_reduction_by_hand():
    """7: with GQA, dK equals the sum of the MHA dK over the group's heads."""
    p = P("causal & (sink(1) | window(6))")
    q, k, v = inputs(1, 4, 1, 19, 19, seed=3)
    dout = torch.randn(1, 4, 19, 16, generator=torch.Generator().manual_seed(1))
    _, dk, dv = grads(p, q, k, v, dout)
    _, dk4, dv4 = grads(p, q, k.expand(1, 4, 19, 16), v.expand(1, 4, 19, 16), dout)
    torch.testing.assert_close(dk[0, 0], dk4[0].sum(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dv[0, 0], dv4[0].sum(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d,dv,dtype", [(24, 24, "float32"), (12, 40, "float16"), (80, 64, "float32"),
                                        (128, 128, "float16")])
def test_head_dims(d, dv, dtype):
    """8: head dims that are not powers of two, and dv != d."""
    q, k, v = inputs(1, 2, 2, 23, 23, d=d, dv=dv, dtype=dtype, seed=d)
    assert_grads_match_reference(P("causal & window(7)"), q, k, v, _config=(16, 16))


# ---- 1, 11: rows that see nothing -------------------------------------------------------------

@pytest.mark.parametrize("body,lq,lk", [("window(4) & where(q >= 20)", 30, 30), ("causal", 40, 10),
                                        ("none", 9, 9), ("sink(3) & where(q % 2 == 0)", 17, 17)])
def test_rows_that_see_nothing_get_zero_gradients(body, lq, lk):
    """1: fully masked rows: dq 0, no NaN, and they add nothing to dk/dv (checked by the rule)."""
    q, k, v = inputs(1, 2, 1, lq, lk, seed=1)
    dq, dk, dv = assert_grads_match_reference(P(body), q, k, v, _config=(16, 16))
    if body == "none":
        assert dq.abs().max() == 0 and dk.abs().max() == 0 and dv.abs().max() == 0


def test_very_negative_logits():
    """11: every visible logit near -100 (and whole tiles masked): P from the LSE stays finite and exact."""
    q, k, v = inputs(1, 1, 1, 40, 40, seed=2)
    q, k = -5 - 0.1 * q, 5 + 0.1 * k  # q.k ~ -400, times the scale 1/4
    assert_grads_match_reference(P("causal & (sink(1) | window(5))"), q, k, v, _config=(16, 16))


def test_lse_gradient():
    """A loss that uses the LSE too (d lse / d s = P)."""
    q, k, v = inputs(1, 2, 1, 25, 25, seed=4)
    assert_grads_match_reference(P("causal & (sink(2) | window(7))"), q, k, v, lse_weight=0.7, _config=(16, 16))


# ---- 14: strides ----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["transposed", "nan_padded"])
def test_strided_inputs_and_grad_out(layout):
    """14: transposed/offset inputs, a non-contiguous grad_out."""
    q, k, v = inputs(2, 2, 1, 22, 22, layout=layout, seed=8)
    dout = torch.randn(2, 22, 2, 16, generator=torch.Generator().manual_seed(2)).transpose(1, 2)
    assert_grads_match_reference(P("causal"), q, k, v, dout, _config=(16, 16))


def test_expanded_grad_out():
    """14: out.sum().backward() hands the kernel a grad_out of stride 0."""
    p = P("causal & window(6)")
    q, k, v = inputs(1, 2, 2, 18, 18, seed=9)
    xs = [t.detach().requires_grad_() for t in (q, k, v)]
    p(*xs, backend="triton", _config=(16, 16)).sum().backward()
    rs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    p(*rs, backend="reference").sum().backward()
    for x, r in zip(xs, rs):
        torch.testing.assert_close(x.grad.double(), r.grad, atol=2e-5, rtol=1e-4)


# ---- 13: determinism ---------------------------------------------------------------------------

def test_gradients_are_bitwise_repeatable():
    """13: no atomics: each gradient element is written by one program."""
    p = P("causal & (sink(2) | window(9))")
    q, k, v = inputs(1, 4, 2, 35, 35, seed=11)
    dout = torch.randn(1, 4, 35, 16, generator=torch.Generator().manual_seed(3))
    a, b = grads(p, q, k, v, dout), grads(p, q, k, v, dout)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---- 15: empty -----------------------------------------------------------------------------------

@pytest.mark.parametrize("b,lq,lk", [(0, 5, 5), (1, 0, 5), (1, 5, 0)])
def test_empty_tensors(b, lq, lk):
    p = P("causal")
    q, k, v = (torch.randn(b, 2, n, 16, requires_grad=True) for n in (lq, lk, lk))
    out = p(q, k, v, backend="triton", _config=(16, 16))
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad.shape == t.shape and not t.grad.isnan().any() and (t.grad == 0).all()


# ---- reference path, autograd plumbing, torch.compile ---------------------------------------------

def test_gradcheck_on_the_reference_path():
    p = P("causal & (sink(1) | window(3))")
    q, k, v = (torch.randn(1, 2, n, 4, dtype=torch.float64, requires_grad=True) for n in (6, 7, 7))
    assert torch.autograd.gradcheck(lambda a, b, c: p(a, b, c, backend="reference"), (q, k, v))


def test_opcheck_of_the_registered_ops():
    """torch.library's checks: schema, fake (meta) implementation, autograd registration."""
    from sparsedsl.runtime.ops import attention, pattern_key

    p = P("causal & window(5)")
    q, k, v = (t.requires_grad_() for t in inputs(1, 2, 1, 17, 17))
    torch.library.opcheck(attention, (q, k, v, pattern_key(p.root), 0.25, None, None, 0, 0, [16, 16], None, False),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    # a padded batch: (first row, length) per entry
    rows_q, rows_k = torch.tensor([[0, 9]], dtype=torch.int32), torch.tensor([[4, 13]], dtype=torch.int32)
    torch.library.opcheck(attention, (q, k, v, pattern_key(p.root), 0.25, rows_q, rows_k, 0, 0, [16, 16], None, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_fullgraph():
    """No graph break: the kernels are one registered op with a fake implementation. The
    pattern is called for the first time inside the compiled function."""
    p = P("causal & (sink(3) | window(11))")
    q, k, v = inputs(1, 2, 1, 20, 20, seed=12)

    def loss(a, b, c):
        return (p(a, b, c, backend="triton", _config=(16, 16)) ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    xs = [t.detach().requires_grad_() for t in (q, k, v)]
    ys = [t.detach().requires_grad_() for t in (q, k, v)]
    compiled(*xs).backward()
    loss(*ys).backward()
    for x, y in zip(xs, ys):
        assert torch.equal(x.grad, y.grad)


def test_float64_with_grad_on_triton_raises():
    q, k, v = (torch.randn(1, 1, 4, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    with pytest.raises(sd.InputError, match="float64"):
        P("causal")(q, k, v, backend="triton")


# ---- packed variable-length batches ---------------------------------------------------------------

def packed(lens_q, lens_k, h, hk, d=16, dv=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lens_q), h, d, generator=gen).to(dtype)
    k = torch.randn(sum(lens_k), hk, d, generator=gen).to(dtype)
    v = torch.randn(sum(lens_k), hk, dv, generator=gen).to(dtype)
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32)  # noqa
    return q, k, v, cu(lens_q), cu(lens_k)


def one_by_one(p, q, k, v, cu_q, cu_k, dout):
    """17: the reference, each sequence on its own (float64): out, lse, and grads."""
    outs, lses, gs = [], [], [[], [], []]
    for i in range(len(cu_q) - 1):
        a, b, c, d = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        xs = [t.detach().double()[s:e].transpose(0, 1)[None].requires_grad_()
              for t, (s, e) in ((q, (a, b)), (k, (c, d)), (v, (c, d)))]
        out, lse = p(*xs, backend="reference", return_lse=True)
        g = (None,) * 3 if not out.requires_grad else \
            torch.autograd.grad(out, xs, dout.double()[a:b].transpose(0, 1)[None], allow_unused=True)
        for lst, x, gg in zip(gs, xs, g):
            lst.append((torch.zeros_like(x) if gg is None else gg)[0].transpose(0, 1))
        outs.append(out[0].transpose(0, 1))
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, 1), [torch.cat(x) for x in gs]


VARLEN_CASES = [
    ("causal", [5, 0, 1, 17, 33], None, 2, 1),
    ("causal & (sink(2) | window(6))", [16, 1, 40, 3], None, 4, 2),
    ("dilated(3, 2) | local_blocks(16, 1)", [21, 9], None, 2, 2),
    ("causal", [3, 20, 0], [7, 20, 4], 2, 1),  # Lq != Lk per sequence: bottom-right in each
    ("strided(2, block=16) & causal", [48, 17], None, 1, 1),
]


@pytest.mark.parametrize("body,lens_q,lens_k,h,hk", VARLEN_CASES)
def test_varlen_equals_sequences_one_by_one(body, lens_q, lens_k, h, hk):
    """15, 17: packed = each sequence alone (empty and length-1 sequences), forward and backward."""
    p = P(body)
    lens_k = lens_k or lens_q
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, h, hk, seed=len(lens_q))
    dout = torch.randn(q.shape[0], h, 16, generator=torch.Generator().manual_seed(7))
    xs = [t.detach().requires_grad_() for t in (q, k, v)]
    out, lse = p(*xs, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k),
                 backend="triton", return_lse=True, _config=(16, 16))
    got = torch.autograd.grad(out, xs, dout)
    ref_out, ref_lse, ref_grads = one_by_one(p, q, k, v, cu_q, cu_k, dout)
    assert out.shape == (q.shape[0], h, 16) and lse.shape == (h, q.shape[0])
    torch.testing.assert_close(out.double(), ref_out, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-6, rtol=1e-5)
    for g, r in zip(got, ref_grads):
        assert not g.isnan().any()
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-4)


def test_varlen_reference_backend_matches_triton():
    p = P("causal & window(5)")
    q, k, v, cu_q, cu_k = packed([7, 12], [7, 12], 2, 1)
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=12, max_seqlen_k=12)
    a = p(q, k, v, backend="triton", _config=(16, 16), **kw)
    b = p(q, k, v, backend="reference", **kw)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(cu_seqlens_q=torch.tensor([0, 5, 9], dtype=torch.int64)), "int32"),
    (dict(cu_seqlens_q=torch.tensor([0, 5, 8], dtype=torch.int32)), "end at"),
    (dict(cu_seqlens_q=torch.tensor([0, 6, 5, 9], dtype=torch.int32)), "never decrease"),
    (dict(max_seqlen_q=3), "longest"),
    (dict(cu_seqlens_k=None), "all four"),
])
def test_varlen_bad_inputs(kw, match):
    """18: a packed batch that does not add up raises a clear error."""
    p = P("causal")
    q, k, v, cu_q, cu_k = packed([5, 4], [5, 4], 1, 1)
    args = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=5, max_seqlen_k=5)
    args.update(kw)
    with pytest.raises(sd.InputError, match=match):
        p(q, k, v, backend="triton", **args)


def test_varlen_wants_packed_tensors():
    q = torch.randn(1, 2, 5, 16)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    with pytest.raises(sd.InputError, match="total_tokens"):
        P("causal")(q, q, q, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=5, max_seqlen_k=5)


# ---- split key tiles (dK/dV of sink / global keys over several programs) -------------------

@pytest.fixture
def split_everything(monkeypatch):
    """Split every key tile (long keys cover every length here) into many parts."""
    from sparsedsl.kernels import launch

    monkeypatch.setattr(launch, "SPLIT_QUERIES", 8)
    monkeypatch.setattr(launch, "long_keys", lambda root: 1 << 20)
    return launch


@pytest.mark.parametrize("body", ["causal & (sink(3) | window(7))", "global(5) | band(2, 2)", "causal",
                                  "strided(2, block=16) | local_blocks(16, 1)"])
@pytest.mark.parametrize("h,hk,lq,lk", [(4, 2, 37, 37), (2, 1, 20, 45), (2, 2, 45, 20), (3, 3, 9, 33)])
def test_split_key_tiles_gradients(split_everything, body, h, hk, lq, lk):
    """Split tiles sum their parts' partial dK/dV in order: the same gradients as golden."""
    p = P(body)
    q, k, v = inputs(2, h, hk, lq, lk, seed=21)
    run = split_everything._Launch(p.plan, q, k, v, True, (16, 16), None)
    assert split_everything.split_plan(run)[1] > 1  # the split path is the one tested
    assert_grads_match_reference(p, q, k, v, _config=(16, 16))


def test_split_key_tiles_varlen(split_everything):
    """Split tiles in a packed batch: per-sequence key starts, a sequence shorter than a tile."""
    p = P("causal & (sink(2) | window(5))")
    lens = [9, 0, 40, 1, 23]
    q, k, v, cu_q, cu_k = packed(lens, lens, 4, 2, seed=3)
    dout = torch.randn(q.shape[0], 4, 16, generator=torch.Generator().manual_seed(8))
    xs = [t.detach().requires_grad_() for t in (q, k, v)]
    out = p(*xs, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=40, max_seqlen_k=40, backend="triton",
            _config=(16, 16))
    got = torch.autograd.grad(out, xs, dout)
    for g, r in zip(got, one_by_one(p, q, k, v, cu_q, cu_k, dout)[2]):
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-4)


def test_split_plan_only_for_long_keys():
    """The schedule: sink/global patterns with many queries per KV head split; others do not."""
    from sparsedsl.kernels import launch

    q = torch.randn(1, 8, 4096, 16)
    k = torch.randn(1, 2, 4096, 16)

    def plan(body):
        p = P(body)
        return launch.split_plan(launch._Launch(p.plan, q, k, k, True, (16, 16), None))

    assert plan("causal & (sink(4) | window(64))") == (128, 8)  # 4096 queries x 4 heads / 2048
    assert plan("global(130) | band(8, 8)") == (256, 8)
    assert plan("causal & window(64)") == (0, 1)
    assert plan("dilated(4, 3) & sink(4)") == (0, 1)  # residue layout


def test_short_sequences_skip_autotuning():
    """Up to 256 positions, a GPU call runs one fixed config instead of compiling the whole list."""
    from sparsedsl.kernels import launch

    p = P("causal")

    def fixed(lq, lk, d):
        q, k = torch.randn(1, 2, lq, d), torch.randn(1, 1, lk, d)
        return launch._Launch(p.plan, q, k, k, False, None, None).fixed("dkdv")

    assert fixed(64, 64, 64) == (64, 32, 4, 2)
    assert fixed(256, 200, 256) == (32, 32, 4, 2)
    assert fixed(257, 64, 64) is None and fixed(64, 300, 64) is None


def test_full_tile_loops_beside_dead_tiles():
    """Full tiles run in loops of their own (no mask, no bounds). Here later segments have
    dead tiles (already visited by earlier strided ones), so their pieces stay in the masked
    loop with a run-time mask while other pieces' partial tiles have a constant one: the
    forward and the gradients still equal the reference."""
    from sparsedsl.kernels.generate import kernel_source

    p = P("causal & (sink(2) | window(8) | strided(4, block=16) | dilated(32, 4) | global(3))")
    src, _ = kernel_source(p.plan, p.plan.text, True, 32, 16)
    assert "masked = masked | dead" in src and "tl.where(t < c_1, True, masked)" in src
    assert src.count("_kv_full(") == 2 and src.count("_dq_full(") == 2  # (definition and call)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 77, 32, generator=gen)
    k, v = (torch.randn(1, 1, 150, 32, generator=gen) for _ in range(2))
    assert_grads_match_reference(p, q, k, v, _config=(16, 16))
