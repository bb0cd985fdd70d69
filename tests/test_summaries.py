"""The block-summary kernel (means, min, max per key block) against the reference's
key_block_stats in float64, and its incremental update. On the GPU when there is
one, else in Triton's interpreter (tests/conftest.py switches it on)."""
import pytest
import torch

from sparsedsl.kernels.summaries import block_stats
from sparsedsl.reference.select import key_block_stats

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _bs(k, block, **kw):
    return block_stats(k.to(DEV), block, **kw)


def _check(k, block, got):
    golden = key_block_stats(k.double(), block)
    same = key_block_stats(k.float(), block)
    for name, g, r, x in zip(("mean", "min", "max"), golden, same, got):
        assert x.dtype == torch.float32 and x.shape == g.shape, name
        assert not x.isnan().any(), name
        err = float((x.double() - g).abs().max()) if g.numel() else 0.0
        ref_err = float((r.double() - g).abs().max()) if g.numel() else 0.0
        assert err <= 4 * ref_err + 1e-6, (name, err, ref_err)


@pytest.mark.parametrize("block", [16, 64, 100, 3])
@pytest.mark.parametrize("lk", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("d", [16, 24])
def test_block_stats_match_reference(block, lk, d):
    """Partial last blocks, a block that is not a power of two, odd head dims."""
    gen = torch.Generator().manual_seed(lk * block + d)
    k = torch.randn(2, 3, lk, d, generator=gen) * 3 + 1
    _check(k, block, [t.cpu() for t in _bs(k, block)])


def test_block_stats_strided_and_nan_padded():
    """A non-contiguous view ([B, L, H, D] transposed) whose padding holds NaN."""
    gen = torch.Generator().manual_seed(1)
    big = torch.full((1, 70, 2, 32), float("nan"))
    big[:, :, :, :24] = torch.randn(1, 70, 2, 24, generator=gen)
    k = big[..., :24].transpose(1, 2)
    _check(k, 16, [t.cpu() for t in _bs(k, 16)])


def test_block_stats_fp16_input():
    gen = torch.Generator().manual_seed(2)
    k = torch.randn(1, 2, 130, 16, generator=gen).half()
    _check(k, 32, [t.cpu() for t in _bs(k, 32)])


def test_incremental_update_after_append():
    """Appending keys: recomputing from the last partial block on equals a full recompute,
    and the blocks before it are left as they were."""
    gen = torch.Generator().manual_seed(3)
    cache = torch.randn(1, 2, 150, 16, generator=gen).to(DEV)
    old = block_stats(cache[:, :, :100], 32)  # blocks 0..3, block 3 partial (4 keys)
    stats = tuple(torch.full((1, 2, 5, 16), 7.0, device=DEV) for _ in range(3))
    for s, o in zip(stats, old):
        s[:, :, :4] = o
    sentinel = stats[0][:, :, :3].clone()
    block_stats(cache, 32, out=stats, first_block=100 // 32)
    assert torch.equal(stats[0][:, :, :3], sentinel)
    _check(cache.cpu(), 32, [t.cpu() for t in stats])


def test_block_stats_bad_out():
    k = torch.randn(1, 1, 40, 16, device=DEV)
    with pytest.raises(ValueError, match="contiguous float32"):
        block_stats(k, 16, out=tuple(torch.empty(1, 1, 2, 16, device=DEV) for _ in range(3)))
