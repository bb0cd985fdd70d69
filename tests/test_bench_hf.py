"""benchmarks/bench_hf.py runs end to end on the CPU at toy sizes (the reference backend
through the integration, sdpa), so the GPU run cannot fail on a typo."""
import pytest
from examples_loader import example_module

pytest.importorskip("transformers")


def test_bench_hf_runs_at_toy_sizes(tmp_path):
    out = tmp_path / "hf.md"
    with example_module("bench_hf", "benchmarks") as bench_hf:
        rows = bench_hf.main(["--lengths", "300", "--new-tokens", "3", "--layers", "2", "--hidden", "64",
                              "--heads", "4", "--kv-heads", "2", "--sink", "4", "--window", "32", "--repeats", "1",
                              "--impls", "sparsedsl-duo", "sdpa", "--out", str(out)])
    assert [r["impl"] for r in rows] == ["sparsedsl-duo", "sdpa"]
    assert all("error" not in r and r["prefill_ms"] > 0 and r["tok_s"] > 0 for r in rows), rows
    text = out.read_text()
    assert "| 0K | sparsedsl-duo |" in text and "| 0K | sdpa |" in text
