"""Content-addressed cache of generated kernels: in memory, and on disk under
the user's cache directory (SPARSEDSL_CACHE_DIR, else ~/.cache/sparsedsl).
SPARSEDSL_DUMP=dir also writes every generated kernel there."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

_MODULES: dict[str, object] = {}


def cache_dir() -> Path:
    base = os.environ.get("SPARSEDSL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "sparsedsl")
    return Path(base) / "kernels"


def load_source(src: str, stem: str):
    """Import generated source as a module (same source -> same module object)."""
    digest = hashlib.sha256(src.encode()).hexdigest()[:20]
    hit = _MODULES.get(digest)
    if hit is not None:
        return hit
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_{digest}.py"
    if not path.exists() or path.read_text() != src:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(src)
        os.replace(tmp, path)
    dump = os.environ.get("SPARSEDSL_DUMP")
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / path.name).write_text(src)
    name = f"sparsedsl_generated_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _MODULES[digest] = module
    return module
