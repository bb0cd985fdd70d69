"""examples/hf_generate.py on the CPU: with a window at least as long as the sequence,
StreamingLLM on every layer generates the model's own tokens (dynamic and static cache);
with a short window on half the layers (DuoAttention-like), the tokens change."""
from __future__ import annotations

import pytest
import torch
from examples_loader import example_module

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def example():
    with example_module("hf_generate") as module:
        yield module


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_window_past_the_sequence_generates_the_models_tokens(example, cache):
    own, ours = example.main(["--backend", "reference", "--window", "64", "--cache", cache])
    assert own.shape == (1, 16) and torch.equal(own, ours)


def test_a_short_window_on_half_the_layers_changes_the_tokens(example):
    own, ours = example.main(["--backend", "reference", "--window", "8", "--pattern", "duo"])
    assert not torch.equal(own, ours)
