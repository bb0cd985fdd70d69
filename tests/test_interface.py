"""The kernels' named interface (sparsedsl/kernels/interface.py): every generated
kernel's signature is the one its description renders, and a launch whose
arguments miss or misspell a name fails with a clear error before anything runs."""
from __future__ import annotations

import ast

import pytest
import torch

sd = pytest.importorskip("sparsedsl")

from sparsedsl.kernels import interface  # noqa: E402
from sparsedsl.kernels.generate import kernel_source  # noqa: E402
from sparsedsl.kernels.interface import KERNELS, ArgumentError, aot_signature, bind  # noqa: E402

PATTERNS = ["pattern p() { causal & (sink(4) | window(8)) }",
            "pattern p() { heads[0:2] => causal & topk(1, block=16) ; heads[*] => causal & window(5) }",
            "pattern p() { causal & (window(8) | topk(2, block=16) | landmarks(block=8)) }"]


def _functions(src: str) -> dict:
    return {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}


def _do_not_specialize(fn: ast.FunctionDef) -> list[str]:
    (jit,) = [d for d in fn.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func) == "triton.jit"]
    (kw,) = [k for k in jit.keywords if k.arg == "do_not_specialize"]
    return ast.literal_eval(kw.value)


@pytest.mark.parametrize("text", PATTERNS)
@pytest.mark.parametrize("fixed", [True, False])
def test_each_rendered_signature_is_its_description(text, fixed):
    plan = sd.compile_pattern(text).plan
    src, names = kernel_source(plan, text, fixed, 64, 16 if fixed else None)
    fns = _functions(src)
    assert set(names) == set(KERNELS) - ({"dlm"} if plan.landmarks is None else set())
    for kind, name in names.items():
        k, fn = KERNELS[kind], fns[name]
        assert [a.arg for a in fn.args.args] == list(k.names()), kind
        constexprs = [a.arg for a in fn.args.args if a.annotation is not None]
        assert constexprs == list(k.constexprs) and all(
            ast.unparse(a.annotation) == "tl.constexpr" for a in fn.args.args if a.annotation is not None), kind
        assert _do_not_specialize(fn) == k.do_not_specialize, kind
        assert list(aot_signature(kind, "bf16")) == list(k.names())
    # the forward's helper takes the forward's parameters, then its own; both kernels pass them through
    helper = [a.arg for a in fns["_forward_tile"].args.args]
    assert helper == [*KERNELS["fwd"].names(), "GUARD", "pid0", "pid1", "b"]
    calls = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call) and ast.unparse(n.func) == "_forward_tile"]
    assert len(calls) == 2
    for call in calls:
        assert [ast.unparse(a) for a in call.args[:len(helper) - 4]] == list(KERNELS["fwd"].names())


def test_sizes_are_never_specialized():
    # a size of 1 (MQA, decoding) must stay an argument; the guard also takes the forward's grid
    for k in KERNELS.values():
        assert {"H", "Hk", "Lq", "Lk"} <= set(k.do_not_specialize)
    assert KERNELS["guard"].do_not_specialize == ["H", "Hk", "Lq", "Lk", "SPLIT", "Q_POS0", "K_POS0", "SEQ_LQ",
                                                  "SEQ_LK", "GRID0", "GRID1", "GRID2"]
    for kind in ("fwd", "dq", "dkdv"):  # (positions 0 and 1 are common: the default key position is 0)
        assert {"Q_POS0", "K_POS0", "SEQ_LQ", "SEQ_LK"} <= set(KERNELS[kind].do_not_specialize)
    assert "SEL_ROWS" not in KERNELS["dkdv"].do_not_specialize


def _forward_args(drop=(), add=None):
    """A forward launch's tensors and scalars, less the names in `drop`, plus `add` (floats: scalars)."""
    q = torch.zeros(1, 2, 8, 16)
    tensors = dict.fromkeys(KERNELS["fwd"].pointer_names)
    tensors.update(Q=q, K=q, V=q, O=q, LSE=q[..., 0], FLAG=torch.zeros(1, dtype=torch.int32))
    scalars = dict(H=2, Hk=2, Lq=8, Lk=8, SPLIT=1, Q_POS0=0, K_POS0=0, SEQ_LQ=8, SEQ_LK=8, qk_scale=0.5)
    for name in drop:
        tensors.pop(name, None)
        scalars.pop(name, None)
    for name, value in (add or {}).items():
        (scalars if isinstance(value, float) else tensors)[name] = value
    return tensors, scalars


def test_bind_names_every_argument():
    tensors, scalars = _forward_args()
    args = bind("fwd", tensors, scalars, {"BT": (7,)})
    assert set(args) == set(KERNELS["fwd"].runtime_names())
    q = tensors["Q"]
    assert [args[s] for s in ("stride_qb", "stride_qh", "stride_qm", "stride_qd")] == list(q.stride())
    assert [args[s] for s in ("stride_kb", "stride_kh", "stride_kn", "stride_kd", "stride_kp")] == [*q.stride(), 0]
    assert args["stride_btb"] == 7 and args["BT"] is q  # unused (None): Q stands in
    assert all(args[s] == 0 for s in ("stride_sb", "stride_sh", "stride_sr", "stride_sn"))
    assert args["qk_scale"] == 0.5 and args["SPLIT"] == 1
    # a layout (a packed batch: no batch stride) applies to the strides not given explicitly
    args = bind("fwd", tensors, scalars, layout=lambda t: (0, *t.stride()[1:]))
    assert args["stride_qb"] == 0 and args["stride_qh"] == q.stride(1)


@pytest.mark.parametrize("drop,add,message", [
    (["LSE"], None, r"pointers: missing \['LSE'\], unknown none"),
    (["SEL"], {"SELL": None}, r"pointers: missing \['SEL'\], unknown \['SELL'\]"),
    (["qk_scale"], None, r"scalars: missing \['qk_scale'\]"),
    ([], {"sm_scale": 1.0}, r"scalars: missing none, unknown \['sm_scale'\]"),
])
def test_bind_rejects_a_missing_or_misspelled_name(drop, add, message):
    tensors, scalars = _forward_args(drop, add)
    with pytest.raises(ArgumentError, match=r"internal error: the fwd kernel's " + message):
        bind("fwd", tensors, scalars)


def test_bind_rejects_bad_explicit_strides():
    tensors, scalars = _forward_args()
    with pytest.raises(ArgumentError, match=r"explicit strides: missing none, unknown \['FLAG'\]"):
        bind("fwd", tensors, scalars, {"FLAG": (1,)})  # FLAG has no strides
    with pytest.raises(ArgumentError, match=r"the fwd kernel's K takes 5 strides"):
        bind("fwd", tensors, scalars, {"K": (1, 2, 3)})


def test_a_launch_with_a_misspelled_name_fails_before_running(monkeypatch):
    from sparsedsl.kernels import launch

    if not launch.interpreter_ready():
        pytest.skip("needs Triton's interpreter (CPU tensors)")
    plan = sd.compile_pattern("pattern p() { causal }").plan
    q = torch.randn(1, 2, 8, 16)
    run = launch._Launch(plan, q, q, q, True, (16, 16), None)
    common = dict(Q=q, K=q, V=q, DO=q, LSE=q[..., 0], DELTA=q[..., 0], CU_Q=q, CU_K=q, DQ=q, SEL=None, KL=None,
                  VLL=None, O=q, DLSE=None)
    sizes = dict(H=2, Hk=2, Lq=8, Lk=8, qk_scale=1.0, sm_scale=1.0)
    with pytest.raises(ArgumentError, match=r"the dq kernel's pointers: missing \['VL'\], unknown \['VLL'\]"):
        run.run("dq", 8, 2, common, sizes)


def test_aot_signature_types_come_from_the_description():
    sig = aot_signature("dkdv", "bf16")
    assert (sig["Q"], sig["DK"], sig["LSE"], sig["WSK"], sig["INV"], sig["IOFF"]) == \
        ("*bf16", "*bf16", "*fp32", "*fp32", "*i64", "*i32")
    assert (sig["stride_qb"], sig["H"], sig["SEL_ROWS"], sig["qk_scale"], sig["BLOCK_M"]) == \
        ("i32", "i32", "i32", "fp32", "constexpr")
    assert aot_signature("dlm", "fp16")["KL"] == "*fp32"
    assert interface.TUNED == ("BLOCK_M", "BLOCK_N")
