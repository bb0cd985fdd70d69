"""Hypothesis profiles for the property tests.

    ci    deterministic (derandomize), ~20 examples a test, no deadline (make test: CI)
    dev   random, ~25 examples a test (the default outside CI)
    long  many examples (make test-long, nightly, by hand)
    gpu   like long, for runs on the lent GPU machine

The profile is HYPOTHESIS_PROFILE when set, else "ci" when CI is set, else "dev":

    CI=1 python -m pytest tests/test_properties.py tests/test_fuzz_parse.py
    HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


# Triton reads TRITON_INTERPRET when it is imported: on a machine without CUDA,
# switch the interpreter on before anything imports triton, so the kernel tests
# (tests/test_kernels.py) run the generated kernels on the CPU.
def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - no torch: nothing runs kernels anyway
        return False


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# tests/naive.py is imported as `naive`.
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property tests skip themselves without hypothesis
    settings = None

if settings is not None:
    _slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile("ci", derandomize=True, max_examples=20, deadline=None, database=None,
                              suppress_health_check=_slow_ok, print_blob=True)
    settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=_slow_ok)
    settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=_slow_ok,
                              print_blob=True)
    settings.register_profile("gpu", parent=settings.get_profile("long"), max_examples=2000)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
