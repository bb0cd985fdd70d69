"""examples/selection_reuse.py on a short CPU run: reusing one layer's top-k selection in the
next layers (TidalDecode) and one step's in the next steps (Recycled Attention) computes fewer
selections and still attends the planted blocks (outputs close to dense attention)."""
from __future__ import annotations

from examples_loader import example_module


def test_selection_reuse_example():
    with example_module("selection_reuse") as mod:
        errors, selections, found = mod.main(["--device", "cpu", "--length", "2048", "--layers", "4",
                                              "--steps", "3"])
    assert selections == {"own": 4, "tidal": 2, "recycled": 1}
    assert all(found.values())
    assert all(e < 0.02 for e in errors.values()), errors  # dense attention's output is ~1.0 on the needles
