"""The Hopper paths of the kernels, run in Triton's interpreter: tiles loaded
through tensor descriptors (kernels/tma.py, forced on with TMA_MODE "1"), the
fused backward (deterministic=False: dQ added atomically by the dK/dV kernel),
and the per-GPU tile table (kernels/tiles.py). Every kernel result is checked
against the float64 reference by the error-ratio rule (sparsedsl.testing)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import sparsedsl as sd  # noqa: E402
from sparsedsl.kernels import launch, tiles, tma  # noqa: E402
from sparsedsl.testing import assert_grads_match_reference, assert_matches_reference  # noqa: E402
from test_kernels import inputs, pytestmark  # noqa: E402,F401

_compiled: dict = {}


def P(body: str) -> sd.CompiledPattern:
    if body not in _compiled:
        _compiled[body] = sd.compile_pattern(f"pattern p() {{ {body} }}")
    return _compiled[body]


@pytest.fixture
def tma_on(monkeypatch):
    """TMA forced on, and a record of each launch's decision {kind: [bool, ...]}."""
    monkeypatch.setattr(tma, "TMA_MODE", "1")
    seen: dict = {}

    def spy(kind, tensors, meta, interpret):
        got = tma.use_tma(kind, tensors, meta, interpret)
        seen.setdefault(kind, []).append(got)
        return got

    monkeypatch.setattr(launch, "use_tma", spy)
    return seen


CASES = [  # body, (B, H, Hk, Lq, Lk, D), tiles
    ("causal", (1, 2, 2, 45, 45, 16), (16, 16)),
    ("causal & chunked(16)", (2, 2, 1, 50, 50, 16), (32, 16)),
    ("causal & (sink(3) | window(11))", (1, 4, 2, 37, 70, 32), (16, 16)),  # GQA, Lq < Lk
    ("window(9)", (1, 2, 2, 40, 40, 16), (16, 32)),  # bidirectional
]


@pytest.mark.parametrize("body,shape,tile", CASES, ids=[c[0] for c in CASES])
def test_tma_loads_match_the_reference(tma_on, body, shape, tile):
    b, h, hk, lq, lk, d = shape
    q, k, v = inputs(b, h, hk, lq, lk, d)
    assert_matches_reference(P(body), q, k, v, _config=tile)
    assert_grads_match_reference(P(body), q, k, v, lse_weight=0.5, _config=tile)
    assert tma_on["fwd"] and all(tma_on["fwd"]) and all(tma_on["dq"]) and all(tma_on["dkdv"])


def _nan_padded_aligned(x: torch.Tensor) -> torch.Tensor:
    """x as a view into a buffer of NaN rows before and after it and NaN columns past its
    head dim, with 16-byte aligned strides (so the descriptors take it)."""
    b, h, n, d = x.shape
    buf = torch.full((b, h, n + 12, d + 8), float("nan"), dtype=x.dtype)
    buf[:, :, 4:4 + n, :d] = x
    return buf[:, :, 4:4 + n, :d]


def test_descriptors_never_read_past_the_rows(tma_on):
    """FAILURE_MODES: out-of-bounds reads. NaN surrounds every row block; a descriptor
    covering more than [0, L) x [0, D) would bring it into the output or the gradients."""
    q, k, v = (_nan_padded_aligned(t) for t in inputs(1, 2, 1, 33, 33, 16))
    p = P("causal & (sink(2) | window(8))")
    assert_matches_reference(p, q, k, v, _config=(16, 16))
    assert_grads_match_reference(p, q, k, v, _config=(16, 16))
    assert all(tma_on["fwd"]) and all(tma_on["dkdv"])


def test_when_the_descriptors_are_not_used(tma_on):
    q, k, v = inputs(1, 2, 2, 40, 40, 16)
    P("dilated(4, 2)")(q, k, v, backend="triton", _config=(16, 16))  # residue classes (RATE 2)
    assert tma_on["fwd"] == [False]
    tma_on.clear()
    q6, k6, v6 = inputs(1, 2, 2, 40, 40, 6)  # odd head dim below its power of two
    P("causal")(q6, k6, v6, backend="triton", _config=(16, 16))
    assert tma_on["fwd"] == [False]
    tma_on.clear()
    cu = torch.tensor([0, 15, 40], dtype=torch.int32)  # a packed batch
    qp, kp, vp = (t[0].transpose(0, 1).contiguous() for t in (q, k, v))
    P("causal")(qp, kp, vp, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=25, max_seqlen_k=25, backend="triton",
                _config=(16, 16))
    assert tma_on["fwd"] == [False]
    meta = dict(RATE=1, VARLEN=0, HEAD_DIM=16, BLOCK_D=16, HEAD_DIM_V=16, BLOCK_DV=16)
    odd = torch.randn(1, 2, 40, 21)[..., :16]  # rows 84 bytes apart: not 16-byte aligned
    assert not tma.use_tma("fwd", dict(K=odd, V=odd), meta, True)
    assert tma.use_tma("fwd", dict(K=k, V=v), meta, True)
    tma.TMA_MODE = "0"
    assert not tma.use_tma("fwd", dict(K=k, V=v), meta, True)
    tma.TMA_MODE = "auto"  # the interpreter, a CPU tensor: never
    assert not tma.use_tma("fwd", dict(K=k, V=v), meta, True)


# ---- the fused backward (deterministic=False) ---------------------------------------------

FUSED = [
    ("causal", (1, 2, 2, 45, 45, 16)),
    ("causal & (sink(4) | window(12))", (2, 4, 2, 50, 50, 16)),  # GQA: two query heads per K/V head
    ("causal & chunked(16)", (1, 2, 1, 30, 47, 16)),  # Lq < Lk
    ("window(7) | sink(2)", (1, 2, 2, 40, 40, 32)),
]


@pytest.mark.parametrize("body,shape", FUSED, ids=[c[0] for c in FUSED])
def test_fused_backward_matches_the_reference(monkeypatch, body, shape):
    taken = []
    real = launch.fused_backward
    monkeypatch.setattr(launch, "fused_backward", lambda *a: taken.append(real(*a)) or taken[-1])
    b, h, hk, lq, lk, d = shape
    q, k, v = inputs(b, h, hk, lq, lk, d)
    assert_grads_match_reference(P(body), q, k, v, lse_weight=0.3, deterministic=False, _config=(16, 16))
    assert taken == [True]


def test_fused_backward_with_descriptors(tma_on):
    q, k, v = inputs(1, 4, 2, 41, 41, 16)
    assert_grads_match_reference(P("causal & (sink(2) | window(9))"), q, k, v, deterministic=False,
                                 _config=(16, 16))
    assert all(tma_on["dkdv"]) and "dq" not in tma_on  # no dQ kernel: the dK/dV kernel made dq


def test_deterministic_is_the_default_and_repeats_bitwise():
    q, k, v = inputs(1, 2, 2, 48, 48, 16)
    p = P("causal & (sink(2) | window(9))")
    runs = []
    for _ in range(2):
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        p(*xs, backend="triton", _config=(16, 16)).sum().backward()
        runs.append([x.grad for x in xs])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_dynamic_patterns_keep_the_dq_kernel(monkeypatch):
    """deterministic=False on a topk pattern: the fused path does not apply (its selected
    blocks have their own dQ steps), and the gradients stay right."""
    taken = []
    real = launch.fused_backward
    monkeypatch.setattr(launch, "fused_backward", lambda *a: taken.append(real(*a)) or taken[-1])
    q, k, v = inputs(1, 2, 2, 48, 48, 16)
    assert_grads_match_reference(P("causal & (window(8) | topk(2, block=16))"), q, k, v, deterministic=False,
                                 _config=(16, 16))
    assert taken == [False]


# ---- the tile table ----------------------------------------------------------------------

def test_tile_table(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(tiles, "_capability", lambda device: (9, 0))
    plan = P("causal").plan
    assert tiles.table_config("fwd", plan, 128, cuda) == tiles.TABLE[(9, 0)]["fwd"][128]
    assert tiles.table_config("dkdv", plan, 256, cuda) == tiles.TABLE[(9, 0)]["dkdv"][256]
    assert tiles.table_config("dlm", plan, 128, cuda) is None  # not in the table: autotuned
    # a strided plan of 16-key blocks: the key tile shrinks until it divides them
    strided = P("strided(4, block=16)").plan
    assert tiles.table_config("fwd", strided, 128, cuda)[1] == 16
    assert tiles.table_config("fwd", plan, 128, torch.device("cpu")) is None
    monkeypatch.setattr(tiles, "_capability", lambda device: (8, 0))  # no table for this GPU
    assert tiles.table_config("fwd", plan, 128, cuda) is None
    monkeypatch.setattr(tiles, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(tiles, "AUTOTUNE", True)
    assert tiles.table_config("fwd", plan, 128, cuda) is None
