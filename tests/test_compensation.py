"""compensation(): RazorAttention's compensation token (patterns/razor_attention.attn).

`razor_naive` below is the paper's description read directly (Tang et al. 2024): a
retrieval head attends causally to every key; any other head keeps the first `sink`
keys and the last `window` keys, and attends to one more entry whose key and value are
the means of the keys and values it dropped. It loops over queries in float64 and shares
no code with the library. The float64 reference must equal it to rounding; the Triton
kernels (forward, decode; the interpreter on the CPU, tiles of 16) must meet the rule of
the other kernel tests (sparsedsl.testing: their error against float64 a small multiple
of the float32 reference's, no NaN). The shapes cover queries whose dropped span is empty
(early positions), a span of exactly one key (q = sink + window), GQA, batch 2, Lq != Lk,
packed and padded batches, and decoding from contiguous, paged and left-padded caches.
"""
from __future__ import annotations

import math

import pytest
import torch

sd = pytest.importorskip("sparsedsl")

from sparsedsl.testing import assert_matches_reference  # noqa: E402
from sparsedsl.testing.oracles import attention_inputs  # noqa: E402


def _kernels_run() -> bool:
    if torch.cuda.is_available():
        return True
    from sparsedsl.kernels.launch import interpreter_ready

    return interpreter_ready()


kernels = pytest.mark.skipif(not _kernels_run(), reason="needs a GPU or Triton's interpreter")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
CFG = None if DEV == "cuda" else (16, 16)
SINK, WINDOW = 2, 3  # the first query with a dropped key is at sink + window


def razor(retrieval=1, sink=SINK, window=WINDOW):
    return sd.compile_pattern("razor_attention", retrieval=retrieval, sink=sink, window=window)


def razor_naive(q, k, v, retrieval=1, sink=SINK, window=WINDOW, scale=None):
    """RazorAttention from the paper, one query at a time in float64: (out, lse)."""
    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(b, h, lq, v.shape[-1], dtype=torch.float64)
    lse = torch.full((b, h, lq), -math.inf, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            kv = hi // (h // hk)
            for i in range(lq):
                pos = lk - lq + i
                past = list(range(0, pos + 1))
                if hi < retrieval:
                    kept, dropped = past, []
                else:
                    kept = [j for j in past if j < sink or j > pos - window]
                    dropped = [j for j in past if j not in kept]
                keys = [k[bi, kv, j] for j in kept]
                values = [v[bi, kv, j] for j in kept]
                if dropped:  # the compensation token
                    keys.append(k[bi, kv, dropped].mean(0))
                    values.append(v[bi, kv, dropped].mean(0))
                if not keys:
                    continue
                logits = torch.stack([q[bi, hi, i] @ key for key in keys]) * scale
                lse[bi, hi, i] = torch.logsumexp(logits, 0)
                weights = torch.exp(logits - lse[bi, hi, i])
                out[bi, hi, i] = sum(w * val for w, val in zip(weights, values))
    return out, lse


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# (batch, H, Hk, Lq, Lk): GQA 2 and 4, MQA, Lq < Lk, Lq > Lk (rows at negative positions)
SHAPES = [(2, 4, 2, 24, 24), (1, 4, 1, 9, 40), (2, 2, 2, 30, 21)]


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_the_paper(shape):
    b, h, hk, lq, lk = shape
    q, k, v = randn(b, h, lq, 8, seed=1), randn(b, hk, lk, 8, seed=2), randn(b, hk, lk, 8, seed=3)
    want, want_lse = razor_naive(q, k, v)
    out, lse = razor()(q.double(), k.double(), v.double(), return_lse=True)
    assert torch.allclose(out, want, rtol=0, atol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    assert torch.allclose(lse[torch.isfinite(lse)], want_lse[torch.isfinite(want_lse)], rtol=0, atol=1e-12)


def test_entry_appears_at_sink_plus_window():
    # Rows before q = sink + window drop nothing: the same as StreamingLLM. At q = sink + window
    # the span is the one key `sink`: one more logit q . k[sink] * scale and value v[sink].
    q, k, v = (randn(1, 1, 12, 8, seed=s).double() for s in (4, 5, 6))
    stream = sd.compile_pattern("streaming_llm", sink=SINK, window=WINDOW)
    _, s_lse = stream(q, k, v, return_lse=True)
    out, lse = razor(retrieval=0)(q, k, v, return_lse=True)
    first = SINK + WINDOW
    assert torch.equal(lse[0, 0, :first], s_lse[0, 0, :first])
    one = q[0, 0, first] @ k[0, 0, SINK] / math.sqrt(8)
    assert torch.allclose(lse[0, 0, first], torch.logaddexp(s_lse[0, 0, first], one), rtol=0, atol=1e-12)
    assert not torch.allclose(lse[0, 0, first + 1:], s_lse[0, 0, first + 1:])


def test_mask_shows_ordinary_keys_only():
    q, k = randn(1, 2, 10, 8, seed=7), randn(1, 1, 10, 8, seed=8)
    stream = sd.compile_pattern("streaming_llm", sink=SINK, window=WINDOW)
    want = torch.cat([torch.tril(torch.ones(1, 1, 10, 10, dtype=torch.bool)), stream.mask(10)[None, :1]], 1)
    assert torch.equal(razor().mask(10, num_heads=2, num_kv_heads=1, q=q, k=k), want)


def test_builder_is_the_language():
    built = sd.causal & (sd.sink(4) | sd.window(8) | sd.compensation)
    text = sd.compile_pattern("pattern p() { causal & (sink(4) | window(8) | compensation()) }")
    assert sd.compile_pattern(built).root.body is text.root.body
    assert sd.compile_pattern(text.ir()).root is text.root  # the printed IR round-trips


def test_gradients_on_the_reference_and_a_clear_error_on_the_kernels():
    p = razor()
    q, k, v = (randn(1, 2, 12, 8, seed=s).double().requires_grad_() for s in (9, 10, 11))
    p(q, k, v).square().sum().backward()
    got = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    razor_naive(q, k, v)[0].square().sum().backward()
    for g, x in zip(got, (q, k, v)):
        assert torch.allclose(g, x.grad, rtol=0, atol=1e-10)
    if _kernels_run():
        qf = q.detach().float().requires_grad_()
        out = p(qf, k.detach().float(), v.detach().float(), backend="triton", _config=CFG)
        with pytest.raises(sd.InputError, match="no backward for compensation.*backend='reference'"):
            out.sum().backward()


# -- the kernels -------------------------------------------------------------------------


@kernels
@pytest.mark.parametrize("shape,layout", [(SHAPES[0], "nan_padded"), (SHAPES[1], "contiguous"),
                                          (SHAPES[2], "contiguous")])
def test_kernel_forward(shape, layout):
    b, h, hk, lq, lk = shape
    q, k, v = attention_inputs(dict(batch=b, num_heads=h, num_kv_heads=hk, q_len=lq, kv_len=lk, head_dim=16,
                                    dtype="float32", layout=layout), seed=12, device=DEV)
    out, _ = assert_matches_reference(razor(), q, k, v, _config=CFG)
    want = razor_naive(q.cpu(), k.cpu(), v.cpu())[0]
    assert (out.cpu().double() - want).abs().max() < 1e-5


def _check(got, want, ref32):
    """The kernel's error against float64 within 10x the float32 reference's (plus a floor); no NaN."""
    assert not torch.isnan(got).any()
    err, ref_err = (got.double().cpu() - want).abs().max(), (ref32.double().cpu() - want).abs().max()
    assert err <= 10 * ref_err + 1e-6, (err, ref_err)


@kernels
def test_kernel_packed_and_padded_batches():
    p = razor()
    lq, lk = [5, 1, 20], [9, 1, 20]
    seqs = [(randn(1, 4, a, 16, seed=20 + i), randn(1, 2, c, 16, seed=30 + i), randn(1, 2, c, 16, seed=40 + i))
            for i, (a, c) in enumerate(zip(lq, lk))]
    want = [razor_naive(*s)[0] for s in seqs]
    ref32 = [p(*s, backend="reference") for s in seqs]
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(n).cumsum(0).tolist()], dtype=torch.int32, device=DEV)
                  for n in (lq, lk))
    packed = [torch.cat([s[i][0].transpose(0, 1) for s in seqs]).to(DEV) for i in range(3)]
    out = p(*packed, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=20, max_seqlen_k=20, backend="triton",
            _config=CFG)
    _check(out, torch.cat([w[0].transpose(0, 1) for w in want]), torch.cat([r[0].transpose(0, 1) for r in ref32]))
    # left-padded, NaN in the padding
    padded = []
    for i, (heads, lens) in enumerate(((4, lq), (2, lk), (2, lk))):
        x = torch.full((3, heads, 20, 16), float("nan"))
        for j, (s, n) in enumerate(zip(seqs, lens)):
            x[j, :, 20 - n:] = s[i][0]
        padded.append(x.to(DEV))
    lengths = [torch.tensor(n, dtype=torch.int32, device=DEV) for n in (lq, lk)]
    out = p(*padded, q_lengths=lengths[0], kv_lengths=lengths[1], padding_side="left", backend="triton",
            _config=CFG).cpu()
    for j, n in enumerate(lq):
        _check(out[j:j + 1, :, 20 - n:], want[j], ref32[j])


@kernels
def test_decode_contiguous_cache_with_kept_summaries():
    # Sequences of 0, 10 and 3 keys (+ the new ones), NaN past each one's end; two steps with
    # summaries kept across them, one query then two queries per step.
    p = razor()
    b, cap = 3, 24
    k_all, v_all = randn(b, 2, cap, 16, seed=50), randn(b, 2, cap, 16, seed=51)
    lens = torch.tensor([0, 10, 3], dtype=torch.int32)
    k_cache, v_cache = (torch.full((b, 2, cap, 16), float("nan")) for _ in range(2))
    for j, n in enumerate(lens.tolist()):
        k_cache[j, :, :n], v_cache[j, :, :n] = k_all[j, :, :n], v_all[j, :, :n]
    k_cache, v_cache, lens = k_cache.to(DEV), v_cache.to(DEV), lens.to(DEV)
    summaries = p.summarize(k_cache, v_cache, lens)
    for step, new in enumerate((1, 2)):
        for j, n in enumerate(lens.tolist()):
            k_cache[j, :, n:n + new], v_cache[j, :, n:n + new] = k_all[j, :, n:n + new], v_all[j, :, n:n + new]
        lens += new
        q = randn(b, 4, new, 16, seed=60 + step).to(DEV)
        out = p.decode(q, k_cache, v_cache, lens, summaries=summaries, backend="triton").cpu()
        ref32 = p.decode(q, k_cache, v_cache, lens, backend="reference").cpu()
        for j, n in enumerate(lens.tolist()):
            want = razor_naive(q[j:j + 1].cpu(), k_all[j:j + 1, :, :n], v_all[j:j + 1, :, :n])[0]
            _check(out[j:j + 1], want, ref32[j:j + 1])


@kernels
def test_decode_paged_and_left_padded_caches():
    p = razor()
    b, cap, page = 2, 32, 8
    k_all, v_all = randn(b, 2, cap, 16, seed=70), randn(b, 2, cap, 16, seed=71)
    lens = torch.tensor([13, 29], dtype=torch.int32)
    q = randn(b, 4, 1, 16, seed=72)
    want = [razor_naive(q[j:j + 1], k_all[j:j + 1, :, :n], v_all[j:j + 1, :, :n])[0]
            for j, n in enumerate(lens.tolist())]
    ref32 = torch.cat([p(q[j:j + 1], k_all[j:j + 1, :, :n], v_all[j:j + 1, :, :n], backend="reference")
                       for j, n in enumerate(lens.tolist())])
    # paged: pages in shuffled order, NaN in the pages' unused rows (sequence 0's last two pages)
    table = torch.randperm(b * cap // page, generator=torch.Generator().manual_seed(0)).view(b, -1).to(torch.int32)
    k_pages, v_pages = (torch.full((b * cap // page, page, 2, 16), float("nan")) for _ in range(2))
    for j, n in enumerate(lens.tolist()):
        for pos in range(n):
            k_pages[table[j, pos // page], pos % page] = k_all[j, :, pos]
            v_pages[table[j, pos // page], pos % page] = v_all[j, :, pos]
    paged = (k_pages.to(DEV), v_pages.to(DEV), lens.to(DEV))
    summaries = p.summarize(*paged[:2], paged[2] - 1, block_table=table.to(DEV))
    for kept in (None, summaries):
        out = p.decode(q.to(DEV), *paged, block_table=table.to(DEV), summaries=kept, backend="triton").cpu()
        _check(out, torch.cat(want), ref32)
    # left-padded: NaN in the slots before each sequence
    pad = torch.tensor([5, 2], dtype=torch.int32)
    k_cache, v_cache = (torch.full((b, 2, cap + 5, 16), float("nan")) for _ in range(2))
    for j, n in enumerate(lens.tolist()):
        k_cache[j, :, pad[j]:pad[j] + n], v_cache[j, :, pad[j]:pad[j] + n] = k_all[j, :, :n], v_all[j, :, :n]
    out = p.decode(q.to(DEV), k_cache.to(DEV), v_cache.to(DEV), (lens + pad).to(DEV), cache_leftpad=pad.to(DEV),
                   backend="triton").cpu()
    _check(out, torch.cat(want), ref32)


# -- where compensation() may stand ------------------------------------------------------


@pytest.mark.parametrize("body,at,phrase", [
    ("sink(4) | window(8) | compensation()", "compensation()", "must be causal"),
    ("causal & (dilated(4, 2) | compensation())", "dilated(4, 2)", "dilated does not keep a prefix"),
    ("causal & (sink(2) | strided(4, block=8) | compensation())", "strided(4, block=8)",
     "strided does not keep a prefix"),
    ("causal & (sink(2) | topk(2, block=8) | compensation())", "compensation()", "shares its head branch with topk"),
    ("causal & (heads[0] => window(2), heads[1:] => sink(1) | compensation())", "compensation()",
     "inside a heads[...] expression"),
])
def test_unsupported_placements_are_errors_at_the_atom(body, at, phrase):
    src = f"pattern p() {{\n    {body}\n}}"
    with pytest.raises(sd.PatternError) as info:
        sd.compile_pattern(src)
    text = str(info.value)
    assert text.startswith(f"<string>:2:{5 + body.index(at)}: error: compensation")
    assert phrase in text and "note: the keys hidden by causal & (sink(n) | window(w) | compensation())" in text


@kernels
@pytest.mark.parametrize("body", [
    "causal & compensation()",                                 # every causal key averaged
    "window(16) & (sink(2) | local_blocks(1, block=4) | compensation())",
    "causal & (global(3) | chunked(5) | band(2, 1) | compensation())",
])
def test_other_spans_match_their_dense_meaning(body):
    # The closed-form span of the kernels against the reference's dense hidden mask.
    p = sd.compile_pattern(f"pattern p() {{ {body} }}")
    q, k, v = (randn(1, h, 20, 16, seed=s).to(DEV) for h, s in ((2, 80), (1, 81), (1, 82)))
    assert_matches_reference(p, q, k, v, _config=CFG)
