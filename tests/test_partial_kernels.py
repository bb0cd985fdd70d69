"""Partial attention on the generated kernels (context parallelism's local compute):
queries and keys that are pieces of a longer sequence, at their global positions
(kernels/launch.py Positions), in Triton's interpreter, float32, tiles of 16.

Each case runs `partial_attention(..., backend="triton")` on query and key rows
taken from a sequence of 70 positions, compares out, lse and the gradients of q, k
and v (from a loss with a dlse term) with the float64 reference at the same
positions, and holds the kernels' error to 10 times the float32 reference's
(FlexAttention's rule for float32). The rows are views into buffers of NaN rows,
so that a read outside a piece shows."""
from __future__ import annotations

import pytest
import torch

import sparsedsl as sd
from sparsedsl.distributed.partial import partial_attention
from sparsedsl.kernels import launch, tma
from test_kernels import pytestmark  # noqa: F401 (the interpreter must be on)

L = 70
SCALE = 0.3
SOURCES = {
    "causal": "pattern c() { causal }",
    "sink_window": "pattern sw() { causal & (sink(3) | window(7)) }",
    "chunked": "pattern ch() { causal & chunked(12) }",
    "s2": "pattern s2() { causal & (local_blocks(1, block=16) | strided(3, block=16)) }",  # walked block by block
    "band": "pattern bi() { band(5, 9) | global(2) }",  # bidirectional
    "dilated": "pattern di() { causal & dilated(12, 2) }",  # residue classes (RATE 2)
    "probed": "pattern rb() { causal & (window(5) | random_blocks(1, block=32, seed=2)) }",  # a block probe
}
# (query ranges, key ranges) of the sequence: (start, length) each, rows in this order
PIECES = {
    "overlap": (((20, 25),), ((5, 30),)),
    "same": (((17, 21),), ((17, 21),)),
    "zigzag": (((0, 9), (53, 17)), ((9, 21), (41, 12))),  # two query ranges, two key ranges
    "keys_after": (((3, 20),), ((30, 33),)),  # causal: no query sees a key (lse -inf, out 0)
    "keys_before": (((50, 20),), ((1, 11),)),
}
# (pattern, pieces, (H, Hk)): every pattern and every kind of piece, GQA and MQA among them
CASES = [
    ("causal", "overlap", (2, 2)), ("causal", "zigzag", (2, 2)),
    ("sink_window", "zigzag", (4, 2)), ("sink_window", "keys_after", (2, 2)),
    ("chunked", "keys_before", (2, 1)), ("chunked", "same", (2, 2)),
    ("s2", "overlap", (2, 1)), ("s2", "zigzag", (2, 2)),
    ("band", "keys_after", (2, 1)), ("band", "same", (2, 2)),
    ("dilated", "zigzag", (2, 2)), ("probed", "zigzag", (2, 1)),
]

_patterns: dict = {}


def _pattern(name: str):
    if name not in _patterns:
        _patterns[name] = sd.compile_pattern(SOURCES[name])
    return _patterns[name]


def _sequence(heads, seed: int, dv: int = 12):
    g = torch.Generator().manual_seed(seed)
    h, hk = heads
    q = torch.randn(1, h, L, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, hk, L, 16, generator=g, dtype=torch.float64)
    v = torch.randn(1, hk, L, dv, generator=g, dtype=torch.float64)
    return q, k, v


def _rows(x, ranges, dtype, nan_padded: bool = False):
    """x's rows at `ranges`, in order, as a leaf in `dtype` (nan_padded: a view into a buffer
    with NaN rows before and after them)."""
    rows = torch.cat([x[:, :, s:s + n] for s, n in ranges], dim=2).to(dtype)
    if nan_padded:
        n = rows.shape[2]
        buf = torch.full((*rows.shape[:2], n + 6, rows.shape[3]), float("nan"), dtype=dtype)
        buf[:, :, 3:3 + n] = rows
        rows = buf[:, :, 3:3 + n]
    return rows.requires_grad_()


def _run(p, whole, q_pos, k_pos, dtype, backend, cotangents=None):
    """(out, lse, dq, dk, dv) of the piece, and the cotangents (dout, dlse) used."""
    q, k, v = (_rows(x, r, dtype, backend == "triton") for x, r in zip(whole, (q_pos, k_pos, k_pos)))
    out, lse = partial_attention(p, q, k, v, q_pos, k_pos, SCALE, backend, L)
    if cotangents is None:
        g = torch.Generator().manual_seed(1)
        cotangents = (torch.randn(out.shape, generator=g, dtype=torch.float64),
                      torch.randn(lse.shape, generator=g, dtype=torch.float64))
    dout, dlse = (c.to(out.dtype) for c in cotangents)
    # the loss reads lse where it is finite (a row that sees nothing has lse -inf: no gradient)
    loss = (out * dout).sum() + (torch.where(torch.isfinite(lse), lse, 0) * dlse).sum()
    loss.backward()
    return (out.detach(), lse.detach(), q.grad, k.grad, v.grad), cotangents


def _error(x, golden) -> float:
    finite = torch.isfinite(golden)
    return (x.double() - golden).abs().where(finite, 0).max().item() if x.numel() else 0.0


def _check(p, whole, q_pos, k_pos) -> dict:
    """Compare the kernels with the float64 and float32 references; return the float64 results."""
    golden, cot = _run(p, whole, q_pos, k_pos, torch.float64, "reference")
    ref32, _ = _run(p, whole, q_pos, k_pos, torch.float32, "reference", cot)
    got, _ = _run(p, whole, q_pos, k_pos, torch.float32, "triton", cot)
    for what, a, b, r in zip(("out", "lse", "dq", "dk", "dv"), got, golden, ref32):
        assert a.shape == b.shape and a.dtype == torch.float32, what
        assert not a.isnan().any(), f"{what} has NaN"
        assert torch.equal(torch.isinf(a), torch.isinf(b)), f"{what} is infinite elsewhere"
        err, ref = _error(a, b), _error(r, b)
        assert err <= 10 * ref + 1e-6, f"{what}: the kernels are off by {err:.3g}, the float32 reference by {ref:.3g}"
    return dict(zip(("out", "lse", "dq", "dk", "dv"), golden))


@pytest.mark.parametrize("name,piece,heads", CASES, ids=[f"{n}-{p}" for n, p, _ in CASES])
def test_partial_kernels_match_the_reference_at_global_positions(name, piece, heads):
    q_pos, k_pos = PIECES[piece]
    golden = _check(_pattern(name), _sequence(heads, seed=len(name)), q_pos, k_pos)
    if piece == "keys_after" and name != "band":  # nothing visible: out 0, lse -inf, no gradient
        assert torch.isinf(golden["lse"]).all() and not golden["out"].any() and not golden["dk"].any()
    if piece == "zigzag":  # some rows see keys and some do not
        assert torch.isinf(golden["lse"]).any() and torch.isfinite(golden["lse"]).any()


def test_descriptor_loads_at_global_positions(monkeypatch):
    """The TMA path (forced on in the interpreter, as in tests/test_tma.py): descriptors over a
    piece's rows, loaded at row coordinates u0 - K_POS0 (keys) and u0 - Q_POS0 (queries), from
    pieces that do not start at multiples of the tile; NaN rows around them must not be read."""
    monkeypatch.setattr(tma, "TMA_MODE", "1")
    used = []

    def spy(kind, tensors, meta, interpret):
        used.append(tma.use_tma(kind, tensors, meta, interpret))
        return used[-1]

    monkeypatch.setattr(launch, "use_tma", spy)
    _check(_pattern("s2"), _sequence((2, 1), seed=3, dv=16), *PIECES["zigzag"])
    assert used and all(used)


def test_one_position_range_over_the_whole_sequence_is_plain_attention():
    """Keys [0, L) and queries [L - n, L): the default bottom-right call's rows, bitwise."""
    p = _pattern("sink_window")
    q, k, v = (x.float() for x in _sequence((4, 2), seed=5))
    n = 23
    out, lse = launch.forward(p.plan, q[:, :, L - n:], k, v, SCALE, True)
    got = launch.forward(p.plan, q[:, :, L - n:], k, v, SCALE, True, positions=launch.Positions(L - n, 0, L, L))
    assert torch.equal(out, got[0]) and torch.equal(lse, got[1])


def test_positions_take_dense_batches_and_static_patterns_only():
    q = torch.zeros(1, 1, 8, 16)
    pos = launch.Positions(4, 0, 12, 12)
    with pytest.raises(sd.InputError, match="rows at given positions .context parallelism. take a dense batch and a "
                                            "static pattern"):
        launch.forward(sd.compile_pattern("pattern d() { causal & topk(1, block=4) }").plan, q, q, q, 1.0, True,
                       positions=pos)
    varlen = launch.Varlen(torch.tensor([0, 8], dtype=torch.int32), torch.tensor([0, 8], dtype=torch.int32), 8, 8)
    with pytest.raises(sd.InputError, match="dense batch"):
        launch.forward(_pattern("causal").plan, q, q, q, 1.0, True, varlen=varlen, positions=pos)
    with pytest.raises(sd.InputError, match=r"8 query rows from position 6 and 8 key rows from 0 do not lie in a "
                                            r"sequence of 12 queries \(positions \[0, 12\)\) and 12 keys"):
        launch.forward(_pattern("causal").plan, q, q, q, 1.0, True, positions=launch.Positions(6, 0, 12, 12))
