"""`sparsedsl fuzz`: a passing run exits 0 with a summary; a broken kernel is
caught, shrunk, and printed as a ready-to-paste pytest test (exit 1)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("hypothesis")

import sparsedsl  # noqa: E402
from sparsedsl import fuzz  # noqa: E402
from sparsedsl.cli import main  # noqa: E402


def _interpreter_on() -> bool:
    try:
        from sparsedsl.kernels.launch import interpreter_ready
    except ImportError:  # pragma: no cover - no triton
        return False
    return torch.cuda.is_available() or interpreter_ready()


needs_kernels = pytest.mark.skipif(not _interpreter_on(), reason="needs CUDA or TRITON_INTERPRET=1 (tests/conftest.py)")
ROOT = Path(__file__).resolve().parents[1]


@needs_kernels
def test_fuzz_shipped_pattern_passes(capsys):
    rc = main(["fuzz", "streaming_llm", "-p", "sink=2", "-p", "window=8", "--examples", "3", "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 examples match the float64 reference" in out
    assert "streaming_llm" in out


class _Broken:
    """A compiled pattern whose kernel output is off in the last query row."""

    def __init__(self, p):
        self._p = p

    def __getattr__(self, name):
        return getattr(self._p, name)

    def __call__(self, q, k, v, **kwargs):
        out, lse = self._p(q, k, v, **kwargs)
        out = out.clone()
        out[:, :, -1:] += 0.25
        return out, lse


@needs_kernels
def test_fuzz_broken_kernel_prints_a_pytest_reproducer(capsys):
    p = sparsedsl.compile_pattern("streaming_llm", sink=2, window=8)
    rc = fuzz.run(_Broken(p), examples=5, seed=0, source="streaming_llm", params={"sink": 2, "window": 8})
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED" in out and "output mean abs error" in out
    test = out[out.index("import os"):]
    assert "def test_" in test
    assert "assert_matches_reference(" in test and "attention_inputs(shape, seed=" in test
    # Shrunk: the smallest shape that shows the bug.
    assert "'batch': 1" in test and "'q_len': 1," in test
    # The printed test is valid Python, and with the real kernel it passes.
    scope: dict = {}
    exec(compile(test, "<reproducer>", "exec"), scope)
    name = next(n for n in scope if n.startswith("test_"))
    scope[name]()


@needs_kernels
def test_fuzz_default_run_reaches_the_window_and_says_what_it_covered(capsys):
    # streaming_llm's defaults: sink 4, window 1024. Lengths of a few tiles never reach the window's edge.
    rc = main(["fuzz", "streaming_llm"])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = re.search(r"lengths 1\.\.(\d+) \(the pattern's scales: 4, 1024;", out)
    assert m and int(m.group(1)) > 1024, out
    m = re.search(r"covered: forward tiles (\d+) full \(no mask\) and (\d+) partial \(masked\)", out)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, out
    assert "query rows see no key" in out and "note:" not in out


def _window_plan_off_by_one(monkeypatch):
    """streaming_llm (window 1024) whose kernels run the plan of window 1025: one more
    key (q - 1024) per row, which only a query with more than 1028 keys before it shows."""
    from sparsedsl.runtime import ops

    p = sparsedsl.compile_pattern("streaming_llm")
    monkeypatch.setitem(ops._PLANS, p.root, sparsedsl.compile_pattern("streaming_llm", window=1025).plan)
    return p


@needs_kernels
def test_fuzz_default_run_catches_a_broken_window_plan(monkeypatch, capsys):
    p = _window_plan_off_by_one(monkeypatch)
    assert fuzz.run(p, examples=20, max_len=49) == 0  # short sequences only: the bug stays hidden
    capsys.readouterr()
    assert fuzz.run(p, source="streaming_llm") == 1  # the defaults: lengths around the plan's scales
    out = capsys.readouterr().out
    assert "FAILED" in out
    kv_len = int(re.search(r"'kv_len': (\d+)", out).group(1))
    assert kv_len > 1028, out


@needs_kernels
def test_fuzz_dynamic_pattern_on_triton(capsys):
    rc = main(["fuzz", "quest", "-p", "budget=8", "-p", "page=4", "--examples", "4"])
    assert rc == 0, capsys.readouterr()


def test_fuzz_reference_backend_dynamic_pattern(capsys):
    rc = main(["fuzz", "quest", "-p", "budget=8", "-p", "page=4", "--backend", "reference", "--examples", "3"])
    assert rc == 0, capsys.readouterr()


@needs_kernels
def test_fuzz_command_switches_the_interpreter_on_by_itself():
    if torch.cuda.is_available():
        pytest.skip("the interpreter is only switched on without CUDA")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "sparsedsl", "fuzz", "pattern c() { causal & window(5) }",
                        "--examples", "2"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 examples match" in r.stdout


def test_fuzz_without_hypothesis_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # `import hypothesis` raises ImportError
    assert main(["fuzz", "streaming_llm", "--examples", "1"]) == 1
    assert "needs hypothesis" in capsys.readouterr().err


# ---- assert_matches_reference itself: it must catch each kind of wrong result ----------------

from sparsedsl.testing import assert_matches_reference, attention_inputs  # noqa: E402


class _Tampered:
    """The reference backend with its result changed by `fn(out, lse)`."""

    def __init__(self, p, fn):
        self._p, self._fn = p, fn

    def __getattr__(self, name):
        return getattr(self._p, name)

    def __call__(self, q, k, v, **kwargs):
        out, lse = self._p(q, k, v, **kwargs)
        return self._fn(out.clone(), lse.clone())


def _case(dtype="float32"):
    p = sparsedsl.compile_pattern("pattern p() { causal & window(4) }")
    shape = dict(batch=1, num_heads=2, num_kv_heads=1, q_len=12, kv_len=9, head_dim=16, head_dim_v=8,
                 dtype=dtype, layout="contiguous")
    return p, attention_inputs(shape, seed=0)  # rows 0..2 sit at negative positions: they see nothing


def _set(fn):
    def apply(out, lse):
        fn(out, lse)
        return out, lse
    return apply


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_checker_accepts_the_reference(dtype):
    p, (q, k, v) = _case(dtype)
    assert_matches_reference(p, q, k, v, backend="reference")


@pytest.mark.parametrize("what,fn,message", [
    ("nan output", _set(lambda o, l: o[0, 1, 5, 0].fill_(float("nan"))), "NaN"),
    ("nan lse", _set(lambda o, l: l[0, 0, 7].fill_(float("nan"))), "NaN"),
    ("empty row with finite lse", _set(lambda o, l: l[0, 0, 1].fill_(0.0)), "LSE -inf pattern"),
    ("seen row with -inf lse", _set(lambda o, l: l[0, 1, 6].fill_(float("-inf"))), "LSE -inf pattern"),
    ("empty row with output", _set(lambda o, l: o[0, 0, 2].fill_(1e-3)), "exactly 0"),
    ("inf output", _set(lambda o, l: o[0, 0, 8, 3].fill_(float("inf"))), "non-finite"),
    ("one wrong element", _set(lambda o, l: o[0, 1, 11, 2].add_(0.02)),
     r"output mean abs error(.|\n)*rows of \[b=0, h=1\] off by more than [0-9.e+-]*: \[11\]"),
    ("slightly wrong everywhere", _set(lambda o, l: o.mul_(1.001)), "abs error"),
    ("lse off", _set(lambda o, l: l[0, 0, 4].add_(1e-3)),
     r"lse mean abs error(.|\n)*rows of \[b=0, h=0\] off by more than [0-9.e+-]*: \[4\]"),
    ("output shape", lambda o, l: (o[:, :, :-1], l), "expected"),
    ("output dtype", lambda o, l: (o.double(), l), "expected"),
])
def test_checker_catches(what, fn, message):
    p, (q, k, v) = _case()
    with pytest.raises(AssertionError, match=message) as info:
        assert_matches_reference(_Tampered(p, fn), q, k, v, backend="reference")
    report = str(info.value)
    assert "q [1, 2, 12, 16]" in report and "causal & window(4)" in report
