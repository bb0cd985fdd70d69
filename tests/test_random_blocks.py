"""random_blocks(n, block=b, seed=s): BigBird's random key blocks, exactly min(n, qb + 1) per
query block, against the independent tests/naive.py (written from docs/language.md), on the
reference, the kernels (interpreter; a block probe walks only the chosen tiles), the cost walk
and the FlexAttention export."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import sparsedsl as sd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import naive  # noqa: E402


def _blocks(m: torch.Tensor, block: int) -> torch.Tensor:
    """[H, query blocks, key blocks]: whether a block pair holds a visible pair."""
    h, lq, lk = m.shape
    nq, nk = -(-lq // block), -(-lk // block)
    pad = torch.zeros(h, nq * block, nk * block, dtype=torch.bool)
    pad[:, :lq, :lk] = m
    return pad.view(h, nq, block, nk, block).any(4).any(2)


@pytest.mark.parametrize("n,block,seed", [(3, 32, 0), (1, 8, 5), (4, 16, -77), (50, 4, 1)])
def test_exactly_n_blocks_per_query_block_as_the_naive_definition(n, block, seed):
    p = sd.compile_pattern(f"pattern r() {{ random_blocks({n}, block={block}, seed={seed}) }}")
    lq = lk = 12 * block + 5
    m = p.mask(lq, num_heads=3)
    want = torch.tensor(naive.dense(p.root, lq, lk, 3), dtype=torch.bool)
    assert torch.equal(m, want)
    b = _blocks(m, block)
    for qb in range(b.shape[1]):
        assert b[:, qb].sum(-1).tolist() == [min(n, qb + 1)] * 3, qb  # exactly, per head
        assert not b[:, qb, qb + 1:].any()  # blocks at or before the query's block
    assert not torch.equal(b[0], b[1]) or n >= 12  # the heads differ
    other = sd.compile_pattern(f"pattern r() {{ random_blocks({n}, block={block}, seed={seed + 1}) }}")
    assert not torch.equal(other.mask(lq, num_heads=3), m) or n >= 12  # the seed matters


def test_the_choice_does_not_depend_on_the_length():
    p = sd.compile_pattern("pattern r() { causal & random_blocks(2, block=32) }")
    short, long = p.mask(300, num_heads=2), p.mask(900, num_heads=2)
    assert torch.equal(long[:, :300, :300], short)


def test_a_probe_walks_only_the_chosen_tiles():
    p = sd.compile_pattern("pattern bb() { causal & (window(64) | random_blocks(3, block=64)) }")
    assert p.plan.branches[0].segments[-1].probe
    rep = p.cost(8192, tile=(64, 64))
    assert rep.ratio == 1.0 and rep.probed > 0  # visited = needed: the tiles of chosen blocks only


def _interpreter_on() -> bool:
    try:
        from sparsedsl.kernels.launch import interpreter_ready
    except ImportError:
        return False
    return interpreter_ready()


@pytest.mark.skipif(not _interpreter_on(), reason="needs Triton's interpreter (tests/conftest.py)")
@pytest.mark.parametrize("body", ["causal & random_blocks(3, block=32, seed=3)",
                                  "random_blocks(2, block=8) | sink(4)",
                                  "causal & (window(40) | random_blocks(2, block=32, seed=h))"])
def test_kernels_match_the_reference(body):
    from sparsedsl.testing import assert_grads_match_reference, assert_matches_reference, attention_inputs

    p = sd.compile_pattern(f"pattern r() {{ {body} }}")
    for lq, lk, config in ((150, 150, (16, 16)), (70, 200, (32, 64))):
        shape = dict(batch=1, num_heads=2, num_kv_heads=1, q_len=lq, kv_len=lk, head_dim=16, head_dim_v=16,
                     dtype="float32", layout="contiguous")
        q, k, v = attention_inputs(shape, lq)
        assert_matches_reference(p, q, k, v, _config=config)
    assert_grads_match_reference(p, q, k, v, _config=(16, 16))


def test_flex_mask_mod_is_the_mask():
    p = sd.compile_pattern("pattern r() { causal & random_blocks(3, block=32, seed=9) }")
    from sparsedsl.runtime.flex import mask_mod

    mod = mask_mod(p.root, 200, 200, 2, 2)
    q, k = torch.arange(200).view(-1, 1), torch.arange(200).view(1, -1)
    for h in range(2):
        assert torch.equal(mod(0, torch.tensor(h), q, k), p.mask(200, num_heads=2)[h])
