"""Exact closed-form bounds for where(...) over positions (sparsedsl/atoms/solve.py),
checked against brute force: for query tiles (and, transposed, key tiles) the
segments must hold every visible pair, their full intervals only pairs every
position of the tile sees, and for the solvable forms both are exact."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsedsl as sd  # noqa: E402
from sparsedsl.atoms import solve  # noqa: E402
from sparsedsl.ir import nodes as ir  # noqa: E402
from sparsedsl.reference.evaluate import eval_cond, eval_int  # noqa: E402


def _cond(body: str) -> ir.Node:
    """The condition of `where(body)`, as the language builds it."""
    return sd.compile_pattern(f"pattern p() {{ where({body}) }}").root.body.args[0]


def _truth(cond, lq, lk):
    """bool [Lq, Lk]: cond at query positions Lk - Lq + row and keys 0..Lk-1."""
    q = torch.arange(lk - lq, lk).view(-1, 1)
    k = torch.arange(lk).view(1, -1)
    v = eval_cond(cond, {"q": q, "k": k, "h": 0, "hk": 0, "H": 1, "Hk": 1})
    return v.expand(lq, lk) if isinstance(v, torch.Tensor) else torch.full((lq, lk), bool(v))


def _ranges(segs, env, n, start):
    """(covered, full): bool [n] over positions start..start+n-1."""
    pos = torch.arange(start, start + n)
    covered = torch.zeros(n, dtype=torch.bool)
    full = torch.zeros(n, dtype=torch.bool)
    for s in segs:
        if not eval_cond(s.guard, env):
            continue
        lo, hi = eval_int(s.lo, env), eval_int(s.hi, env)
        flo, fhi = eval_int(s.full_lo, env), eval_int(s.full_hi, env)
        covered |= (pos >= lo) & (pos < hi)
        full |= (pos >= max(lo, flo)) & (pos < min(hi, fhi))
    return covered, full


def _check(cond, lq, lk, tile, exact: bool):
    m = _truth(cond, lq, lk)
    env0 = {"h": 0, "hk": 0, "H": 1, "Hk": 1, "Lk": lk, "Lq": lq}
    for transposed in (False, True):
        segs = solve.query_segments(cond) if transposed else solve.key_segments(cond)
        mm = m.t() if transposed else m
        n_own, start_other = mm.shape[0], (lk - lq) if transposed else 0
        own_start = 0 if transposed else lk - lq
        for r0 in range(0, n_own, tile):
            rows = mm[r0:r0 + tile]
            p0, p1 = own_start + r0, own_start + r0 + rows.shape[0]
            env = dict(env0, **({"k0": p0, "k1": p1} if transposed else {"q0": p0, "q1": p1}))
            covered, full = _ranges(segs, env, mm.shape[1], start_other)
            some, every = rows.any(0), rows.all(0)
            where = f"{'key' if transposed else 'query'} tile [{p0}, {p1}), Lq={lq}, Lk={lk}"
            assert not (some & ~covered).any(), f"a visible pair outside the segments: {where}"
            assert not (full & ~every).any(), f"a full position not seen by the whole tile: {where}"
            if exact:
                idx = some.nonzero()
                if len(idx):  # the segments' hull is the visible positions' hull
                    lo, hi = int(idx[0]), int(idx[-1]) + 1
                    assert not covered[:lo].any() and not covered[hi:].any(), f"not exact: {where}"
                assert torch.equal(full, every), f"full interval not exact: {where}"


EXACT = [
    "q // 8 == k // 8",  # chunked attention
    "(q + 4) // 8 == (k + 4) // 8",  # LongLoRA's shifted groups
    "q // 8 == (k - 3) // 8",
    "k >= q // 6 * 6 - 5 and k <= q",  # CCA's group-local keys
    "q - k < 7 and k <= q",
    "3 * k >= q - 5 and 2 * k < q + 9",
    "(q + 1) // 3 == k // 2",
    "k // 5 <= q // 5 and q // 5 <= k // 5 + 1",
    "0 - k >= 0 - q",
    "q >= 20 and k < 9",
    "not (k > q)",
    "q // 8 != k // 8 and k <= q and k >= q - 30",
    "abs(q // 4 - k // 4) <= 1",  # BigBird's sliding blocks
    "abs(q - k) < 5",
]


@pytest.mark.parametrize("body", EXACT)
@pytest.mark.parametrize("lq,lk,tile", [(40, 40, 8), (37, 53, 7), (53, 37, 16), (30, 30, 1)])
def test_solvable_conditions_are_exact(body, lq, lk, tile):
    cond = _cond(body)
    assert solve.fallbacks(cond) == []
    # `!=` and `or` give a union of exact parts: the hull is exact, not each gap
    _check(cond, lq, lk, tile, exact="!=" not in body)


@pytest.mark.parametrize("body", ["q * k < 50", "(q - k) % 3 == 0", "(q + 3 * k) % 5 < 2", "k >= q % 7"])
def test_unsolvable_conditions_fall_back_soundly(body):
    cond = _cond(body)
    assert solve.fallbacks(cond), "expected a fallback"
    _check(cond, 41, 41, 8, exact=False)


_VARS = st.sampled_from(["q", "k"])
_C = st.integers(-9, 9)


@st.composite
def _affine(draw, depth=2):
    """An integer expression: positions, constants, +, -, * and // by constants (sometimes %)."""
    if depth == 0 or draw(st.booleans()):
        return draw(st.one_of(_VARS, _C.map(str)))
    op = draw(st.sampled_from(["+", "-", "*", "//", "%"]))
    a = draw(_affine(depth - 1))
    if op in ("*", "//", "%"):
        b = draw(st.integers(1, 9) if op != "*" else st.integers(-4, 4))
        return f"({a} {op} {b})"
    return f"({a} {op} {draw(_affine(depth - 1))})"


@st.composite
def _conditions(draw, depth=2):
    if depth == 0 or draw(st.booleans()):
        return f"({draw(_affine())} {draw(st.sampled_from(['<', '<=', '==', '!=', '>=', '>']))} {draw(_affine())})"
    op = draw(st.sampled_from(["and", "or", "not"]))
    if op == "not":
        return f"(not {draw(_conditions(depth - 1))})"
    return f"({draw(_conditions(depth - 1))} {op} {draw(_conditions(depth - 1))})"


@settings(max_examples=150, deadline=None)
@given(_conditions(), st.integers(1, 30), st.integers(1, 30), st.sampled_from([1, 4, 8]))
def test_random_conditions_are_sound(body, lq, lk, tile):
    try:
        cond = _cond(body)
    except sd.PatternError:  # e.g. a condition that folds to a constant division by zero
        return
    # a single comparison without fallback is exact; anything else only sound
    single = isinstance(cond, ir.Cmp) and cond.op not in ("!=",) and not solve.fallbacks(cond)
    _check(cond, lq, lk, tile, exact=single)


def test_chunked_is_where_in_the_chunked_form():
    # the same kernel plan (and source) whichever way it is written
    from sparsedsl.kernels.generate import kernel_source

    texts = set()
    for body in ("causal & chunked(64)", "causal & where(q // 64 == k // 64)", "where(k // 64 == q // 64) & causal"):
        p = sd.compile_pattern(f"pattern p() {{ {body} }}")
        src, _ = kernel_source(p.plan, "text", True, 64, 16)
        texts.add(src)
    assert len(texts) == 1
    shifted = sd.compile_pattern("pattern p() { chunked(64, offset=32) }")
    written = sd.compile_pattern("pattern p() { where((q + 32) // 64 == (k + 32) // 64) }")
    assert torch.equal(shifted.mask(300, num_heads=2), written.mask(300, num_heads=2))
    assert torch.equal(written.mask(200, num_heads=1)[0],
                       _truth(_cond("(q + 32) // 64 == (k + 32) // 64"), 200, 200))


def _interpreter_on() -> bool:
    try:
        from sparsedsl.kernels.launch import interpreter_ready
    except ImportError:  # no triton
        return False
    return interpreter_ready()


@pytest.mark.skipif(not _interpreter_on(), reason="needs Triton's interpreter (tests/conftest.py)")
@pytest.mark.parametrize("body", [
    "causal & chunked(8)",
    "heads[0:1] => causal & chunked(8, offset=4)\n heads[1:] => causal & chunked(8)",  # LongLoRA's halves
    "where(k >= q // 6 * 6 - 5 and k <= q)",
    "where(3 * k >= q - 5 and 2 * k < q + 9) | sink(2)",
    "causal & where(q * k % 7 < 3)",  # a fallback: every tile, masked
])
def test_kernels_on_solved_bounds_match_reference(body):
    from sparsedsl.testing import assert_grads_match_reference, assert_matches_reference, attention_inputs

    p = sd.compile_pattern(f"pattern p() {{ {body} }}")
    for lq, lk in ((37, 37), (20, 45)):
        shape = dict(batch=1, num_heads=2, num_kv_heads=1, q_len=lq, kv_len=lk, head_dim=16, head_dim_v=16,
                     dtype="float32", layout="contiguous")
        q, k, v = attention_inputs(shape, 0)
        assert_matches_reference(p, q, k, v)
        assert_grads_match_reference(p, q, k, v)


# ---- block probes: a fallback that reads positions only as q // bq and k // bk -----------------

PROBED = [
    "causal & where((q // 32 * 7 + k // 32 * 3) % 5 == 0)",
    "window(70) & where((q // 32 + k // 64) % 3 != 1)",             # two block sizes, inside an intersection
    "sink(4) | causal & where((q // 32) * (k // 32) % 7 < 2)",     # after an exact segment
    "heads[0] => where(((q // 32) * (k // 32) + h) % 4 == 0)\n heads[*] => causal & window(40) "
    "| where((q // 32 - k // 32) % 5 == h % 5)",                    # head symbols in the probe
]


def test_a_block_probe_is_derived_only_from_block_reads():
    for body in ("q * k < 50", "(q // 64 + k) % 3 == 0", "(q // 8 + k // 8) % 3 == 0",
                 "(q // 64 + q) % 3 == k // 64", "(q // 64 + k // 32) % 3 == (k // 64) % 2"):
        assert solve.block_probe(_cond(body)) == (), body  # a raw position, blocks under 32, two k blocks
    cond = _cond("(q // 64 * 92821 + k // 32 * 5) % 7 < 3")
    (p,) = solve.block_probe(cond)
    assert (p.q_block, p.k_block) == (64, 32) and ir.symbols(p.cond) == {"qb", "kb"}
    q, k = torch.arange(-70, 400).view(-1, 1), torch.arange(0, 400).view(1, -1)
    want = eval_cond(cond, {"q": q, "k": k})
    got = eval_cond(p.cond, {"qb": torch.div(q, 64, rounding_mode="floor"), "kb": k // 32})
    assert torch.equal(torch.as_tensor(got).expand_as(want), want)


@pytest.mark.parametrize("body", PROBED)
@pytest.mark.parametrize("lq,lk", [(100, 100), (61, 150), (150, 61)])
@pytest.mark.parametrize("tile", [(16, 16), (64, 32), (32, 64)])
def test_block_probes_skip_only_tiles_without_visible_pairs(body, lq, lk, tile):
    """The cost walk (runtime/cost.py, the kernels' walk) with the probes: every tile holding
    a visible pair is visited (brute force from the dense mask), the others are skipped."""
    from dataclasses import replace

    from test_cost import _check

    from sparsedsl.passes.plan import kernel_plan
    from sparsedsl.runtime.cost import pattern_cost

    p = sd.compile_pattern(f"pattern p() {{ {body} }}")
    plan = kernel_plan(p.root)
    assert all(s.probe == () for br in plan.branches for s in br.segments[:-1])  # probed: last
    assert any(br.segments[-1].probe for br in plan.branches)
    rep = _check(p, lq, lk, 2, 1, tile)  # every tile with a visible pair visited, `needed` exact
    # the probes skip tiles of the walk without them, and only those
    plain = replace(plan, branches=tuple(replace(br, segments=tuple(replace(s, probe=()) for s in br.segments))
                                         for br in plan.branches))
    without = pattern_cost(p.root, plain, lq, lk, 2, 1, tile, 16)
    assert rep.visited + rep.probed == without.visited and rep.needed == without.needed


@pytest.mark.skipif(not _interpreter_on(), reason="needs Triton's interpreter (tests/conftest.py)")
@pytest.mark.parametrize("body", PROBED)
def test_kernels_with_block_probes_match_reference(body):
    from sparsedsl.testing import assert_grads_match_reference, assert_matches_reference, attention_inputs

    p = sd.compile_pattern(f"pattern p() {{ {body} }}")
    for lq, lk, config in ((150, 150, (16, 16)), (61, 150, (32, 64)), (150, 61, (64, 32))):
        shape = dict(batch=1, num_heads=2, num_kv_heads=1, q_len=lq, kv_len=lk, head_dim=16, head_dim_v=16,
                     dtype="float32", layout="contiguous")
        q, k, v = attention_inputs(shape, lq)
        assert_matches_reference(p, q, k, v, _config=config)
    assert_grads_match_reference(p, q, k, v, _config=(16, 16))
