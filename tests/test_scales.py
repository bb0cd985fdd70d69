"""sparsedsl.testing.pattern_scales and kernel_shapes(scales=...): the lengths the
fuzzer draws come from the pattern's own parameters."""
import pytest

pytest.importorskip("hypothesis")

from hypothesis import find, given, settings  # noqa: E402
from hypothesis.errors import NoSuchExample  # noqa: E402

import sparsedsl  # noqa: E402
from sparsedsl.testing import kernel_shapes, pattern_scales, scale_lengths  # noqa: E402


@pytest.mark.parametrize("source,params,expected", [
    ("streaming_llm", dict(sink=3, window=100), {3, 100}),
    ("pattern c() { causal & chunked(96, 32) }", {}, {96, 32}),
    ("quest", dict(page=8, budget=64), {8, 64}),
    ("pattern s() { causal & strided(12) }", {}, {12}),
])
def test_scales_hold_the_pattern_parameters(source, params, expected):
    p = sparsedsl.compile_pattern(source, **params)
    scales = pattern_scales(p.plan)
    assert expected <= set(scales), scales
    assert list(scales) == sorted(set(scales)) and min(scales) >= 2


def test_scale_lengths_reach_and_cross_each_scale():
    assert scale_lengths((4, 1024), 4096) == (3, 4, 5, 7, 8, 9, 21, 1023, 1024, 1025, 1041, 2047, 2048, 2049)
    assert scale_lengths((1024,), 1030) == (1023, 1024, 1025)
    assert scale_lengths((), 100) == ()


@settings(max_examples=60, deadline=None)
@given(kernel_shapes(max_len=20, scales=(4, 1024), scale_len=2048))
def test_kernel_shapes_with_scales_stay_in_their_lengths(shape):
    allowed = set(scale_lengths((4, 1024), 2048))
    for n in (shape["q_len"], shape["kv_len"]):
        assert n <= 20 or n in allowed
    if shape["kv_len"] > 20:  # a long key sequence: one batch entry and a short query side
        assert shape["batch"] == 1 and shape["q_len"] <= 80


def test_kernel_shapes_with_scales_draw_past_the_window():
    shape = find(kernel_shapes(max_len=20, scales=(4, 1024), scale_len=2048), lambda s: s["kv_len"] > 1025)
    assert shape["kv_len"] in (1041, 2047, 2048)


def test_kernel_shapes_without_scales_stay_short():
    with pytest.raises(NoSuchExample):
        find(kernel_shapes(max_len=20), lambda s: s["kv_len"] > 20, settings=settings(max_examples=200))
