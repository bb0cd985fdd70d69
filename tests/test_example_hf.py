"""examples/hf_generate.py on the CPU: with a window at least as long as the sequence,
StreamingLLM on every layer generates the model's own tokens (dynamic and static cache);
with a short window on half the layers (DuoAttention-like), the tokens change."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("hf_generate", ROOT / "examples" / "hf_generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_window_past_the_sequence_generates_the_models_tokens(example, cache):
    own, ours = example.main(["--backend", "reference", "--window", "64", "--cache", cache])
    assert own.shape == (1, 16) and torch.equal(own, ours)


def test_a_short_window_on_half_the_layers_changes_the_tokens(example):
    own, ours = example.main(["--backend", "reference", "--window", "8", "--pattern", "duo"])
    assert not torch.equal(own, ours)
