"""The generated Triton forward kernel on the CPU, in Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 when there is no CUDA device).

Every test compares the kernel with an independent expectation: the float64
reference through `sparsedsl.testing.assert_matches_reference` (error at most
a small multiple of the same-dtype reference's error, no NaN, exact -inf/0 on
rows that see nothing), or numbers computed here by hand. Small tiles
(`_config=(16, 16)` and (32, 16), (16, 32)) make short sequences cross tile
boundaries. The list follows /work/shared/FAILURE_MODES.md: fully masked
rows, sinks, lengths around the tile, NaN padding past the end, GQA, head
dims, Lq != Lk, window off-by-ones, very negative logits, non-contiguous and
empty inputs, the shipped patterns, and input errors.

What the interpreter cannot show (races, GPU rounding, bf16, grid limits,
int32 overflow at 2^31 elements) is in tests/test_kernels_gpu.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("hypothesis")

from hypothesis import example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsedsl as sd  # noqa: E402
from sparsedsl.builder import Mask  # noqa: E402
from sparsedsl.ir import build  # noqa: E402
from sparsedsl.ir import nodes as ir  # noqa: E402
from sparsedsl.ir.printer import to_text  # noqa: E402
from sparsedsl.testing import (assert_grads_match_reference, assert_matches_reference, atoms,  # noqa: E402
                               attention_inputs, kernel_shapes, patterns)


def _interpreter_on() -> bool:
    try:
        from sparsedsl.kernels.launch import interpreter_ready
    except ImportError:  # no triton
        return False
    return interpreter_ready()


pytestmark = pytest.mark.skipif(not _interpreter_on(), reason="the kernels run on CPU tensors only in Triton's "
                                "interpreter: TRITON_INTERPRET=1 before triton is imported (tests/conftest.py)")

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"
CONFIGS = [(16, 16), (32, 16), (16, 32)]
NEG_INF = float("-inf")
_compiled: dict = {}


def C(src: str, **params) -> sd.CompiledPattern:
    key = (src, tuple(sorted(params.items())))
    if key not in _compiled:
        _compiled[key] = sd.compile_pattern(src, **params)
    return _compiled[key]


def P(body: str) -> sd.CompiledPattern:
    return C(f"pattern p() {{ {body} }}")


def inputs(b, h, hk, lq, lk, d=16, dv=None, dtype="float32", layout="contiguous", seed=0):
    shape = dict(batch=b, num_heads=h, num_kv_heads=hk, q_len=lq, kv_len=lk, head_dim=d,
                 head_dim_v=d if dv is None else dv, dtype=dtype, layout=layout)
    return attention_inputs(shape, seed)


def triton(p, q, k, v, config=(16, 16), **kw):
    return p(q, k, v, backend="triton", return_lse=True, _config=config, **kw)


# ---- random static patterns ---------------------------------------------------------------

_KERNEL = settings(max_examples=settings().max_examples * 2)  # most examples take ~0.2 s


@_KERNEL
@given(patterns(max_depth=3), kernel_shapes(), st.sampled_from(CONFIGS), st.integers(0, 2 ** 16),
       st.sampled_from((None, None, None, 0.3, 2.0)))
@example(ir.Pattern("p", ir.Atom("causal", ())),
         dict(batch=1, num_heads=4, num_kv_heads=1, q_len=33, kv_len=17, head_dim=24, head_dim_v=12,
              dtype="float16", layout="nan_padded"), (16, 16), 0, None)
# found by this test: strided blocks smaller than the key tile; global(0) with Lq > Lk
@example(ir.Pattern("p", build.atom("strided", ir.Const(7), ir.Const(1), ir.Const(0))),
         dict(batch=1, num_heads=4, num_kv_heads=2, q_len=3, kv_len=41, head_dim=32, head_dim_v=32,
              dtype="float32", layout="transposed"), (16, 16), 0, None)
@example(ir.Pattern("p", build.compl(build.atom("global", ir.Const(0)))),
         dict(batch=1, num_heads=4, num_kv_heads=2, q_len=14, kv_len=2, head_dim=12, head_dim_v=32,
              dtype="float16", layout="transposed"), (16, 32), 0, None)
def test_random_static_patterns_match_reference(root, shape, config, seed, scale):
    note(to_text(root))
    p = sd.compile_pattern(Mask(root.body), pattern="p")
    q, k, v = attention_inputs(shape, seed)
    assert_matches_reference(p, q, k, v, scale=scale, _config=config)


@settings(max_examples=settings().max_examples)
@given(st.lists(atoms(), min_size=1, max_size=3), st.sampled_from(("|", "&", "-")), kernel_shapes(max_len=40),
       st.sampled_from(CONFIGS))
def test_atoms_and_small_combinations_match_reference(parts, op, shape, config):
    """One to three atoms under one operator: each atom's closed-form bounds
    and element mask, with little chance of the pattern folding away."""
    mask = parts[0]
    for a in parts[1:]:
        mask = {"|": Mask(mask) | Mask(a), "&": Mask(mask) & Mask(a), "-": Mask(mask) - Mask(a)}[op].node
    note(to_text(mask))
    p = sd.compile_pattern(Mask(mask), pattern="p")
    q, k, v = attention_inputs(shape, 1)
    assert_matches_reference(p, q, k, v, _config=config)


# ---- 1, 11: rows that see nothing; tiles that see nothing ------------------------------------


@pytest.mark.parametrize("body,lq,lk,empty", [
    ("causal", 20, 5, {0: range(15), 1: range(15)}),                    # negative positions see nothing
    ("causal & where(q % 3 != 1)", 33, 33, {0: range(1, 33, 3), 1: range(1, 33, 3)}),  # in every tile
    ("window(4) - where(q >= 16 and q < 32)", 40, 40, {0: range(16, 32), 1: range(16, 32)}),  # a 16-row tile
    ("none", 17, 17, {0: range(17), 1: range(17)}),
    ("where(h == 1) & causal", 3, 9, {0: range(3), 1: ()}),              # a whole head
])
def test_rows_that_see_nothing(body, lq, lk, empty):
    """Output exactly 0 and LSE exactly -inf on those rows, no NaN anywhere,
    finite LSE on every other row."""
    p = P(body)
    q, k, v = inputs(1, 2, 1, lq, lk, seed=3)
    out, lse = assert_matches_reference(p, q, k, v, _config=(16, 16))
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    for h, rows in empty.items():
        rows = list(rows)
        others = [r for r in range(lq) if r not in rows]
        assert torch.equal(lse[0, h, rows], torch.full((len(rows),), NEG_INF)), h
        assert torch.equal(out[0, h, rows], torch.zeros(len(rows), v.shape[-1])), h
        assert torch.isfinite(lse[0, h, others]).all(), h


@pytest.mark.parametrize("config", CONFIGS)
def test_first_key_tiles_fully_masked(config):
    """(-inf) - (-inf) in the online softmax: every row's first key tiles are
    masked, its maximum stays -inf until a later tile."""
    p = P("where(k >= 35) | where(q % 7 == 0 and k == 2)")
    q, k, v = inputs(1, 1, 1, 40, 40, seed=4)
    assert_matches_reference(p, q, k, v, _config=config)


@pytest.mark.parametrize("body", ["causal & sink(1)", "sink(1) | where(q < 0)", "sink(1) & full"])
def test_row_that_sees_only_a_sink(body):
    """Every row sees key 0 only: output v[0], LSE the scaled logit of key 0."""
    p = P(body)
    q, k, v = inputs(2, 4, 2, 19, 23, d=24, seed=5)
    out, lse = triton(p, q, k, v)
    kk = k.double().repeat_interleave(2, 1)
    logit = (q.double() * kk[:, :, :1]).sum(-1) / math.sqrt(24)
    torch.testing.assert_close(lse.double(), logit, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out, v.repeat_interleave(2, 1)[:, :, :1].expand_as(out), rtol=0, atol=1e-6)


def test_some_rows_see_only_the_sink():
    p = P("sink(1) | causal & window(3) & where(q % 2 == 0)")
    q, k, v = inputs(1, 2, 2, 33, 33, seed=6)
    out, lse = assert_matches_reference(p, q, k, v, _config=(16, 16))
    odd = torch.arange(1, 33, 2)
    logit = (q[0, :, odd].double() * k[0, :, :1].double()).sum(-1) / 4.0
    torch.testing.assert_close(lse[0, :, odd].double(), logit, rtol=1e-6, atol=1e-5)


# ---- 2, 4: lengths that are not multiples of the tile -------------------------------------------

EDGE = (1, 15, 16, 17, 33)


@pytest.mark.parametrize("lq", EDGE)
@pytest.mark.parametrize("lk", EDGE)
def test_lengths_around_the_tile(lq, lk):
    p = P("causal & (sink(3) | window(20))")  # full tiles in the middle at 33
    q, k, v = inputs(1, 2, 1, lq, lk, seed=lq * 100 + lk)
    assert_matches_reference(p, q, k, v, _config=(16, 16))


@pytest.mark.parametrize("config", [(32, 16), (16, 32), (32, 32)])
@pytest.mark.parametrize("lq,lk", [(31, 31), (32, 33), (33, 1), (1, 33), (47, 17)])
def test_lengths_around_other_tiles(config, lq, lk):
    p = P("local_blocks(2, block=32) & causal | sink(2)")
    q, k, v = inputs(1, 1, 1, lq, lk, seed=7)
    assert_matches_reference(p, q, k, v, _config=config)


# ---- 3: NaN past the end of the inputs ----------------------------------------------------------


@pytest.mark.parametrize("body,lq,lk,h,hk", [
    ("causal & (sink(2) | window(5))", 17, 17, 2, 1),
    ("local_blocks(2, block=16) | strided(3, block=16)", 20, 33, 4, 2),
    ("full", 1, 15, 1, 1),
    ("band(3, 2) | global(2)", 33, 5, 2, 2),
])
def test_nan_padding_past_the_end_changes_nothing(body, lq, lk, h, hk):
    """q, k, v are views into buffers that hold NaN before the first row, past
    the sequence end and past the head dim: the result equals the one for clean
    copies, bit for bit."""
    p = P(body)
    q, k, v = inputs(2, h, hk, lq, lk, d=12, dv=20, layout="nan_padded", seed=8)
    assert q.storage_offset() > 0 and not q.is_contiguous()
    assert torch.isnan(q._base).any() and not torch.isnan(q).any()
    out, lse = assert_matches_reference(p, q, k, v, _config=(16, 16))
    clean_out, clean_lse = triton(p, q.contiguous(), k.contiguous(), v.contiguous())
    assert not torch.isnan(out).any()
    assert torch.equal(out, clean_out) and torch.equal(lse, clean_lse)


# ---- 7: GQA head mapping ------------------------------------------------------------------------


@pytest.mark.parametrize("h,hk", [(3, 3), (4, 2), (4, 1), (8, 2), (8, 1)])
def test_gqa_head_mapping(h, hk):
    """Head-dependent masks and distinct KV heads: a wrong h -> hk mapping
    picks the wrong keys or the wrong mask."""
    p = P("causal & (window(1 + 2 * hk) | where(h % 2 == 1) & sink(3))")
    q, k, v = inputs(1, h, hk, 18, 21, seed=9)
    assert_matches_reference(p, q, k, v, _config=(16, 16))


def test_gqa_mapping_by_hand():
    """full attention, 4 query heads on 2 KV heads, one key each: query head h
    must return v of KV head h // 2."""
    q, k, v = inputs(1, 4, 2, 3, 1, seed=10)
    out, _ = triton(P("full"), q, k, v)
    for h in range(4):
        torch.testing.assert_close(out[0, h], v[0, h // 2].expand(3, -1), rtol=0, atol=0)


# ---- 8: head dims ----------------------------------------------------------------------------


@pytest.mark.parametrize("d,dv", [(8, 8), (12, 12), (24, 24), (20, 40), (40, 12), (33, 17), (16, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_head_dims(d, dv, dtype):
    p = P("causal & (sink(2) | window(9))")
    q, k, v = inputs(1, 2, 1, 20, 20, d=d, dv=dv, dtype=dtype, seed=11)
    assert_matches_reference(p, q, k, v, _config=(16, 16))


# ---- 9: Lq != Lk, bottom-right aligned ----------------------------------------------------------


def _by_hand(q, k, v, visible, scale):
    """Attention of one head by hand: q [Lq, D], k [Lk, D], v [Lk, Dv], visible bool [Lq, Lk]."""
    logits = (q.double() @ k.double().T) * scale
    logits = logits.masked_fill(~visible, NEG_INF)
    lse = torch.logsumexp(logits, -1)
    w = torch.exp(logits - lse[:, None]).nan_to_num(0.0)
    return w @ v.double(), lse


@pytest.mark.parametrize("lq,lk", [(1, 1), (1, 16), (1, 17), (1, 40), (5, 37), (37, 5), (16, 17), (17, 16)])
def test_bottom_right_alignment_by_hand(lq, lk):
    """causal & window(7): query row i is position Lk - Lq + i and sees the
    keys position - 6 .. position (decoding: the one query is the last key's)."""
    p = P("causal & window(7)")
    q, k, v = inputs(1, 1, 1, lq, lk, seed=12)
    out, lse = triton(p, q, k, v)
    pos = torch.arange(lk - lq, lk)[:, None]
    key = torch.arange(lk)[None, :]
    vis = (key <= pos) & (key > pos - 7)
    want, want_lse = _by_hand(q[0, 0], k[0, 0], v[0, 0], vis, 0.25)
    torch.testing.assert_close(out[0, 0].double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse[0, 0].double(), want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_decode_rows_against_reference(config):
    p = C("streaming_llm", sink=3, window=9)
    q, k, v = inputs(2, 4, 2, 1, 41, d=24, seed=13)
    assert_matches_reference(p, q, k, v, _config=config)


# ---- 10: window off-by-ones ------------------------------------------------------------------


@pytest.mark.parametrize("body", ["window(1)", "band(0, 0)", "causal & window(1)", "dilated(1, 5)"])
def test_window_one_sees_only_its_own_key(body):
    lq = lk = 33
    p = P(body)
    q, k, v = inputs(1, 2, 2, lq, lk, seed=14)
    out, lse = triton(p, q, k, v)
    torch.testing.assert_close(out, v, rtol=0, atol=1e-6)
    torch.testing.assert_close(lse.double(), (q.double() * k.double()).sum(-1) / 4.0, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("w", [2, 15, 16, 17, 32, 33, 34, 100])
def test_window_sizes_around_the_length(w):
    """window(w) for w around the length 33 and the tile 16; w >= 33 is causal."""
    p = P(f"window({w})")
    q, k, v = inputs(1, 1, 1, 33, 33, seed=15)
    out, lse = assert_matches_reference(p, q, k, v, _config=(16, 16))
    if w >= 33:
        pos = torch.arange(33)
        want, want_lse = _by_hand(q[0, 0], k[0, 0], v[0, 0], pos[None, :] <= pos[:, None], 0.25)
        torch.testing.assert_close(out[0, 0].double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("body", ["band(33, 33)", "band(0, 40)", "band(16, 0)", "band(1, 1)"])
def test_bands(body):
    p = P(body)
    q, k, v = inputs(1, 1, 1, 33, 33, seed=16)
    assert_matches_reference(p, q, k, v, _config=(16, 16))


# ---- 11: very negative and very large logits ---------------------------------------------------


@pytest.mark.parametrize("scale", [100.0, -100.0, 1e4])
def test_large_logits(scale):
    p = P("causal & (sink(2) | window(9)) | where(k >= 30)")
    q, k, v = inputs(1, 2, 1, 40, 40, seed=17)
    out, lse = assert_matches_reference(p, q, k, v, scale=scale, _config=(16, 16))
    assert torch.isfinite(lse).all() and torch.isfinite(out).all()


def test_all_visible_logits_very_negative_by_hand():
    """Every logit is -400: the output is the plain mean of the visible values
    and LSE = -400 + log(number of visible keys)."""
    L, d = 35, 16
    q = torch.full((1, 1, L, d), -100.0)
    k = torch.ones(1, 1, L, d)
    v = torch.randn(1, 1, L, 8, generator=torch.Generator().manual_seed(18))
    out, lse = triton(P("causal & window(20)"), q, k, v)
    n = torch.clamp(torch.arange(L) + 1, max=20).double()
    torch.testing.assert_close(lse[0, 0].double(), -400.0 + torch.log(n), rtol=0, atol=1e-4)
    csum = torch.cumsum(v[0, 0].double(), 0)
    lagged = torch.cat([torch.zeros(20, 8, dtype=torch.float64), csum[:-20]])
    torch.testing.assert_close(out[0, 0].double(), (csum - lagged) / n[:, None], rtol=1e-5, atol=1e-5)


def test_scale_zero_averages_the_visible_values_by_hand():
    q, k, v = inputs(1, 1, 1, 17, 17, seed=19)
    out, lse = triton(P("causal & sink(4) | window(2)"), q, k, v, scale=0.0)
    qp, kp = torch.arange(17)[:, None], torch.arange(17)[None, :]
    vis = ((kp < 4) & (kp <= qp)) | ((kp <= qp) & (kp > qp - 2))
    want = (vis.double() @ v[0, 0].double()) / vis.sum(-1, keepdim=True)
    torch.testing.assert_close(out[0, 0].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse[0, 0].double(), torch.log(vis.sum(-1).double()), rtol=0, atol=1e-6)


# ---- 14: strided, transposed, non-contiguous inputs ------------------------------------------------


def _noncontiguous(kind, b, h, hk, lq, lk, d, dv):
    g = torch.Generator().manual_seed(20)
    if kind == "transposed":  # [B, L, H, D] buffers, viewed as [B, H, L, D]
        q = torch.randn(b, lq, h, d, generator=g).transpose(1, 2)
        k = torch.randn(b, lk, hk, d, generator=g).transpose(1, 2)
        v = torch.randn(b, lk, hk, dv, generator=g).transpose(1, 2)
    elif kind == "packed_qkv":  # one [B, L, 3, H, D] buffer
        x = torch.randn(b, lk, 3, h, d, generator=g)
        q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    elif kind == "every_other_row":
        q = torch.randn(b, h, 2 * lq, d, generator=g)[:, :, ::2]
        k = torch.randn(b, hk, 2 * lk, d, generator=g)[:, :, ::2]
        v = torch.randn(b, hk, 2 * lk, dv, generator=g)[:, :, ::2]
    elif kind == "head_dim_strided":  # the last dim is not the unit-stride one
        q = torch.randn(b, h, d, lq, generator=g).transpose(2, 3)
        k = torch.randn(b, hk, d, lk, generator=g).transpose(2, 3)
        v = torch.randn(b, hk, dv, lk, generator=g).transpose(2, 3)
    elif kind == "expanded":  # stride 0 over the batch
        q = torch.randn(1, h, lq, d, generator=g).expand(b, -1, -1, -1)
        k = torch.randn(1, hk, lk, d, generator=g).expand(b, -1, -1, -1)
        v = torch.randn(1, hk, lk, dv, generator=g).expand(b, -1, -1, -1)
    return q, k, v


@pytest.mark.parametrize("kind", ["transposed", "packed_qkv", "every_other_row", "head_dim_strided", "expanded"])
def test_non_contiguous_inputs(kind):
    p = P("causal & (local_blocks(1, block=16) | strided(2, block=16))")
    h, hk = (4, 4) if kind == "packed_qkv" else (4, 2)
    lq = 19 if kind != "packed_qkv" else 33
    q, k, v = _noncontiguous(kind, 2, h, hk, lq, 33, 16, 24 if kind != "packed_qkv" else 16)
    assert not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous())
    out, lse = assert_matches_reference(p, q, k, v, _config=(16, 16))
    assert out.is_contiguous()


# ---- 15: empty tensors -------------------------------------------------------------------------


def test_empty_query():
    q, k, v = inputs(2, 4, 2, 0, 9, dv=12)
    out, lse = triton(P("causal"), q, k, v)
    assert out.shape == (2, 4, 0, 12) and lse.shape == (2, 4, 0)


@pytest.mark.parametrize("lq", [1, 17])
def test_no_keys(lq):
    q, k, v = inputs(1, 2, 1, lq, 0, dv=12)
    out, lse = triton(P("full"), q, k, v)
    assert torch.equal(out, torch.zeros(1, 2, lq, 12))
    assert torch.equal(lse, torch.full((1, 2, lq), NEG_INF))


def test_empty_batch():
    q, k, v = inputs(0, 2, 1, 5, 5)
    out, lse = triton(P("causal"), q, k, v)
    assert out.shape == (0, 2, 5, 16) and lse.shape == (0, 2, 5)


def test_empty_value_dim():
    q, k, v = inputs(1, 1, 1, 5, 5, dv=1)
    v = v[..., :0]
    out, lse = assert_matches_reference(P("causal"), q, k, v, _config=(16, 16))
    assert out.shape == (1, 1, 5, 0)


# ---- residue layout (dilated): the kernel walks one class of positions at a time ----------------


@pytest.mark.parametrize("body", [
    "dilated(5, 2)",
    "dilated(4, 3) & causal & (sink(7) | window(9))",
    "dilated(8, 2) & strided(2, block=16)",
    "heads[0] => dilated(3, 2); heads[*] => dilated(9, 2) & where(k % 3 != 0)",
])
@pytest.mark.parametrize("lq,lk", [(40, 40), (13, 40), (40, 13)])
def test_residue_layout(body, lq, lk):
    p = P(body)
    q, k, v = inputs(1, 2, 1, lq, lk, seed=21)
    assert_matches_reference(p, q, k, v, _config=(16, 16))


# ---- the shipped patterns at small sizes -------------------------------------------------------

SMALL = {
    "bigbird": [dict(block=16, window_blocks=3, global_blocks=1, rand_num=1, rand_den=3),
                dict(block=16, window_blocks=1, global_blocks=1, rand_num=1, rand_den=2, autoregressive=True)],
    "bigbird_exact": [dict(block=16, window_blocks=3, global_blocks=1, num_rand=2, seed=3),
                      dict(block=32, window_blocks=1, global_blocks=1, num_rand=1, autoregressive=True)],
    "duo_attention": [dict(retrieval=1, sink=2, recent=8)],
    "duo_attention_gqa": [dict(retrieval_kv=1, sink=2, recent=8)],
    "longformer": [dict(window=8, num_global=3)],
    "longformer_lm": [dict(window=6, dilation=3, dilated_heads=2)],
    "longgen_sparse": [dict(sink=2, window=8, stride=3, block=16)],
    "longgen_full": [{}],
    "longgen": [dict(layer=0, num_layers=3, sink=2, window=8, stride=2, block=16), dict(layer=1, num_layers=3)],
    "longnet_segment": [dict(segment=16, ratio=2)],
    "longnet": [dict(w1=8, r1=1, w2=16, r2=2, w3=32, r3=4, w4=32, r4=3, w5=64, r5=5)],
    "longnet_dilated": [dict(size=5)],
    "moa": [dict(sink=2, alpha=4, beta_den=4)],
    "s2_attention": [dict(local=1, stride=3, block=16, dense_heads=1), dict(local=2, stride=2, block=16,
                                                                           head_offset=1)],
    "s2_attention_vllm": [dict(local=1, stride=2, block=16)],
    "streaming_llm": [dict(sink=2, window=8)],
}


def _shipped():
    out = []
    for path in sorted(PATTERNS.glob("*.attn")):
        for name in sd.compiler.load(path).own:
            for i, params in enumerate(SMALL.get(name, [])):
                out.append(pytest.param(path.name, name, params, id=f"{name}-{i}"))
    return out


def _shipped_names():
    static, dynamic = set(), set()
    for path in sorted(PATTERNS.glob("*.attn")):
        for name, pdef in sd.compiler.load(path).own.items():
            if any(p.default is None for p in pdef.params):
                continue
            (dynamic if sd.compile_pattern(path, pattern=name).is_dynamic else static).add(name)
    return static, dynamic


def test_every_static_shipped_pattern_is_tested():
    static, dynamic = _shipped_names()
    assert static - set(SMALL) == set(), "add small parameters for the new shipped pattern to SMALL"
    assert dynamic  # nsa, quest, ...: test_dynamic_patterns_backward_on_the_kernels


@pytest.mark.parametrize("file,name,params", _shipped())
def test_shipped_patterns(file, name, params):
    p = sd.compile_pattern(PATTERNS / file, pattern=name, **params)
    for (lq, lk), dtype, config in [((40, 40), "float32", (16, 16)), ((17, 47), "float16", (32, 16))]:
        q, k, v = inputs(1, 4, 2, lq, lk, d=16, dtype=dtype, seed=22)
        assert_matches_reference(p, q, k, v, _config=config)


# ---- 18: inputs that do not fit --------------------------------------------------------------


# dynamic patterns whose defaults select nothing at these sizes, or walk far more slots than keys
SMALL_DYNAMIC = {"snapkv": dict(window=4, pool=3, capacity=8)}


def test_dynamic_patterns_backward_on_the_kernels():
    """Every shipped dynamic pattern differentiates on the kernels (given the float32
    reference's selection); the cases are in tests/test_dynamic.py."""
    _, dynamic = _shipped_names()
    q, k, v = inputs(1, 2, 1, 24, 24, d=16)
    for path in sorted(PATTERNS.glob("*.attn")):
        for name in sd.compiler.load(path).own:
            if name in dynamic:
                p = sd.compile_pattern(path, pattern=name, **SMALL_DYNAMIC.get(name, {}))
                if p.plan.compensation:  # (RazorAttention is training-free: gradients on the reference only)
                    with pytest.raises(sd.InputError, match="no backward for compensation"):
                        assert_grads_match_reference(p, q, k, v, _config=(16, 16))
                    continue
                assert_grads_match_reference(p, q, k, v, _config=(16, 16))


def _bad_inputs():
    t = lambda *s, dtype=torch.float32: torch.zeros(*s, dtype=dtype)  # noqa: E731
    q, k, v = t(1, 2, 8, 16), t(1, 1, 8, 16), t(1, 1, 8, 16)
    return [
        ("rank", (t(2, 8, 16), k, v), {}),
        ("rank of v", (q, k, t(1, 8, 16)), {}),
        ("batch", (t(2, 2, 8, 16), k, v), {}),
        ("head dim", (t(1, 2, 8, 12), k, v), {}),
        ("kv length", (q, k, t(1, 1, 9, 16)), {}),
        ("kv heads of v", (q, k, t(1, 2, 8, 16)), {}),
        ("heads not a multiple", (t(1, 3, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16)), {}),
        ("dtype mismatch", (q, k.half(), v), {}),
        ("integer dtype", (q.long(), k.long(), v.long()), {}),
        ("float64 on triton", (q.double(), k.double(), v.double()), {}),
        ("not a tensor", (q, k.tolist(), v), {}),
        ("scale nan", (q, k, v), {"scale": float("nan")}),
        ("scale inf", (q, k, v), {"scale": float("inf")}),
    ]


@pytest.mark.parametrize("what,args,kwargs", _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_wrong_inputs_raise_input_error(what, args, kwargs):
    with pytest.raises(sd.InputError):
        P("causal")(*args, backend="triton", **kwargs)


def test_bad_backend_raises_input_error():
    q, k, v = inputs(1, 1, 1, 4, 4)
    with pytest.raises(sd.InputError, match="backend"):
        P("causal")(q, k, v, backend="cuda")


# ---- bugs found by these tests (regressions) -----------------------------------------------


@pytest.mark.parametrize("block,config", [(8, (16, 16)), (24, (16, 16)), (16, (16, 32)), (1, (16, 16)),
                                          (48, (32, 32)), (5, (32, 16))])
def test_strided_block_not_a_multiple_of_the_key_tile(block, config):
    """strided(block=b) with b not a multiple of BLOCK_N: the kernel used to walk
    the strided blocks in key tiles of BLOCK_N (b // BLOCK_N == 0 tiles) and
    missed keys; now such segments are plain ranges with the element mask."""
    for body in (f"strided(2, block={block})", f"causal & (strided(3, block={block}) | sink(2))"):
        p = P(body)
        q, k, v = inputs(1, 1, 1, 40, 40, seed=23)
        assert_matches_reference(p, q, k, v, _config=config)


def test_strided_head_dependent_block():
    """A head-dependent block used to make the segment a plain range whose full
    interval [0, Lk) ran without the element mask."""
    p = P("strided(2, block=16 * (h + 1))")
    q, k, v = inputs(1, 2, 2, 40, 40, seed=24)
    assert_matches_reference(p, q, k, v, _config=(16, 16))


@pytest.mark.parametrize("body", ["~global(0)", "full - global(0)", "causal | global(0)"])
def test_global_zero_with_negative_positions(body):
    """simplify used to drop global(0); it is q < 0, true for the first rows when Lq > Lk."""
    p = P(body)
    q, k, v = inputs(1, 1, 1, 14, 2, seed=25)
    out, lse = assert_matches_reference(p, q, k, v, _config=(16, 16))
    if body != "causal | global(0)":
        assert torch.equal(lse[0, 0, :12], torch.full((12,), NEG_INF))


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_flash_attention_layout_is_read_in_place(backend):
    """layout='bshd' reads FlashAttention's [B, L, H, D] tensors as they are (the kernels take
    strides): the output [B, L, H, Dv] and the gradients match the float64 reference run on
    [B, H, L, D] copies."""
    p = P("causal & (sink(3) | window(9))")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 37, h, d, generator=g, requires_grad=True) for h, d in ((4, 16), (2, 16), (2, 24)))
    kw = dict(backend="triton", _config=(16, 16)) if backend == "triton" else dict(backend="reference")
    out, lse = p(q, k, v, layout="bshd", return_lse=True, **kw)
    assert out.shape == (2, 37, 4, 24) and lse.shape == (2, 4, 37)
    ref = [t.detach().double().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    gold, gold_lse = p(*ref, backend="reference", return_lse=True)
    assert (out.double() - gold.transpose(1, 2)).abs().max() < 1e-5
    assert (lse.double() - gold_lse).abs().max() < 1e-5
    dout = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    golds = torch.autograd.grad(gold, ref, dout.double().transpose(1, 2))
    for x, y in zip(grads, golds):
        assert (x.double() - y.transpose(1, 2)).abs().max() < 1e-4


def test_packed_batch_traces_under_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) traces a packed-batch call without a graph break (the
    cu_seqlens value checks read the tensor: they are skipped while tracing), and the
    compiled call matches the float64 reference of the packed batch."""
    p = P("causal & window(9)")
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(40, h, 16, generator=g) for h in (4, 2, 2))
    cu = torch.tensor([0, 7, 29, 40], dtype=torch.int32)

    def call(q, k, v, cu):
        return p(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=22, max_seqlen_k=22, backend="triton",
                 _config=(16, 16))

    out = torch.compile(call, fullgraph=True, backend="eager")(q, k, v, cu)
    gold = p(q.double(), k.double(), v.double(), cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=22, max_seqlen_k=22,
             backend="reference")
    assert (out.double() - gold).abs().max() < 1e-5


def test_torch_compile_does_not_recompile_per_length():
    """Under torch.compile the call traces to one graph for every length with dynamic=True
    (and to two with the default automatic dynamic shapes: the first call specialises), with
    no graph break inside sparsedsl; each output matches the float64 reference."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    p = P("causal & window(9)")

    def call(q, k, v):
        return p(q, k, v, backend="triton", _config=(16, 16))

    for dynamic, graphs in ((True, 1), (None, 2)):
        torch._dynamo.reset()
        counters.clear()
        f = torch.compile(call, backend="eager", dynamic=dynamic)
        g = torch.Generator().manual_seed(3)
        for L in (32, 48, 64, 80):
            q, k, v = torch.randn(1, 4, L, 16, generator=g), torch.randn(1, 2, L, 16, generator=g), \
                torch.randn(1, 2, L, 16, generator=g)
            gold = p(q.double(), k.double(), v.double(), backend="reference")
            assert (f(q, k, v).double() - gold).abs().max() < 1e-5
        assert counters["stats"]["unique_graphs"] == graphs
        assert not counters["graph_break"]
    torch._dynamo.reset()
