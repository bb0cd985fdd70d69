"""When the kernels load their iterated tiles through the TMA unit.

On a Hopper-class GPU (compute capability 9.0 and later) the forward and dQ
kernels read their K/V tiles, and the dK/dV kernel its Q/dO tiles, through
tensor descriptors (`tl.make_tensor_descriptor`): one asynchronous copy per
tile instead of a pointer per element, which frees the registers the address
arithmetic held and lets Triton's pipeliner overlap the copies with the
matrix products. The descriptors cover one (batch, head)'s rows [0, L) with a
unit stride in the head dim; rows outside read as zeros, as masked loads did.

The switch `TMA_MODE` (environment `SPARSEDSL_TMA`): "auto" (the default)
uses TMA on such GPUs wherever the inputs allow it; "0" never; "1" wherever
the inputs allow it, in Triton's interpreter too (the tests run the TMA path
on the CPU that way)."""
from __future__ import annotations

import os

import torch

TMA_MODE = os.environ.get("SPARSEDSL_TMA", "auto")
_INPUTS = {"fwd": ("K", "V"), "dq": ("K", "V"), "dkdv": ("Q", "DO")}  # the tensors each kernel reads by TMA
_CAPABLE: dict = {}


def use_tma(kind: str, tensors: dict, meta: dict, interpret: bool) -> bool:
    """Whether kernel `kind` of this launch reads its tiles through descriptors: dense
    batches (no varlen, no pages, no residue classes), head dims that are their own
    power of two, and rows with a unit last stride and 16-byte aligned starts."""
    names = _INPUTS.get(kind)
    if names is None or TMA_MODE == "0":
        return False
    if meta["RATE"] != 1 or meta["VARLEN"] != 0 or meta.get("PAGE", 0) != 0:
        return False
    if meta["HEAD_DIM"] != meta["BLOCK_D"] or meta["HEAD_DIM_V"] != meta["BLOCK_DV"]:
        return False
    if TMA_MODE != "1" and (interpret or not _capable(tensors[names[0]].device)):
        return False
    for name in names:
        t = tensors[name]
        size = t.element_size()
        if t.stride(-1) != 1 or t.stride(2) <= 0 or t.data_ptr() % 16 or t.shape[-1] * size < 16:
            return False
        if any(s * size % 16 for s in t.stride()[:-1]):
            return False
    ensure_allocator(tensors[names[0]].device)
    return True


def _capable(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    ok = _CAPABLE.get(device.index)
    if ok is None:
        import triton.language as tl

        ok = _CAPABLE[device.index] = (torch.cuda.get_device_capability(device)[0] >= 9
                                       and hasattr(tl, "make_tensor_descriptor"))
    return ok


def ensure_allocator(device: torch.device) -> None:
    """Descriptors made inside a kernel live in a global scratch buffer that Triton asks
    its allocator for at launch. Set one (torch's caching allocator) when the calling
    thread has none; a user's own allocator is kept. Triton keeps the allocator in a
    context variable, so a new thread (autograd's backward) starts without one."""
    import triton
    from triton.runtime import _allocation

    current = getattr(_allocation, "_allocator", None)
    null = getattr(_allocation, "_NULL_ALLOCATOR", None)
    if current is None or null is None or current.get() is null:
        triton.set_allocator(_allocate_on(device.type))


def _allocate_on(device_type: str):
    def allocate(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device=device_type)

    return allocate
