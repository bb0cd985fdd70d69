"""examples/train_tiny.py on the CPU: training through sparsedsl attention follows
the dense-SDPA-with-the-same-mask run step for step, and the model learns."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sparsedsl
from examples_loader import example_module


@pytest.fixture(scope="module")
def example():
    with example_module("train_tiny") as module:
        yield module


@pytest.fixture(scope="module")
def run(example):
    # 40 steps of the copy task at L = 32 (copy distance 16; the default pattern
    # is causal & (sink(4) | window(17))): a few seconds on one CPU thread. One
    # thread, as the example's main() uses: with more, torch's thread pool slows
    # down about 10x whenever other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return example.train(40, 32, device="cpu", seed=0, quiet=True)
    finally:
        torch.set_num_threads(threads)


# Both runs compute exact attention in float32 under the same mask; they differ
# only in the order of floating-point operations. Measured over seeds 0-5: at
# most 2.9e-7 relative (4.8e-7 absolute, a few float32 ulps at a loss of ~2.9),
# with no growth over the 40 steps. 1e-4 leaves a wide margin for other CPUs
# and BLAS builds, and is still far below what a wrong mask does: a baseline
# mask off by one diagonal (window 16 against 17) is 2.8e-4 apart at step 1 and
# 1e-2 apart by step 10.
RTOL = 1e-4


def test_losses_are_finite(run):
    assert len(run.sparse_loss) == len(run.dense_loss) == 40
    assert all(math.isfinite(x) for x in run.sparse_loss + run.dense_loss)


def test_sparsedsl_curve_matches_dense_sdpa(run):
    worst = max(abs(a - b) / abs(b) for a, b in zip(run.sparse_loss, run.dense_loss))
    assert worst <= RTOL, f"loss curves differ by {worst:.2e} relative (tolerance {RTOL})"
    assert run.sparse_acc == pytest.approx(run.dense_acc, abs=1e-3)


def test_model_learns(run):
    # Chance is log(15) = 2.71 nats; the first loss is ~2.94 (random init).
    # Measured: the last 10 steps average 0.76 at seed 0 (0.76-1.34 over seeds
    # 0-5), and held-out accuracy is 99.6% (95-99.9%). Require half the
    # first loss and 50% accuracy (chance is 6.7%).
    first, last = run.sparse_loss[0], sum(run.sparse_loss[-10:]) / 10
    assert last < 0.5 * first, f"loss went from {first:.3f} to {last:.3f} (mean of the last 10 steps)"
    assert run.sparse_acc > 0.5


def test_main_runs(example, capsys):
    threads = torch.get_num_threads()  # main() sets one thread on the CPU: restore it for the other tests
    try:
        assert example.main(["--device", "cpu", "--steps", "3", "--seq-len", "16", "--every", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "window(9)" in out and "max |difference|" in out and "copy accuracy" in out


@pytest.mark.parametrize("source, params, h, hk, length", [
    ("streaming_llm", dict(sink=2, window=5), 4, 4, 37),
    ("streaming_llm", dict(sink=1, window=9), 4, 2, 50),           # GQA: 2 query heads per KV head
    ("s2_attention", dict(block=4, local=2, stride=3), 4, 4, 29),  # head-dependent strided blocks
])
def test_gradients_match_sdpa(source, params, h, hk, length):
    """The anchor: d(attention)/d(q, k, v) of sparsedsl equals SDPA's with the dense mask in float64
    (measured: at most 2.4e-15 apart on these cases)."""
    name = "s2_attention" if source == "s2_attention" else None
    p = sparsedsl.compile_pattern(source, pattern=name, **params)
    mask = p.mask(length, num_heads=h, num_kv_heads=hk)
    assert mask.any(-1).all()  # no query without a key (SDPA would give NaN there)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, h, length, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, hk, length, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, hk, length, 8, generator=g, dtype=torch.float64)
    grad_out = torch.randn(2, h, length, 8, generator=g, dtype=torch.float64)

    def grads(attend):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = attend(*leaves)
        out.backward(grad_out)
        return [out.detach()] + [t.grad for t in leaves]

    ours = grads(p)
    rep = h // hk
    theirs = grads(lambda q_, k_, v_: F.scaled_dot_product_attention(
        q_, k_.repeat_interleave(rep, 1), v_.repeat_interleave(rep, 1), attn_mask=mask))
    for what, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{what}: {m}")
