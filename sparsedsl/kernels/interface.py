"""The generated kernels' arguments, described once by name.

Each kernel kind (fwd, guard, dq, dkdv, dlm) takes pointers (each with the
names of its stride arguments, its stride group), int and float scalars and
constexprs. This description renders the kernels' signatures in the templates
(codegen/macros.jinja), binds a launch's arguments by name (`bind`: the
launches call the kernels by keyword) and gives the ahead-of-time signature
(`aot_signature`)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

DATA = "data"  # a pointer to the inputs' dtype (bf16, fp16, fp32)
TUNED = ("BLOCK_M", "BLOCK_N")  # the constexprs an autotuned kernel's configs set


@dataclass(frozen=True)
class Pointer:
    """A tensor argument: its element type (DATA, i32, i64, fp32) and stride arguments."""

    name: str
    dtype: str = DATA
    strides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scalar:
    """An int (i32) or float (fp32) argument. Sizes are never specialized (a size of 1,
    MQA or decoding, stays a tensor for the helpers); `specialize` lets Triton do so."""

    name: str
    dtype: str = "i32"
    specialize: bool = False


@dataclass(frozen=True)
class Kernel:
    """One kernel kind's parameters, in signature order: pointers, their stride groups,
    scalars, constexprs."""

    kind: str
    pointers: tuple[Pointer, ...]
    scalars: tuple[Scalar, ...]
    constexprs: tuple[str, ...]

    @property
    def pointer_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pointers)

    @property
    def stride_groups(self) -> tuple[tuple[str, ...], ...]:
        return tuple(p.strides for p in self.pointers if p.strides)

    @property
    def scalar_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scalars)

    @property
    def do_not_specialize(self) -> list[str]:
        return [s.name for s in self.scalars if s.dtype == "i32" and not s.specialize]

    @property
    def float_names(self) -> tuple[str, ...]:
        """The fp32 scalars: cast on entry, since torch.compile may pass a float as fp64."""
        return tuple(s.name for s in self.scalars if s.dtype == "fp32")

    def runtime_names(self) -> tuple[str, ...]:
        """Every parameter but the constexprs, in signature order."""
        return self.pointer_names + sum(self.stride_groups, ()) + self.scalar_names

    def names(self) -> tuple[str, ...]:
        return self.runtime_names() + self.constexprs


def _sizes(*more: str) -> tuple[Scalar, ...]:
    return tuple(Scalar(n) for n in ("H", "Hk", "Lq", "Lk", *more))


def _strides(stem: str, axes: str) -> tuple[str, ...]:
    """stride_{stem}{axis} for each axis letter: the stride group of a tensor."""
    return tuple(f"stride_{stem}{a}" for a in axes)


_Q = Pointer("Q", DATA, _strides("q", "bhmd"))
_DO = Pointer("DO", DATA, _strides("do", "bhmd"))
_LSE = Pointer("LSE", "fp32", _strides("l", "bhm"))
_CU = (Pointer("CU_Q", "i32"), Pointer("CU_K", "i32"))
_LANDMARKS = (Pointer("KL", "fp32", _strides("kl", "bhnd")), Pointer("VL", "fp32", _strides("vl", "bhnd")))
_SEL = Pointer("SEL", "i32", _strides("s", "bhrn"))
_PREFIX = (Pointer("PK", "fp32", _strides("pk", "bhnd")), Pointer("PV", "fp32", _strides("pv", "bhnd")))
_DELTA = Pointer("DELTA", "fp32")  # LSE's strides; the dQ kernel writes it (from O, dO and dLSE)
_LANDMARK_GRADS = (Pointer("DKL", "fp32"), Pointer("DVL", "fp32"))  # contiguous
_QK_SCALE, _SM_SCALE = Scalar("qk_scale", "fp32"), Scalar("sm_scale", "fp32")
# a dense batch's positions (kernels/launch.py Positions): query row 0's and key row 0's, and the values
# of the plan's symbols Lq and Lk (the whole sequence's query and key counts)
_POSITIONS = tuple(Scalar(n) for n in ("Q_POS0", "K_POS0", "SEQ_LQ", "SEQ_LK"))
_SHAPES = ("HEAD_DIM", "HEAD_DIM_V", "BLOCK_D", "BLOCK_DV")
_PLAN = (*_SHAPES, "RATE", "WIDE", "DOT_PRECISION", "VARLEN", "SHARD")  # SHARD: rows at the launch's positions

FWD = Kernel(
    "fwd",
    (_Q, Pointer("K", DATA, _strides("k", "bhndp")), Pointer("V", DATA, _strides("v", "bhndp")),
     Pointer("O", DATA, _strides("o", "bhmdp")), Pointer("LSE", "fp32", _strides("l", "bhmp")),
     Pointer("FLAG", "i32"), *_CU, Pointer("BT", "i32", ("stride_btb",)), _SEL, *_LANDMARKS, *_PREFIX),
    (*_sizes("SPLIT"), *_POSITIONS, _QK_SCALE),
    (*_PLAN, "PAGE", "TMA", *TUNED))
GUARD = replace(FWD, kind="guard", scalars=FWD.scalars + tuple(Scalar(f"GRID{i}") for i in range(3)))
_BWD = (_Q, Pointer("K", DATA, _strides("k", "bhnd")), Pointer("V", DATA, _strides("v", "bhnd")), _DO, _LSE, _DELTA)
DQ = Kernel("dq", (*_BWD, Pointer("DQ"), *_CU, _SEL, *_LANDMARKS, Pointer("O", DATA, _strides("o", "bhmd")),
                  Pointer("DLSE", "fp32", _strides("dl", "bhm"))),
            (*_sizes(), *_POSITIONS, _QK_SCALE, _SM_SCALE), (*_PLAN, "TMA", "HAS_DLSE", *TUNED))  # DQ: Q's strides
DKDV = Kernel(
    "dkdv",
    (*_BWD, Pointer("DK", DATA, _strides("dk", "bhnd")), Pointer("DV", DATA, _strides("dv", "bhnd")),
     Pointer("WSK", "fp32"), Pointer("WSV", "fp32"), *_CU,
     Pointer("INV", "i64", _strides("i", "bh")), Pointer("IOFF", "i32", _strides("io", "bh")), *_LANDMARK_GRADS,
     Pointer("DQA", "fp32")),
    (*_sizes(), *_POSITIONS, _QK_SCALE, _SM_SCALE, Scalar("LONG_KEYS"), Scalar("SPLIT"),
     Scalar("SEL_ROWS", specialize=True), Scalar("NL", specialize=True)),
    (*_PLAN, "GROUP", "TMA", "DQ_ATOMIC", *TUNED))  # GROUP: H // Hk; TMA: kernels/tma.py; DQA: contiguous
DLM = Kernel(
    "dlm",
    (_Q, *_LANDMARKS, _DO, _LSE, _DELTA, *_LANDMARK_GRADS, *_CU),
    (*_sizes("NL", "SPLIT"), _QK_SCALE),
    (*_SHAPES, "WIDE", "DOT_PRECISION", "VARLEN", *TUNED))
KERNELS = MappingProxyType({k.kind: k for k in (FWD, GUARD, DQ, DKDV, DLM)})


class ArgumentError(RuntimeError):
    """A launch whose arguments do not match its kernel's description (an internal error)."""


def _check(kind: str, what: str, given, wanted, subset: bool = False) -> None:
    missing = [] if subset else [n for n in wanted if n not in given]
    unknown = [n for n in given if n not in wanted]
    if missing or unknown:
        raise ArgumentError(f"internal error: the {kind} kernel's {what}: missing {missing or 'none'}, "
                            f"unknown {unknown or 'none'}")


def bind(kind: str, tensors: dict, scalars: dict, strides: dict | None = None, layout=None) -> dict:
    """The keyword arguments of a `kind` kernel launch, all but the constexprs. `tensors`:
    every pointer by name (None: unused, the first pointer stands in, strides 0);
    `strides`: a pointer's stride group given explicitly, else `layout(tensor)` (default
    tensor.stride()) and stride 0 for the axes the tensor lacks (a page or part axis)."""
    k = KERNELS[kind]
    strides = strides or {}
    _check(kind, "pointers", tensors, k.pointer_names)
    _check(kind, "scalars", scalars, k.scalar_names)
    _check(kind, "explicit strides", strides, [p.name for p in k.pointers if p.strides], subset=True)
    first = tensors[k.pointers[0].name]
    args = {}
    for p in k.pointers:
        t = tensors[p.name]
        args[p.name] = first if t is None else t
        if not p.strides:
            continue
        given = strides.get(p.name)
        if given is None:
            given = () if t is None else tuple((layout or _stride)(t))
            given = (*given, *(0,) * (len(p.strides) - len(given)))
        if len(given) != len(p.strides):
            raise ArgumentError(f"internal error: the {kind} kernel's {p.name} takes {len(p.strides)} strides "
                                f"{p.strides}, got {len(given)}")
        args.update(zip(p.strides, given))
    return {**args, **scalars}


def _stride(t) -> tuple[int, ...]:
    return t.stride()


def aot_signature(kind: str, dtype: str) -> dict[str, str]:
    """Triton's ahead-of-time signature of a `kind` kernel, in parameter order: pointer
    types (DATA: `dtype`), i32 and fp32 scalars (strides: i32), constexprs."""
    k = KERNELS[kind]
    sig = {p.name: f"*{dtype if p.dtype == DATA else p.dtype}" for p in k.pointers}
    sig.update((s, "i32") for s in sum(k.stride_groups, ()))
    sig.update((s.name, s.dtype) for s in k.scalars)
    sig.update((c, "constexpr") for c in k.constexprs)
    return {n: sig[n] for n in k.names()}
