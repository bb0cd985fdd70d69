"""The optimizer passes and the bounds analysis.

* every pass of sparsedsl.passes.PIPELINE, run in order with verify() after
  each, keeps the dense mask of every head identical (random static patterns
  and the shipped ones; Lq == Lk, Lq < Lk, Lq > Lk, MHA and GQA);
* golden tests of the canonicalize and simplify rules: input text -> the
  printed IR after the pass;
* bounds.segments: for random tiles of queries, every key some query of the
  tile sees lies in a segment, and every key of a segment's full interval is
  seen by every query of the tile; the same for the kernel plan's branches.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("hypothesis")

from hypothesis import example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsedsl as sd  # noqa: E402
from sparsedsl.ir import build  # noqa: E402
from sparsedsl.ir import nodes as ir  # noqa: E402
from sparsedsl.ir.graph import verify  # noqa: E402
from sparsedsl.ir.printer import to_text  # noqa: E402
from sparsedsl.passes import PIPELINE, bounds, optimize  # noqa: E402
from sparsedsl.passes.plan import make_plan  # noqa: E402
from sparsedsl.reference.evaluate import eval_cond, eval_int  # noqa: E402
from sparsedsl.runtime.pattern import CompiledPattern  # noqa: E402
from sparsedsl.testing import atoms, patterns, shapes  # noqa: E402

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"
_MANY = settings(max_examples=settings().max_examples * 4)  # cheap: no kernels, small masks

# (q_len, kv_len, num_heads, num_kv_heads): square, decode, Lq < Lk, Lq > Lk
# (negative query positions), GQA and MQA, empty.
FIXED_SHAPES = [(9, 9, 4, 2), (1, 23, 3, 1), (5, 23, 4, 4), (23, 5, 4, 2), (17, 1, 6, 3), (0, 4, 2, 1), (4, 0, 1, 1)]


def dense(root: ir.Pattern, q_len, kv_len, num_heads, num_kv_heads) -> torch.Tensor:
    return CompiledPattern(root, {}, {}).mask(q_len, kv_len, num_heads, num_kv_heads)


def shipped_static():
    """(file name, pattern name, root) of every static pattern in patterns/ (defaults)."""
    out = []
    for path in sorted(PATTERNS.glob("*.attn")):
        info = sd.compiler.load(path)
        for name, pdef in info.own.items():
            if any(p.default is None for p in pdef.params):
                continue
            p = sd.compile_pattern(path, pattern=name)
            if not p.is_dynamic:
                out.append(pytest.param(p.root, id=f"{path.stem}:{name}"))
    return out


SHIPPED = shipped_static()

# Defaults are long (windows of 1024...); these make the shipped patterns
# interesting at lengths of a few dozen.
SMALL_PARAMS = {
    "bigbird": dict(block=4, window_blocks=3, global_blocks=1, rand_num=1, rand_den=3),
    "duo_attention": dict(retrieval=1, sink=2, recent=5),
    "duo_attention_gqa": dict(retrieval_kv=1, sink=2, recent=5),
    "longformer": dict(window=6, num_global=2),
    "longformer_lm": dict(window=5, dilation=3, dilated_heads=1),
    "longgen_sparse": dict(sink=2, window=5, stride=3, block=4),
    "longgen": dict(layer=1, num_layers=3, sink=2, window=5, stride=3, block=4),
    "longnet_segment": dict(segment=8, ratio=2),
    "longnet": dict(w1=4, r1=1, w2=8, r2=2, w3=16, r3=4, w4=16, r4=3, w5=32, r5=5),
    "longnet_dilated": dict(size=3),
    "moa": dict(sink=2, alpha=2, beta_den=4),
    "s2_attention": dict(local=2, stride=3, block=4, dense_heads=1),
    "s2_attention_vllm": dict(local=1, stride=3, block=4),
    "streaming_llm": dict(sink=2, window=5),
}


def shipped_small():
    out = []
    for path in sorted(PATTERNS.glob("*.attn")):
        for name in sd.compiler.load(path).own:
            if name in SMALL_PARAMS:
                p = sd.compile_pattern(path, pattern=name, **SMALL_PARAMS[name])
                out.append(pytest.param(p.root, id=f"{path.stem}:{name}:small"))
    return out


SHIPPED_SMALL = shipped_small()


# ---- every pass keeps the mask ---------------------------------------------------------


def check_pipeline_keeps_mask(root: ir.Pattern, shape_list) -> None:
    before = {s: dense(root, *s) for s in shape_list}
    current = root
    for p in PIPELINE:
        after = p.apply(current)
        verify(after)
        assert isinstance(after, ir.Pattern) and after.name == root.name, p.name
        for s in shape_list:
            got = dense(after, *s)
            if not torch.equal(got, before[s]):
                diff = (got != before[s]).nonzero()[0].tolist()
                raise AssertionError(
                    f"pass {p.name!r} changed the mask at (head, row, key) = {diff} for (Lq, Lk, H, Hk) = {s}:\n"
                    f"before: {to_text(current)}after:  {to_text(after)}")
        current = after
    assert optimize(root) is current  # the pipeline function runs the same passes


@st.composite
def rule_masks(draw, depth: int = 2):
    """Small masks made to trigger the rewrite rules: atoms with tiny constant
    arguments (0, 1 and equal sizes are common), combined by | & - ~."""
    c = lambda lo=1: ir.Const(draw(st.integers(lo, 4)))  # noqa: E731
    kind = draw(st.sampled_from(("atom", "union", "union", "inter", "inter", "diff", "compl") if depth else ("atom",)))
    if kind == "atom":
        make = {
            "causal": lambda: (), "full": lambda: (), "none": lambda: (),
            "window": lambda: (c(),), "sink": lambda: (c(0),), "global": lambda: (c(0),),
            "band": lambda: (c(0), c(0)), "dilated": lambda: (c(), c()), "local_blocks": lambda: (c(), c()),
            "strided": lambda: (c(), c(), c(0)), "where": lambda: (ir.Bool(draw(st.booleans())),),
            "window_h": lambda: (build.int_op("+", ir.Sym("h"), ir.Const(1)),),
        }
        name = draw(st.sampled_from(sorted(make) + ["window", "window", "sink"]))  # the atoms most rules are about
        return build.atom(name.removesuffix("_h"), *make[name]())
    sub = rule_masks(depth - 1)
    if kind == "union":
        return build.union(*draw(st.lists(sub, min_size=2, max_size=3)))
    if kind == "inter":
        return build.inter(*draw(st.lists(sub, min_size=2, max_size=3)))
    if kind == "diff":
        return build.diff(draw(sub), draw(sub))
    return build.compl(draw(sub))


@_MANY
@given(rule_masks(), st.lists(shapes(max_len=24, max_heads=6), min_size=1, max_size=2))
def test_pipeline_keeps_the_mask_of_rule_heavy_patterns(body, drawn):
    root = ir.Pattern("p", body)
    note(to_text(root))
    check_pipeline_keeps_mask(root, FIXED_SHAPES + [_shape_tuple(s) for s in drawn])


def _shape_tuple(s: dict):
    return (s["q_len"], s["kv_len"], s["num_heads"], s["num_kv_heads"])


@_MANY
@given(patterns(), st.lists(shapes(max_len=24, max_heads=6), min_size=1, max_size=2))
@example(ir.Pattern("p", ir.Atom("global", (ir.Const(0),))), [])  # found: simplify took global(0) for none
def test_pipeline_keeps_the_mask_of_random_patterns(root, drawn):
    note(to_text(root))
    check_pipeline_keeps_mask(root, FIXED_SHAPES + [_shape_tuple(s) for s in drawn])


@pytest.mark.parametrize("root", SHIPPED + SHIPPED_SMALL)
def test_pipeline_keeps_the_mask_of_shipped_patterns(root):
    check_pipeline_keeps_mask(root, [(40, 40, 8, 2), (13, 40, 4, 4), (40, 13, 4, 1), (1, 37, 8, 8)])


def test_optimize_trace_names_every_pass():
    root = sd.compile_pattern("pattern p() { causal & (window(4) | window(6)) & full }").root
    trace = []
    out = optimize(root, trace=trace)
    assert [p.name for p, _ in trace] == [p.name for p in PIPELINE]
    assert trace[-1][1] is out
    assert to_text(out.body) == "window(6)"


# ---- golden tests of the rules ---------------------------------------------------------

def _pass(name):
    return next(p for p in PIPELINE if p.name == name)


# (pass, input body, expected body after that pass alone)
GOLDEN = [
    # canonicalize: constants, flattening, order, duplicates
    ("canonicalize", "causal | full", "full"),
    ("canonicalize", "causal & full", "causal"),
    ("canonicalize", "causal & none", "none"),
    ("canonicalize", "causal | none", "causal"),
    ("canonicalize", "none | none", "none"),
    ("canonicalize", "where(true) | causal", "full"),
    ("canonicalize", "where(false) | causal", "causal"),
    ("canonicalize", "where(1 > 2) & causal", "none"),
    ("canonicalize", "causal | causal", "causal"),
    ("canonicalize", "window(3) | causal", "causal | window(3)"),
    ("canonicalize", "sink(2) | causal & window(3) | sink(2)", "sink(2) | causal & window(3)"),
    ("canonicalize", "(window(3) | causal) | (sink(1) | window(3))", "causal | sink(1) | window(3)"),
    # differences and complements
    ("canonicalize", "causal - none", "causal"),
    ("canonicalize", "none - causal", "none"),
    ("canonicalize", "causal - full", "none"),
    ("canonicalize", "causal - causal", "none"),
    ("canonicalize", "full - causal", "~causal"),
    ("canonicalize", "~~causal", "causal"),
    ("canonicalize", "~full", "none"),
    ("canonicalize", "~none", "full"),
    ("canonicalize", "~~~window(2)", "~window(2)"),
    # per-head switches
    ("canonicalize", "heads[*] => causal", "causal"),
    ("canonicalize", "heads[0] => window(2); heads[*] => window(2)", "window(2)"),
    ("canonicalize", "heads[*] => causal; heads[0] => window(2)", "causal"),
    ("canonicalize", "heads[1:] => causal; heads[*] => window(3); heads[0] => full",
     "heads[1:] => causal\n    heads[*] => window(3)"),
    ("canonicalize", "heads[0] => causal; heads[*] => window(3)", "heads[0] => causal\n    heads[*] => window(3)"),
    # simplify: single atoms
    ("simplify", "band(4, 0)", "window(5)"),
    ("simplify", "band(h, 0)", "window(h + 1)"),
    ("simplify", "band(0, 0)", "window(1)"),
    ("simplify", "band(0, 3)", "band(0, 3)"),
    ("simplify", "dilated(7, 1)", "window(7)"),
    ("simplify", "dilated(7, 2)", "dilated(7, 2)"),
    ("simplify", "sink(0) | causal", "causal"),
    ("simplify", "global(0) | causal", "causal | global(0)"),
    ("simplify", "strided(1, block=5)", "full"),
    ("simplify", "strided(1, block=5, offset=3) & causal", "causal"),
    ("simplify", "local_blocks(3, block=1)", "window(3)"),
    ("simplify", "local_blocks(3, block=2)", "local_blocks(3, block=2)"),
    # simplify: sets of atoms
    ("simplify", "window(3) | window(5)", "window(5)"),
    ("simplify", "window(3) & window(5)", "window(3)"),
    ("simplify", "window(h + 1) | window(2) | window(3)", "window(3) | window(h + 1)"),
    ("simplify", "sink(3) | sink(5) | causal", "causal | sink(5)"),
    ("simplify", "sink(3) & sink(5)", "sink(3)"),
    ("simplify", "causal | window(4)", "causal"),
    ("simplify", "causal & window(4)", "window(4)"),
    ("simplify", "causal & (sink(4) | window(8)) & window(6)", "window(6) & (sink(4) | window(8))"),
    ("simplify", "causal & window(5) | sink(0)", "window(5)"),
    ("simplify", "window(3) - window(5)", "none"),
    ("simplify", "window(5) - window(5)", "none"),
    ("simplify", "window(5) - window(3)", "window(5) - window(3)"),
    ("simplify", "window(5) - window(4)", "window(5) - window(4)"),
    ("simplify", "window(5) - window(6)", "none"),
    ("simplify", "window(4) - causal", "none"),
    ("simplify", "causal - window(4)", "causal - window(4)"),
    ("simplify", "band(2, 0) | dilated(4, 1) | causal", "causal"),
]


@pytest.mark.parametrize("name,text,expected", GOLDEN, ids=[f"{n}:{t}" for n, t, _ in GOLDEN])
def test_rule_golden(name, text, expected):
    root = sd.compile_pattern(f"pattern p() {{\n    {text}\n}}").root
    out = _pass(name).apply(root)
    verify(out)
    assert to_text(out) == f"pattern p() {{\n    {expected}\n}}\n"
    for s in FIXED_SHAPES[:4]:
        assert torch.equal(dense(out, *s), dense(root, *s)), s


def test_simplify_keeps_global_zero_for_negative_positions():
    """A regression: global(0) is q < 0, not none (Lq > Lk gives negative positions)."""
    root = sd.compile_pattern("pattern p() { global(0) }").root
    out = _pass("simplify").apply(root)
    assert torch.equal(dense(out, 6, 2, 1, 1), dense(root, 6, 2, 1, 1))


# ---- bounds --------------------------------------------------------------------------------


def _tile_env(q0, q1, lk, h, H, Hk):
    return {"q0": q0, "q1": q1, "Lk": lk, "h": h, "H": H, "hk": h // (H // Hk), "Hk": Hk}


def _members(seg: bounds.Segment, env: dict, lk: int) -> torch.Tensor:
    """bool [Lk]: the keys of the segment, for this tile and head."""
    keys = torch.arange(lk)
    if not eval_cond(seg.guard, env):
        return torch.zeros(lk, dtype=torch.bool)
    lo, hi = eval_int(seg.lo, env), eval_int(seg.hi, env)
    inside = (keys >= lo) & (keys < hi)
    if seg.strided:
        block, stride, offset = (eval_int(x, env) for x in (seg.block, seg.stride, seg.offset))
        inside &= torch.remainder(torch.div(keys, block, rounding_mode="floor") + offset, stride) == 0
    return inside


def check_tile(segs, m_head, rows, q_off, lk, h, H, Hk, rate=1, what=""):
    """m_head: bool [Lq, Lk] of one head; rows: the query rows of the tile
    (ascending; with rate > 1, one residue class)."""
    if not rows:
        return
    q0, q1 = q_off + rows[0], q_off + rows[-1] + 1
    env = _tile_env(q0, q1, lk, h, H, Hk)
    sub = m_head[rows]  # [n, Lk]
    keys = torch.arange(lk)
    same_class = torch.remainder(keys - q0, rate) == 0
    seen_by_some = sub.any(0)
    seen_by_all = sub.all(0)
    covered = torch.zeros(lk, dtype=torch.bool)
    for j, seg in enumerate(segs):
        members = _members(seg, env, lk)
        covered |= members
        full_lo, full_hi = eval_int(seg.full_lo, env), eval_int(seg.full_hi, env)
        full = members & (keys >= full_lo) & (keys < full_hi) & same_class
        bad = full & ~seen_by_all
        if bad.any():
            key = int(bad.nonzero()[0])
            row = rows[int((~sub[:, key]).nonzero()[0])]
            raise AssertionError(
                f"{what}segment {j} calls key {key} full for the tile q in [{q0}, {q1}) (rows {rows[0]}..{rows[-1]}, "
                f"head {h}, H={H}, Hk={Hk}, Lk={lk}), but query row {row} (position {q_off + row}) does not see "
                f"it\n  {_seg_text(seg)}")
    missed = seen_by_some & ~covered
    if missed.any():
        key = int(missed.nonzero()[0])
        row = rows[int(sub[:, key].nonzero()[0])]
        raise AssertionError(
            f"{what}key {key} is visible to query row {row} (position {q_off + row}) of the tile q in [{q0}, {q1}), "
            f"head {h}, H={H}, Hk={Hk}, Lk={lk}, but lies in no segment:\n  "
            + "\n  ".join(_seg_text(s) for s in segs))


def _seg_text(seg: bounds.Segment) -> str:
    t = lambda n: "None" if n is None else to_text(n)  # noqa: E731
    return (f"Segment(lo={t(seg.lo)}, hi={t(seg.hi)}, full=[{t(seg.full_lo)}, {t(seg.full_hi)}), "
            f"block={t(seg.block)}, stride={t(seg.stride)}, offset={t(seg.offset)}, guard={t(seg.guard)})")


def tiles(q_len: int, size: int, start: int = 0):
    """Consecutive tiles of `size` rows (the last may be shorter), starting at row `start`."""
    return [list(range(r, min(q_len, r + size))) for r in range(start, q_len, size)]


@_MANY
@given(patterns(), shapes(max_len=40, blocks=(4, 8, 16), max_heads=4), st.integers(1, 17), st.integers(0, 16))
@example(ir.Pattern("p", ir.Atom("global", (ir.Const(0),))), dict(q_len=9, kv_len=3, num_heads=1, num_kv_heads=1), 4, 0)
@example(ir.Pattern("p", build.atom("local_blocks", ir.Const(2), ir.Const(4))), dict(q_len=20, kv_len=20, num_heads=1,
                                                                                    num_kv_heads=1), 2, 1)
def test_segments_cover_visible_keys_and_full_is_full(root, shape, size, start):
    """bounds.segments of a whole mask (rate 1), for every head and for the
    tiles of `size` rows starting at row `start` (and single rows)."""
    note(to_text(root))
    lq, lk, H, Hk = _shape_tuple(shape)
    m = dense(root, lq, lk, H, Hk)
    segs = bounds.segments(root.body)
    for h in range(H):
        for n in sorted({1, 2, 16, size}):
            for rows in tiles(lq, n) + tiles(lq, n, min(start, max(lq - 1, 0))):
                check_tile(segs, m[h], rows, lk - lq, lk, h, H, Hk)


@_MANY
@given(st.one_of(atoms(), st.tuples(atoms(), atoms(), st.sampled_from(("union", "inter", "diff")))),
       shapes(max_len=40, blocks=(4, 8, 16), max_heads=4), st.integers(1, 17))
def test_segments_of_atoms_and_pairs(mask, shape, size):
    """The same, aimed at each atom's closed form (and at meet / union of two),
    for query tiles (the forward plan) and key tiles (the transposed plan)."""
    if isinstance(mask, tuple):
        a, b, how = mask
        mask = build.union(a, b) if how == "union" else build.inter(a, b) if how == "inter" else build.diff(a, b)
    note(to_text(mask))
    lq, lk, H, Hk = _shape_tuple(shape)
    m = dense(ir.Pattern("p", mask), lq, lk, H, Hk)
    segs, query_segs = bounds.segments(mask), bounds.segments(mask, transposed=True)
    for h in range(H):
        for n in sorted({1, 2, 3, 16, size}):
            for rows in tiles(lq, n) + tiles(lq, n, n // 2):
                check_tile(segs, m[h], rows, lk - lq, lk, h, H, Hk)
            for cols in tiles(lk, n) + tiles(lk, n, n // 2):
                check_key_tile(query_segs, m[h], cols, lq, lk, h, H, Hk)


def check_key_tile(segs, m_head, cols, lq, lk, h, H, Hk, rate=1, what=""):
    """The transposed check: for the key tile `cols` (ascending; one residue
    class with rate > 1), the query segments must hold every query that sees
    some key of the tile, and their full intervals only queries that see all of
    it. m_head: bool [Lq, Lk] of one head."""
    if not cols:
        return
    k0, k1 = cols[0], cols[-1] + 1
    env = {"k0": k0, "k1": k1, "Lk": lk, "Lq": lq, "h": h, "H": H, "hk": h // (H // Hk), "Hk": Hk}
    off = lk - lq
    pos = torch.arange(off, lk)  # query positions, one per row
    sub = m_head[:, cols]  # [Lq, n]
    sees_some, sees_all = sub.any(1), sub.all(1)
    same_class = torch.remainder(pos - k0, rate) == 0
    covered = torch.zeros(lq, dtype=torch.bool)
    for j, seg in enumerate(segs):
        assert not seg.strided, "a transposed segment is never strided"
        if not eval_cond(seg.guard, env):
            continue
        lo, hi = eval_int(seg.lo, env), eval_int(seg.hi, env)
        members = (pos >= lo) & (pos < hi)
        covered |= members
        full = members & (pos >= eval_int(seg.full_lo, env)) & (pos < eval_int(seg.full_hi, env)) & same_class
        bad = full & ~sees_all
        if bad.any():
            row = int(bad.nonzero()[0])
            key = cols[int((~sub[row]).nonzero()[0])]
            raise AssertionError(
                f"{what}transposed segment {j} calls query row {row} (position {off + row}) full for the key tile "
                f"[{k0}, {k1}) (head {h}, H={H}, Hk={Hk}, Lq={lq}, Lk={lk}), but it does not see key {key}\n  "
                f"{_seg_text(seg)}")
    missed = sees_some & ~covered
    if missed.any():
        row = int(missed.nonzero()[0])
        key = cols[int(sub[row].nonzero()[0])]
        raise AssertionError(
            f"{what}query row {row} (position {off + row}) sees key {key} of the key tile [{k0}, {k1}) (head {h}, "
            f"H={H}, Hk={Hk}, Lq={lq}, Lk={lk}), but lies in no transposed segment:\n  "
            + "\n  ".join(_seg_text(s) for s in segs))


@_MANY
@given(patterns(), shapes(max_len=40, blocks=(4, 8, 16), max_heads=4), st.integers(1, 17), st.integers(0, 16))
@example(ir.Pattern("p", ir.Atom("global", (ir.Const(0),))), dict(q_len=9, kv_len=3, num_heads=1, num_kv_heads=1), 4, 0)
def test_transposed_segments_cover_visible_queries_and_full_is_full(root, shape, size, start):
    note(to_text(root))
    lq, lk, H, Hk = _shape_tuple(shape)
    m = dense(root, lq, lk, H, Hk)
    segs = bounds.segments(root.body, transposed=True)
    for h in range(H):
        for n in sorted({1, 2, 16, size}):
            for cols in tiles(lk, n) + tiles(lk, n, min(start, max(lk - 1, 0))):
                check_key_tile(segs, m[h], cols, lq, lk, h, H, Hk)


def check_plan(root: ir.Pattern, lq, lk, H, Hk, sizes=(16, 5, 2, 1)):
    """The kernel plan of the optimized pattern: for each head, the first branch
    whose condition holds; its segments, for tiles of queries of one residue
    class (plan.rate), and its transposed segments, for tiles of keys of one
    class, against the mask of the original pattern."""
    plan = make_plan(optimize(root))
    m = dense(root, lq, lk, H, Hk)
    off = lk - lq
    for h in range(H):
        env = {"h": h, "H": H, "hk": h // (H // Hk), "Hk": Hk}
        branch = next((b for b in plan.branches if eval_cond(b.cond, env)), None)
        if branch is None:
            assert not m[h].any(), f"head {h} takes no branch of the plan but sees keys"
            continue
        for c in range(plan.rate):
            cls = [r for r in range(lq) if (off + r) % plan.rate == c]
            keys = [k for k in range(lk) if k % plan.rate == c]
            what = f"plan (rate {plan.rate}) branch {to_text(branch.cond)}: "
            for size in sizes:
                for i in range(0, len(cls), size):
                    check_tile(branch.segments, m[h], cls[i:i + size], off, lk, h, H, Hk, plan.rate, what=what)
                for i in range(0, len(keys), size):
                    check_key_tile(branch.query_segments, m[h], keys[i:i + size], lq, lk, h, H, Hk, plan.rate,
                                   what=what)


@_MANY
@given(patterns(), shapes(max_len=40, blocks=(4, 8, 16), max_heads=4))
def test_plan_segments_cover_visible_keys(root, shape):
    note(to_text(root))
    note(to_text(optimize(root)))
    check_plan(root, *_shape_tuple(shape))


@pytest.mark.parametrize("root", SHIPPED_SMALL + SHIPPED)
def test_plan_segments_of_shipped_patterns(root):
    for shape in [(40, 40, 4, 2), (17, 40, 4, 4), (40, 17, 2, 1)]:
        check_plan(root, *shape)


RATE_CASES = [
    "dilated(4, 3)",
    "dilated(5, 2) & causal",
    "dilated(6, 2) & (sink(5) | window(9))",
    "dilated(6, 2) & strided(2, block=4)",
    "dilated(6, 2) & strided(3, block=4, offset=h) & where(k % 3 != 1)",
    "heads[0] => dilated(3, 2); heads[*] => dilated(5, 2) & window(7)",
]


@pytest.mark.parametrize("text", RATE_CASES)
def test_plan_segments_with_residue_layout(text):
    root = sd.compile_pattern(f"pattern p() {{ {text} }}").root
    assert make_plan(optimize(root)).rate > 1
    for shape in [(40, 40, 2, 1), (13, 40, 2, 2), (40, 13, 2, 1)]:
        check_plan(root, *shape, sizes=(16, 3, 1))
