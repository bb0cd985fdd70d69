"""A long-running process that compiles patterns per request must not grow:
the op registry, the kernel plans and the generated kernel modules are freed
with the patterns that use them (or bounded)."""
from __future__ import annotations

import gc
import sys

import pytest
import torch

import sparsedsl as sd
from sparsedsl.ir import nodes as ir
from sparsedsl.kernels import cache, launch
from sparsedsl.runtime import ops

# What the caches may hold beyond the patterns alive before a test (other tests' patterns die
# at their own pace; 2,000 dropped patterns must not stay).
SLACK = 50


def _drop(n: int, run=None) -> None:
    for i in range(n):
        p = sd.compile_pattern(sd.causal & sd.window(100_000 + i))
        if run is not None:
            run(p)
    del p
    gc.collect()


def test_dropped_patterns_leave_the_op_registry():
    alive = sd.compile_pattern(sd.causal & sd.sink(3) & sd.window(7))
    gc.collect()
    keys, nodes = len(ops._PATTERNS), len(ir.Node._table)
    _drop(2000)
    assert len(ops._PATTERNS) <= keys + SLACK and len(ops._KEYS) <= keys + SLACK
    assert len(ir.Node._table) <= nodes + SLACK  # the IR of a dropped pattern is freed too
    assert ops._PATTERNS[alive._op_key] is alive.root  # a pattern still alive keeps its key
    assert ops.pattern_key(alive.root) == alive._op_key


def test_op_keys_are_never_reused():
    first = sd.compile_pattern(sd.window(200_001))._op_key
    gc.collect()
    second = sd.compile_pattern(sd.window(200_002))._op_key
    assert first != second


def test_a_freed_key_is_a_clear_error():
    key = sd.compile_pattern(sd.window(300_001))._op_key
    gc.collect()
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(sd.InputError, match="no longer alive"):
        ops.attention(q, q, q, key, 1.0, None, None, 0, 0, [16, 16], None, False)


def test_dropped_patterns_leave_the_plan_caches():
    gc.collect()
    before = len(ops._PLANS)
    _drop(200, lambda p: p.plan)
    assert len(ops._PLANS) <= before + SLACK


def test_kernel_modules_are_bounded_and_shared_while_alive(monkeypatch):
    monkeypatch.setenv("SPARSEDSL_CACHE_DIR", "off")
    held = cache.load_source("X = -1\n", "held")
    modules = len(sys.modules)
    alive = len(cache._MODULES)  # (earlier tests' patterns may still hold their kernels)
    for i in range(cache.MAX_MODULES + 100):
        assert cache.load_source(f"X = {i}\n", "gen").X == i
    gc.collect()
    assert len(sys.modules) == modules  # generated modules are not imported modules
    assert len(cache._MODULES) <= alive + cache.MAX_MODULES + SLACK
    assert cache.load_source("X = -1\n", "held") is held  # same source -> same module while in use


def _interpreter_on() -> bool:
    try:
        return launch.interpreter_ready()
    except ImportError:  # no triton
        return False


@pytest.mark.skipif(not _interpreter_on(), reason="kernels on CPU tensors need TRITON_INTERPRET=1 (conftest.py)")
def test_patterns_run_on_the_kernels_are_freed(monkeypatch, tmp_path):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import _triton_jit_function_registry as registry

    monkeypatch.setenv("SPARSEDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "MAX_MODULES", 0)  # keep only the modules in use
    q = torch.randn(1, 1, 16, 16)
    alive = sd.compile_pattern(sd.causal & sd.window(5))
    ref = alive(q, q, q, backend="reference")
    alive(q, q, q, backend="triton", _config=(16, 16))
    gc.collect()
    sizes = len(sys.modules), len(launch._KERNELS), len(cache._MODULES), len(registry), \
        len(InterpretedFunction.rewritten_fn)
    _drop(3, lambda p: p(q, q, q, backend="triton", _config=(16, 16)))
    # nor does Triton keep the dropped kernels (its registry of @jit functions, the interpreter's rewrites)
    now = len(sys.modules), len(launch._KERNELS), len(cache._MODULES), len(registry), \
        len(InterpretedFunction.rewritten_fn)
    assert all(a <= b for a, b in zip(now, sizes)), (now, sizes)
    torch.testing.assert_close(alive(q, q, q, backend="triton", _config=(16, 16)), ref)


@pytest.mark.skipif(not _interpreter_on(), reason="kernels on CPU tensors need TRITON_INTERPRET=1 (conftest.py)")
def test_backward_after_the_pattern_was_dropped():
    q = torch.randn(1, 1, 16, 16, requires_grad=True)
    out = sd.compile_pattern(sd.causal & sd.window(9))(q, q, q, backend="triton", _config=(16, 16))
    gc.collect()  # nothing holds the pattern now but the autograd graph
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
