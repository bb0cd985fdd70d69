"""Load a script of examples/ (or benchmarks/) as a module (the tests call its functions)."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def example_module(stem: str, folder: str = "examples"):
    """<folder>/<stem>.py as a module, registered in sys.modules while in use."""
    spec = importlib.util.spec_from_file_location(stem, ROOT / folder / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
