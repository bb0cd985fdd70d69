"""Head grouping merges adjacent per-head branches whose bodies differ only in
integer atom arguments into one branch with head-dependent arguments
(passes/plan.py, merge_alike). The kernels then run one tile loop instead of one
per branch (LongLoRA's shifted chunks: 1.7x faster backward on the H200). The
merged kernels are checked against the float64 reference on Triton's
interpreter, forward and backward, on random branch pairs, and the plan's branch
count against what the merge must (and must not) do."""
from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")
from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsedsl as sd  # noqa: E402
from sparsedsl.atoms import ATOMS  # noqa: E402
from sparsedsl.testing import assert_grads_match_reference, assert_matches_reference, attention_inputs  # noqa: E402
from test_kernels import _interpreter_on  # noqa: E402

LONGLORA = """pattern longlora() {
    heads[0:H // 2] => causal & where(q // 16 == k // 16)
    heads[*] => causal & where((q + 8) // 16 == (k + 8) // 16)
}"""


def _branches(src: str) -> int:
    return len(sd.compile_pattern(src).plan.branches)


def test_longlora_is_one_branch():
    assert _branches(LONGLORA) == 1


@pytest.mark.parametrize("src, expected", [
    # different atoms, or a strided block that the walk needs as a constant: kept apart
    ("pattern p() { heads[0] => window(8)\n heads[*] => sink(4) }", 2),
    ("pattern p() { heads[0] => strided(4, block=8)\n heads[*] => strided(4, block=16) }", 2),
    ("pattern p() { heads[0:2] => causal & window(8)\n heads[*] => causal & window(32) }", 1),
    ("pattern p() { heads[1] => sink(4) | window(8)\n heads[*] => sink(16) | window(8) }", 1),
])
def test_which_branches_merge(src, expected):
    assert _branches(src) == expected


# atoms whose integer arguments the merge may make head-dependent, with argument ranges
_KINDS = ["window", "sink", "chunked", "band", "global", "dilated", "local_blocks"]


@st.composite
def _atom_pair(draw):
    kind = draw(st.sampled_from(_KINDS))
    args = []
    for p in ATOMS[kind].params:
        if p.kind != "int":
            continue
        lo = p.minimum if p.minimum is not None else 0
        args.append((p.name, lo, lo + 12))
    same = draw(st.sets(st.sampled_from([a[0] for a in args])))  # arguments both branches share

    def text():
        vals = {n: draw(st.integers(lo, hi)) for n, lo, hi in args}
        return vals

    first = text()
    second = {n: (first[n] if n in same else v) for n, v in text().items()}
    fmt = lambda vals: f"{kind}({', '.join(f'{n}={v}' for n, v in vals.items())})"  # noqa: E731
    return fmt(first), fmt(second)


@pytest.mark.skipif(not _interpreter_on(), reason="needs the Triton interpreter (tests/conftest.py)")
@settings(max_examples=25, deadline=None)
@given(_atom_pair(), st.sampled_from(["", "causal & "]), st.sampled_from(["0", "1", "0:2", "1:", "-1"]),
       st.sampled_from([(1, 4, 2, 37, 37), (1, 4, 4, 20, 45), (2, 2, 1, 33, 17)]), st.integers(0, 100))
def test_merged_branches_match_reference(pair, prefix, heads, shape, seed):
    src = f"pattern p() {{\n heads[{heads}] => {prefix}{pair[0]}\n heads[*] => {prefix}{pair[1]}\n}}"
    note(src)
    p = sd.compile_pattern(src)
    note(f"branches in the plan: {len(p.plan.branches)}")
    b, h, hk, lq, lk = shape
    q, k, v = attention_inputs(dict(batch=b, num_heads=h, num_kv_heads=hk, q_len=lq, kv_len=lk, head_dim=16,
                                    head_dim_v=16, dtype="float32", layout="contiguous"), seed)
    assert_matches_reference(p, q, k, v, _config=(16, 16))


@pytest.mark.skipif(not _interpreter_on(), reason="needs the Triton interpreter (tests/conftest.py)")
@pytest.mark.parametrize("shape", [(1, 4, 2, 40, 40), (1, 4, 4, 33, 50)])
def test_longlora_gradients_match_reference(shape):
    p = sd.compile_pattern(LONGLORA)
    b, h, hk, lq, lk = shape
    q, k, v = attention_inputs(dict(batch=b, num_heads=h, num_kv_heads=hk, q_len=lq, kv_len=lk, head_dim=16,
                                    head_dim_v=16, dtype="float32", layout="contiguous"), 3)
    assert_matches_reference(p, q, k, v, _config=(16, 16))
    assert_grads_match_reference(p, q, k, v, _config=(16, 16))


def test_decode_split_estimate_sees_every_head_of_a_merged_branch():
    """Decoding picks its split-KV count from the key tiles a query tile visits; a merged branch
    holds the arguments of several heads, so the estimate evaluates each head. At a full cache
    of 16384 keys, window(8192) on heads 1..7 visits 8192 keys = 128 tiles of 64 (head 0's
    window(64): 1 tile), whichever branch comes first."""
    from sparsedsl.kernels.decode import _tiles

    for src in ("pattern p() { heads[0] => window(64)\n heads[*] => window(8192) }",
                "pattern p() { heads[0] => window(8192)\n heads[*] => window(64) }"):
        plan = sd.compile_pattern(src).plan
        assert len(plan.branches) == 1
        assert _tiles(plan, 16384, 1, 64, 8, 8) == 128
