"""Data-dependent patterns (topk, landmarks) and decoding on the generated kernels,
against the float64 reference (sparsedsl.testing.assert_matches_reference: the
kernel's error at most a small multiple of the same-dtype reference's, no NaN,
exact -inf / 0 on rows that see nothing).

Runs on the CPU in Triton's interpreter (tests/conftest.py) and, unchanged, on a
GPU with CUDA tensors. The selection kernel itself is checked in
tests/test_selection.py (each of its cases also runs the kernel). Failure modes
(../shared/FAILURE_MODES.md) covered here: 1 (rows that see nothing, in prefill
and decode), 2 (lengths off the block and tile sizes), 3/4 (NaN past each
sequence's end in the cache, unused block-table entries pointing at NaN pages),
7 (GQA 1/2/4, Hk = 1), 8 (head dims 24/12, Dv != D), 9 (decode positions:
Lq <= Lk, per-sequence lengths, Lk < Lq), 11, 12 (empty splits in the merge,
decode LSE = prefill LSE), 14 (strided inputs), 15 (empty batch / cache), 16
(selected blocks already covered by the static part, the diagonal block, the
partial last block, -1 slots, repeated ids), 18 (clear errors).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

sd = pytest.importorskip("sparsedsl")

from sparsedsl.reference.attention import compute_selection, reference_attention  # noqa: E402
from sparsedsl.testing import assert_grads_match_reference, assert_matches_reference  # noqa: E402


def _kernels_run() -> bool:
    if torch.cuda.is_available():
        return True
    try:
        from sparsedsl.kernels.launch import interpreter_ready
    except ImportError:
        return False
    return interpreter_ready()


pytestmark = pytest.mark.skipif(not _kernels_run(), reason="needs a GPU or Triton's interpreter")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
GPU = DEV == "cuda"
CFG = None if GPU else (16, 16)  # the interpreter: small tiles, so short inputs cross tiles
PATTERNS = Path(__file__).resolve().parent.parent / "patterns"
_compiled: dict = {}


def C(src, name=None, **params):
    key = (src, name, tuple(sorted(params.items())))
    if key not in _compiled:
        text = src if src.endswith(".attn") else f"pattern p() {{ {src} }}"
        _compiled[key] = sd.compile_pattern(PATTERNS / text if text.endswith(".attn") else text, name, **params)
    return _compiled[key]


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEV, dtype=dtype)


def qkv(b, h, hk, lq, lk, d=32, dv=None, seed=0, dtype=torch.float32):
    return (rand(b, h, lq, d, seed=seed, dtype=dtype), rand(b, hk, lk, d, seed=seed + 1, dtype=dtype),
            rand(b, hk, lk, dv or d, seed=seed + 2, dtype=dtype))


DYNAMIC = [
    "causal & (sink(4) | window(8) | topk(2, block=16))",
    "causal & topk(3, block=16, score=minmax)",
    "causal & (window(24) | topk(2, block=8))",           # block 8 < the 16-key tile
    "causal & (local_blocks(1, block=20) | topk(2, block=20))",  # block not a power of two
    "causal & local_blocks(1, block=16) | landmarks(block=16)",
    "causal & (window(8) | topk(2, block=16) | landmarks(block=8))",
    "topk(2, block=16, causal=false)",
    "none & landmarks(block=4)",                          # only landmark entries
    "heads[0:2] => causal & topk(1, block=16) ; heads[*] => causal & window(5)",
]
SHAPES = [  # b, h, hk, lq, lk
    (1, 2, 2, 48, 48),
    (2, 4, 2, 37, 37),    # GQA 2, partial last block
    (1, 4, 1, 21, 53),    # MQA, Lq < Lk
    (1, 2, 1, 40, 19),    # Lq > Lk: rows at negative positions see nothing
]


@pytest.mark.parametrize("src", DYNAMIC)
@pytest.mark.parametrize("shape", SHAPES)
def test_prefill_matches_reference_given_the_selection(src, shape):
    q, k, v = qkv(*shape, seed=sum(shape))
    assert_matches_reference(C(src), q, k, v, _config=CFG)


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if GPU else []))
@pytest.mark.parametrize("src", DYNAMIC[:2] + DYNAMIC[4:6])
def test_prefill_half_precision(src, dtype):
    q, k, v = qkv(1, 4, 2, 45, 45, d=24, dv=12, seed=3, dtype=dtype)
    assert_matches_reference(C(src), q, k, v, _config=CFG)


def test_prefill_nan_padded_strided_inputs():
    """NaN before and after each row range and past the head dim: never read."""
    def padded(x):
        buf = torch.full((x.shape[0], x.shape[1], x.shape[2] + 9, x.shape[3] + 5), float("nan"), device=DEV)
        buf[:, :, 4:4 + x.shape[2], :x.shape[3]] = x
        return buf[:, :, 4:4 + x.shape[2], :x.shape[3]]
    q, k, v = (padded(t) for t in qkv(1, 2, 1, 33, 33, seed=5))
    for src in DYNAMIC[:2] + DYNAMIC[4:6]:
        assert_matches_reference(C(src), q, k, v, _config=CFG)


@pytest.mark.parametrize("path", ["quest.attn", "reattention.attn", "nsa.attn", "landmark.attn", "cca.attn"])
def test_shipped_dynamic_patterns(path):
    params = {"quest.attn": dict(budget=32, page=8), "reattention.attn": dict(sink=4, local=16, budget=32, chunk=8),
              "nsa.attn": dict(window=16, selected=5, sel_block=16, cmp_block=8),
              "landmark.attn": dict(block=10), "cca.attn": dict(group=8, local=16)}[path]
    q, k, v = qkv(1, 4, 2, 70, 70, seed=7)
    assert_matches_reference(C(path, **params), q, k, v, _config=CFG)
    if path == "landmark.attn":
        assert_matches_reference(C(path, "landmark_retrieval", block=10, retrieved=2), q, k, v, _config=CFG)


def test_selected_blocks_covered_by_the_static_part_count_once():
    """A hand-made selection naming the diagonal block and blocks inside the window
    (already visible): each pair is counted once; -1 slots and a repeated id are
    skipped. Ids are given unsorted."""
    p = C("causal & (window(40) | topk(3, block=16))")
    q, k, v = qkv(1, 2, 1, 64, 64, seed=11)
    sel = torch.tensor([[0, -1, 0], [1, 0, 1], [2, 1, 0], [3, 2, 0]], dtype=torch.int32)
    sel = sel.view(1, 1, 4, 3).expand(1, 2, 4, 3).contiguous().to(DEV)
    dedup = torch.tensor([[0, -1, -1], [0, 1, -1], [0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    dedup = dedup.view(1, 1, 4, 3).expand(1, 2, 4, 3).contiguous()
    out, lse = p(q, k, v, selection=sel, return_lse=True, backend="triton", _config=CFG)
    gold, glse = reference_attention(p.root, q.double().cpu(), k.double().cpu(), v.double().cpu(),
                                     selection={p.dynamic_atoms[0]: dedup})
    assert (out.double().cpu() - gold).abs().max() < 1e-5
    assert (lse.double().cpu() - glse).abs().max() < 1e-5


def test_kernel_selection_end_to_end():
    """Without a given selection the kernels select on the device; the result equals
    the reference run with the kernel's own selection, and that selection equals
    the reference's on planted data."""
    p = C("causal & (sink(4) | window(8) | topk(2, block=16))")
    q, k, v = qkv(1, 2, 2, 64, 64, seed=2)
    k[:, :, 16:32] += 3 * q[:, :, 48:64].mean(2, keepdim=True)  # block 1 matches the last group
    sel = p.select_blocks(q, k, backend="triton")
    assert torch.equal(sel.cpu(), p.select_blocks(q.cpu(), k.cpu(), backend="reference"))
    assert 1 in sel[0, 0, 3].tolist()
    out, lse = p(q, k, v, return_lse=True, backend="triton", _config=CFG)
    gold, glse = reference_attention(p.root, q.double().cpu(), k.double().cpu(), v.double().cpu(),
                                     selection={p.dynamic_atoms[0]: sel.cpu()})
    assert (out.double().cpu() - gold).abs().max() < 1e-5


# --------------------------------------------------------------------------
# backward: the static part, the selected blocks (selection not differentiated,
# as in NSA) and the landmark entries (means of key blocks: their gradient goes
# to the keys and values they average)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("src", DYNAMIC)
@pytest.mark.parametrize("shape", SHAPES[1:4])
def test_backward_matches_reference_given_the_selection(src, shape):
    q, k, v = qkv(*shape, seed=sum(shape) + 1)
    assert_grads_match_reference(C(src), q, k, v, _config=CFG)


@pytest.mark.parametrize("src", [DYNAMIC[0], DYNAMIC[5]])
def test_backward_lse_gradient_and_odd_head_dims(src):
    """dLSE joins delta; D = 24, Dv = 12 (tiles wider than the head)."""
    q, k, v = qkv(1, 4, 2, 45, 45, d=24, dv=12, seed=4)
    assert_grads_match_reference(C(src), q, k, v, lse_weight=0.5, _config=CFG)


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if GPU else []))
@pytest.mark.parametrize("src", [DYNAMIC[0], DYNAMIC[4]])
def test_backward_half_precision(src, dtype):
    q, k, v = qkv(1, 4, 2, 45, 45, d=32, seed=6, dtype=dtype)
    assert_grads_match_reference(C(src), q, k, v, _config=CFG)


@pytest.mark.parametrize("path", ["quest.attn", "nsa.attn", "landmark.attn"])
def test_backward_shipped_dynamic_patterns(path):
    params = {"quest.attn": dict(budget=32, page=8), "nsa.attn": dict(window=16, selected=5, sel_block=16, cmp_block=8),
              "landmark.attn": dict(block=10)}[path]
    q, k, v = qkv(1, 4, 2, 50, 50, seed=8)
    assert_grads_match_reference(C(path, **params), q, k, v, _config=CFG)


def test_backward_selection_with_repeats_and_covered_blocks():
    """A given selection with the diagonal block, blocks inside the window, -1 slots and a
    repeated id (unsorted): each visible pair contributes once to dQ, dK and dV."""
    p = C("causal & (window(40) | topk(3, block=16))")
    q, k, v = qkv(1, 2, 1, 64, 64, seed=12)
    sel = torch.tensor([[0, -1, 0], [1, 0, 1], [2, 1, 0], [3, 2, 0]], dtype=torch.int32)
    sel = sel.view(1, 1, 4, 3).expand(1, 2, 4, 3).contiguous()
    dedup = torch.tensor([[0, -1, -1], [0, 1, -1], [0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    dedup = dedup.view(1, 1, 4, 3).expand(1, 2, 4, 3).contiguous()
    do = rand(1, 2, 64, 32, seed=13)
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(p(*xs, selection=sel.to(DEV), backend="triton", _config=CFG), xs, do)
    gold_in = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    gold_out, _ = reference_attention(p.root, *gold_in, selection={p.dynamic_atoms[0]: dedup})
    gold = torch.autograd.grad(gold_out, gold_in, do.double().cpu())
    for x, g in zip(got, gold):
        assert not torch.isnan(x).any()
        assert (x.double().cpu() - g).abs().max() < 1e-5


def test_backward_split_key_tiles(monkeypatch):
    """dK/dV splits long key tiles over parts; the selected blocks and the landmark spread
    are added by part 0 only (else they would count once per part)."""
    from sparsedsl.kernels import launch

    monkeypatch.setattr(launch, "SPLIT_QUERIES", 8)
    monkeypatch.setattr(launch, "long_keys", lambda root: 1 << 20)
    q, k, v = qkv(2, 4, 2, 37, 37, seed=14)
    for src in (DYNAMIC[0], DYNAMIC[5]):
        p = C(src)
        run = launch._Launch(p.plan, q, k, v, not GPU, CFG or (64, 64), None)
        assert launch.split_plan(run)[1] > 1
        assert_grads_match_reference(p, q, k, v, _config=CFG)


def test_backward_landmark_parts(monkeypatch):
    """The landmark backward splits each entry tile's queries over parts (summed in order)."""
    from sparsedsl.kernels import launch

    monkeypatch.setattr(launch, "LANDMARK_PROGRAMS", 64)
    monkeypatch.setattr(launch, "LANDMARK_PART_QUERIES", 8)
    q, k, v = qkv(1, 2, 1, 70, 70, seed=17)  # 3 parts of 70 queries for 70 // 4 = 17 entries
    for src in (DYNAMIC[5], DYNAMIC[7]):
        assert_grads_match_reference(C(src), q, k, v, _config=CFG)


def test_inverse_selection():
    """The dK/dV kernel's inverse of a selection: per block, the rows that hold it once, on the device."""
    from sparsedsl.kernels.launch import inverse_selection

    sel = torch.tensor([[[[-1, 0, 2], [1, 1, 3], [0, 2, 9]]]], dtype=torch.int32, device=DEV)  # 9: past the end
    keys, off = inverse_selection(sel, 4)
    r = 3
    pairs = sorted((int(x) // r, int(x) % r) for x in keys[0, 0].tolist() if x < 4 * r)
    assert pairs == [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2), (3, 1)]
    assert off[0, 0].tolist() == [0, 2, 3, 5, 6]


# --------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------

STATIC = ["causal", "sink(4) | window(24)", "causal & (sink(3) | window(9))", "dilated(8, 2)",
          "heads[0:2] => causal & window(7) ; heads[*] => causal"]


def cache(b, hk, lmax, d, lens, seed, dtype=torch.float32, dv=None):
    """A cache [B, Hk, Lmax, D] holding NaN past each sequence's length."""
    k = rand(b, hk, lmax, d, seed=seed, dtype=dtype)
    v = rand(b, hk, lmax, dv or d, seed=seed + 1, dtype=dtype)
    for i, n in enumerate(lens):
        k[i, :, n:] = float("nan")
        v[i, :, n:] = float("nan")
    return k, v


def paged(kc, vc, lens, page, seed=0):
    """The same cache as pages [P, page, Hk, D] in a shuffled order, a block table
    [B, pages]; table entries past a sequence's pages name a page of NaN."""
    b, hk, lmax, d = kc.shape
    per = -(-lmax // page)
    total = b * per + 1
    order = torch.randperm(b * per, generator=torch.Generator().manual_seed(seed)).view(b, per)
    kp = torch.full((total, page, hk, d), float("nan"), device=DEV, dtype=kc.dtype)
    vp = torch.full((total, page, hk, vc.shape[-1]), float("nan"), device=DEV, dtype=vc.dtype)
    table = order.clone()
    for i in range(b):
        used = -(-lens[i] // page)
        for j in range(per):
            if j >= used:
                table[i, j] = total - 1  # the NaN page
                continue
            n = min(page, lmax - j * page)
            kp[order[i, j], :n] = kc[i, :, j * page:j * page + n].transpose(0, 1)
            vp[order[i, j], :n] = vc[i, :, j * page:j * page + n].transpose(0, 1)
    return kp, vp, table.to(device=DEV, dtype=torch.int32)


def decode_reference(p, q, kc, vc, lens):
    """Each sequence's prefill call with these queries on its first lens[b] keys, in float64."""
    outs, lses = [], []
    for i, n in enumerate(lens):
        o, lse = reference_attention(p.root, q[i:i + 1].double().cpu(), kc[i:i + 1, :, :n].double().cpu(),
                                     vc[i:i + 1, :, :n].double().cpu())
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def assert_close(out, lse, gold, glse, tol):
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    empty = torch.isinf(glse)
    assert torch.equal(torch.isinf(lse).cpu(), empty), "rows that see nothing: lse -inf exactly, and only those"
    assert (out.double().cpu()[empty] == 0).all()
    assert (out.double().cpu() - gold).abs().max() <= tol
    assert torch.where(empty, 0.0, (lse.double().cpu() - glse).abs()).max() <= tol


LENS = [[70, 33, 2], [16, 1, 64]]


@pytest.mark.parametrize("src", STATIC + DYNAMIC[:6])
@pytest.mark.parametrize("lq", [1, 3])
def test_decode_matches_reference_and_paged(src, lq):
    p = C(src)
    lens = LENS[lq % 2]
    q = rand(3, 4, lq, 32, seed=lq)
    kc, vc = cache(3, 2, 72, 32, lens, seed=lq + 1)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    out, lse = p.decode(q, kc, vc, seqlens, return_lse=True, backend="triton")
    gold, glse = decode_reference(p, q, kc, vc, lens)
    assert_close(out, lse, gold, glse, 2e-5)
    kp, vp, table = paged(kc, vc, lens, 16, seed=lq)
    pout, plse = p.decode(q, kp, vp, seqlens, block_table=table, return_lse=True, backend="triton")
    assert torch.equal(pout, out) and torch.equal(plse, lse)  # the same tiles, the same sums


@pytest.mark.parametrize("splits", [1, 2, 7, 40])
def test_decode_split_counts_and_empty_splits(splits):
    """More splits than key tiles: most parts see nothing (LSE -inf) and must not
    poison the merge; the result does not depend on the split count."""
    p = C("causal & (sink(4) | window(20) | topk(1, block=16))")
    lens = [50, 9]
    q = rand(2, 2, 2, 32, seed=4)
    kc, vc = cache(2, 1, 64, 32, lens, seed=5)
    out, lse = p.decode(q, kc, vc, torch.tensor(lens, dtype=torch.int32, device=DEV), return_lse=True,
                        num_splits=splits, backend="triton")
    gold, glse = decode_reference(p, q, kc, vc, lens)
    assert_close(out, lse, gold, glse, 2e-5)


def test_decode_equals_the_last_rows_of_prefill():
    """Static patterns: decoding the last Lq queries equals the prefill kernel's last Lq rows."""
    for src in STATIC[:3]:
        p = C(src)
        q, k, v = qkv(2, 4, 2, 41, 41, seed=8)
        out, lse = p(q, k, v, return_lse=True, backend="triton", _config=CFG)
        lens = torch.tensor([41, 41], dtype=torch.int32, device=DEV)
        dout, dlse = p.decode(q[:, :, -4:], k, v, lens, return_lse=True, backend="triton")
        assert (dout - out[:, :, -4:]).abs().max() < 2e-5
        assert (dlse - lse[:, :, -4:]).abs().max() < 2e-5


def test_decode_gqa_head_dims_and_half_precision():
    p = C("causal & (window(8) | topk(2, block=16) | landmarks(block=8))")
    lens = [45, 20]
    dtype = torch.bfloat16 if GPU else torch.float16
    q = rand(2, 8, 2, 24, seed=1, dtype=dtype)
    kc, vc = cache(2, 2, 48, 24, lens, seed=2, dtype=dtype, dv=12)
    out, lse = p.decode(q, kc, vc, torch.tensor(lens, dtype=torch.int32, device=DEV), return_lse=True,
                        backend="triton")
    gold, glse = decode_reference(p, q, kc, vc, lens)
    assert_close(out, lse, gold, glse, 2e-2)


def test_decode_summaries_refresh_after_append():
    """A cache grown token by token, decode() refreshing the summaries it is given,
    equals decode() summarising the whole cache each time (and the reference)."""
    p = C("causal & (window(8) | topk(2, block=8, score=minmax) | landmarks(block=8))")
    lmax, lens0 = 40, [13, 30]
    kc, vc = rand(2, 2, lmax, 32, seed=3), rand(2, 2, lmax, 32, seed=4)
    seqlens = torch.tensor(lens0, dtype=torch.int32, device=DEV)
    summ = p.summarize(kc, vc, seqlens)
    for step in range(5):
        seqlens = seqlens + 1
        q = rand(2, 4, 1, 32, seed=10 + step)
        out = p.decode(q, kc, vc, seqlens, summaries=summ, backend="triton")
        fresh = p.decode(q, kc, vc, seqlens, backend="triton")
        assert torch.equal(out, fresh)
    gold, _ = decode_reference(p, q, kc, vc, seqlens.tolist())
    assert (out.double().cpu() - gold).abs().max() < 2e-5


def test_decode_empty_cache_and_batch():
    p = C("causal & (window(8) | topk(2, block=8))")
    q = rand(2, 2, 1, 16)
    kc, vc = rand(2, 2, 16, 16), rand(2, 2, 16, 16)
    out, lse = p.decode(q, kc, vc, torch.zeros(2, dtype=torch.int32, device=DEV), return_lse=True,
                        backend="triton")
    assert (out == 0).all() and torch.isinf(lse).all() and (lse < 0).all()
    out = p.decode(q[:0], kc[:0], vc[:0], torch.zeros(0, dtype=torch.int32, device=DEV), backend="triton")
    assert out.shape == (0, 2, 1, 16)


@pytest.mark.parametrize("bad, phrase", [
    (dict(cache_seqlens=torch.tensor([3, 4])), "int32"),
    (dict(cache_seqlens=torch.tensor([3], dtype=torch.int32)), r"\[2\]"),
    (dict(k_cache=torch.zeros(2, 3, 16, 16), v_cache=torch.zeros(2, 3, 16, 16)), "multiple"),
    (dict(q=torch.zeros(2, 2, 1, 8)), "head dims"),
    (dict(block_table=torch.zeros(2, 2)), "block_table"),
    (dict(cache_seqlens=torch.tensor([3, 17], dtype=torch.int32)), "capacity"),
])
def test_decode_input_errors(bad, phrase):
    p = C("causal & window(8)")
    args = dict(q=torch.zeros(2, 2, 1, 16), k_cache=torch.zeros(2, 1, 16, 16), v_cache=torch.zeros(2, 1, 16, 16),
                cache_seqlens=torch.tensor([3, 4], dtype=torch.int32))
    args.update(bad)
    table = args.pop("block_table", None)
    with pytest.raises(sd.InputError, match=phrase):
        p.decode(args["q"], args["k_cache"], args["v_cache"], args["cache_seqlens"], block_table=table)


def test_selection_argument_errors():
    p = C("causal & topk(2, block=8)")
    q, k, v = qkv(1, 2, 2, 16, 16)
    with pytest.raises(sd.InputError, match="shape"):
        p(q, k, v, selection=torch.zeros(1, 2, 3, 2, dtype=torch.int32, device=DEV), backend="triton")
    with pytest.raises(sd.InputError, match="one topk"):
        C("causal & (topk(1, block=4) | topk(2, block=8))")(q, k, v, backend="triton")


def test_compute_selection_is_the_reference():  # the oracle the tests above lean on
    p = C("causal & topk(1, block=4)")
    q = torch.zeros(1, 1, 8, 2, dtype=torch.float64)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 8, 2, dtype=torch.float64)
    k[0, 0, 0:4, 0] = -1.0
    k[0, 0, 4:8, 0] = 2.0
    assert compute_selection(p.root, q, k)[p.dynamic_atoms[0]].flatten().tolist() == [0, 1]


@pytest.mark.skipif(not GPU, reason="CUDA graphs need a GPU")
def test_selection_prefill_and_decode_capture_in_a_cuda_graph():
    """No host synchronisation and fixed-size outputs: selection + attention (prefill)
    and summaries refresh + selection + split-KV decode are captured once and replayed
    on new inputs (copied into the captured tensors), matching eager calls."""
    p = C("causal & (sink(4) | window(64) | topk(4, block=64) | landmarks(block=32))")
    q, k, v = qkv(1, 4, 2, 512, 512, d=64, seed=1, dtype=torch.bfloat16)
    lens = torch.tensor([300, 512], dtype=torch.int32, device=DEV)
    qd = rand(2, 4, 1, 64, seed=2, dtype=torch.bfloat16)
    kc, vc = rand(2, 2, 512, 64, seed=3, dtype=torch.bfloat16), rand(2, 2, 512, 64, seed=4, dtype=torch.bfloat16)
    summ = p.summarize(kc, vc, lens)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles) outside the capture
        p(q, k, v)
        p.decode(qd, kc, vc, lens, summaries=summ)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = p(q, k, v)
        dout = p.decode(qd, kc, vc, lens, summaries=summ)
    for seed in (5, 6):
        q.copy_(rand(*q.shape, seed=seed, dtype=q.dtype))
        qd.copy_(rand(*qd.shape, seed=seed + 10, dtype=qd.dtype))
        # a decode step: each sequence's newest key (the one decode() refreshes the summaries for)
        kc[0, :, 299].copy_(rand(2, 64, seed=seed + 20, dtype=kc.dtype))
        kc[1, :, 511].copy_(rand(2, 64, seed=seed + 30, dtype=kc.dtype))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, p(q, k, v)), "prefill: graph replay != eager"
        assert torch.equal(dout, p.decode(qd, kc, vc, lens, summaries=p.summarize(kc, vc, lens))), \
            "decode: graph replay != eager"


def test_launches_pass_only_the_keywords_each_kernel_takes(monkeypatch):
    """Triton on a GPU rejects a keyword argument its kernel lacks; the interpreter
    ignores it. Every launch (forward, dQ, dK/dV, landmark backward, decode) is
    checked here against its kernel's argument names."""
    from sparsedsl.kernels import launch

    real, seen = launch.kernels_for, set()

    class Strict:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel
            self.arg_names = launch.kernel_args(kernel)

        def __getitem__(self, grid):
            run = self.kernel[grid]

            def call(*args, **kwargs):
                extra = set(kwargs) - set(self.arg_names) - {"num_warps", "num_stages"}
                assert not extra, f"{self.name} does not take {sorted(extra)}"
                seen.add(self.name.rsplit("_", 2)[-2])
                return run(*args, **kwargs)
            return call

    class Module:
        def __init__(self, module):
            self.module = module

        def __getattr__(self, name):
            return Strict(name, getattr(self.module, name))

    def strict(*args):
        module, names = real(*args)
        return Module(module), names

    monkeypatch.setattr(launch, "_KERNELS", {})
    monkeypatch.setattr(launch, "kernels_for", strict)
    p = C("causal & (window(8) | topk(2, block=16) | landmarks(block=8))")
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 1, 40, 40, seed=15))
    p(q, k, v, backend="triton", _config=CFG).sum().backward()
    kc, vc = cache(1, 1, 48, 32, [40], seed=16)
    lens = torch.tensor([40], dtype=torch.int32, device=DEV)
    p.decode(q.detach()[:, :, -1:], kc, vc, lens, summaries=p.summarize(kc, vc, lens))
    assert seen == {"fwd", "dq", "dkdv", "landmarks"}
