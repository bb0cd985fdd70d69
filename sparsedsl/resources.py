"""Where the data folders (grammar/, patterns/, codegen/) are.

In a source checkout they sit beside the package; an installed package carries
them inside itself (pyproject maps them to sparsedsl.grammar etc.).
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    for base in (_HERE / name, _HERE.parent / name):
        if base.is_dir():
            return base
    raise FileNotFoundError(f"sparsedsl data folder {name!r} is missing from the installation")


def library_path(name: str) -> Path:
    """The path of a shipped pattern file, by file name with or without '.attn'."""
    name = name if name.endswith(".attn") else name + ".attn"
    return data_dir("patterns") / Path(name).name
