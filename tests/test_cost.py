"""The static cost report (runtime/cost.py) against brute force: tiles counted
from the dense mask. `needed` must equal the count of (query tile, key tile)
pairs holding a visible pair; every such tile must be visited; a full tile must
be entirely visible; visited = full + partial."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsedsl as sd  # noqa: E402
from sparsedsl.passes.plan import kernel_plan  # noqa: E402
from sparsedsl.runtime.cost import pattern_cost  # noqa: E402
from sparsedsl.ir.printer import to_text  # noqa: E402
from sparsedsl.testing import patterns  # noqa: E402


def _brute(mask: torch.Tensor, rate: int, lq: int, lk: int, bm: int, bn: int):
    """(needed, entirely visible) tile counts of one head's mask [Lq, Lk], in the kernel's layout:
    residue classes of `rate`, tiles of bm queries and bn keys in class indices."""
    needed = whole = 0
    off = lk - lq
    for c in range(rate):
        qs = [p for p in range(off, lk) if (p - c) % rate == 0]  # (negative positions when Lq > Lk)
        ks = [p for p in range(lk) if (p - c) % rate == 0]
        for a in range(0, len(qs), bm):
            rows = [p - off for p in qs[a:a + bm]]
            for b in range(0, len(ks), bn):
                sub = mask[rows][:, ks[b:b + bn]]
                needed += bool(sub.any())
                whole += bool(sub.all())
    return needed, whole


def _check(p, lq, lk, h, hk, tile):
    plan = kernel_plan(p.root)
    rep = pattern_cost(p.root, plan, lq, lk, h, hk, tile, 16)
    m = p.mask(lq, lk, num_heads=h, num_kv_heads=hk)
    assert rep.visited == rep.full + rep.partial
    for head in range(h):
        need, whole = _brute(m[head], plan.rate, lq, lk, *tile)
        c = rep.per_head[head]
        assert c.needed == need, (head, c, need)
        assert c.visited >= need and c.full <= whole, (head, c, need, whole)
    assert rep.needed == sum(c.needed for c in rep.per_head)
    return rep


@pytest.mark.parametrize("body", [
    "causal", "causal & chunked(8)", "causal & where(q // 8 == k // 8)", "causal & (sink(3) | window(9))",
    "dilated(6, 4)", "strided(4, block=8) | causal & window(5)", "local_blocks(2, block=8)",
    "heads[0] => causal & chunked(8, offset=4)\n heads[*] => causal & chunked(8)",
])
@pytest.mark.parametrize("lq,lk", [(40, 40), (29, 53), (53, 29)])
def test_cost_matches_brute_force(body, lq, lk):
    p = sd.compile_pattern(f"pattern p() {{ {body} }}")
    rep = _check(p, lq, lk, 2, 1, (8, 8))
    if "chunked" in body or "where" in body:
        assert rep.ratio == 1.0  # exact bounds: only needed tiles are visited


def test_solved_where_visits_what_chunked_visits_and_a_fallback_does_not():
    exact = sd.compile_pattern("pattern p() { causal & where(q // 32 == k // 32) }")
    chunk = sd.compile_pattern("pattern p() { causal & chunked(32) }")
    bad = sd.compile_pattern("pattern p() { causal & where(q * k < 500) }")
    a, b, c = (pattern_cost(x.root, kernel_plan(x.root), 512, 512, 1, 1, (16, 16), 16) for x in (exact, chunk, bad))
    assert a.visited == b.visited == a.needed == 16 * 3 and a.ratio == 1.0  # 16 chunks of 2x2 tiles, causal: 3 each
    assert c.ratio > 1.5 and c.visited == 32 * 33 // 2  # every causal tile, each masked
    assert c.full == 0


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(patterns(max_depth=2), st.integers(1, 40), st.integers(1, 40), st.sampled_from([(4, 4), (8, 4), (4, 8)]))
def test_cost_of_random_patterns_matches_brute_force(root, lq, lk, tile):
    p = sd.compile_pattern(to_text(root))
    h = 2
    try:
        _check(p, lq, lk, h, 1, tile)
    except sd.InputError:  # e.g. a head-dependent argument out of range for these heads
        pass


def test_check_warns_with_the_condition_that_falls_back(tmp_path, capsys):
    from sparsedsl.cli import main

    f = tmp_path / "slow.attn"
    f.write_text("pattern slow() {\n    causal & where(q * k < 100000)\n}\n")
    assert main(["check", str(f)]) == 0  # a warning, not an error
    out = capsys.readouterr().out
    assert f"{f}:2:20: warning: pattern 'slow' visits" in out and "`q * k < 100000`" in out
    assert main(["check", str(f), "--cost", "--cost-len", "1024", "--tile", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "visited 136 key tiles (0 full, 136 partial)" in out  # every causal tile of 16 x 16


def test_no_shipped_pattern_warns(capsys):
    from pathlib import Path

    from sparsedsl.cli import main

    files = sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "patterns").glob("*.attn"))
    assert main(["check", *files]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    # (BigBird's random blocks, a hash of the block indices, have no bound but a block probe)
    assert warnings == []
    big = sd.compile_pattern("patterns/bigbird.attn")
    rep = big.cost(4096, tile=(128, 64))
    assert rep.ratio == 1.0 and rep.probed > 0 and rep.visited == rep.needed


def test_cost_method_checks_its_arguments():
    p = sd.compile_pattern("pattern p() { causal & chunked(64) }")
    rep = p.cost(1024, num_heads=2, tile=(64, 64), head_dim=64)
    assert rep.visited == rep.needed == 2 * 16 and rep.flops == 4 * 64 * 64 * 64 * rep.visited
    for bad in (dict(tile=(0, 64)), dict(tile="x"), dict(head_dim=0)):
        with pytest.raises(sd.InputError):
            p.cost(1024, **bad)
    with pytest.raises(sd.InputError, match="depends on the data"):
        sd.compile_pattern("patterns/quest.attn").cost(1024)
