"""GPU targets `sparsedsl kernel --compile` knows, their per-block limits, and
the check of compiled kernels against them (shared memory, registers)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

REGISTERS_PER_THREAD = 255
REGISTERS_PER_BLOCK = 65536


@dataclass(frozen=True)
class Target:
    arch: int
    shared: int  # bytes of shared memory one block may use (the opt-in maximum)
    name: str


# CUDA C Programming Guide, "Technical Specifications per Compute Capability".
TARGETS = {t.arch: t for t in (
    Target(80, 166912, "A100 (163 KB)"),
    Target(86, 101376, "RTX 30xx / A-series (99 KB)"),
    Target(87, 166912, "Jetson Orin (163 KB)"),
    Target(89, 101376, "RTX 40xx / L4 / L40 (99 KB)"),
    Target(90, 232448, "H100 / H200 (227 KB)"),
    Target(100, 232448, "B200 (227 KB)"),
    Target(120, 101376, "RTX 50xx (99 KB)"),
)}


class TargetError(ValueError):
    pass


def parse_target(text: str) -> Target:
    """sm_90 (or 90) -> its Target; TargetError for anything else (before Triton sees it:
    Triton's backend aborts the process on an architecture it cannot compile for)."""
    m = re.fullmatch(r"(?:sm_?)?(\d+)", text.strip().lower())
    known = ", ".join(f"sm_{a}" for a in TARGETS)
    if m is None:
        raise TargetError(f"--compile takes a CUDA target like sm_90, got {text!r} (known: {known})")
    arch = int(m.group(1))
    if arch not in TARGETS:
        why = "the generated kernels need sm_80 or newer" if arch < 80 else "its limits are not known here"
        raise TargetError(f"unsupported target sm_{arch}: {why} (known: {known})")
    return TARGETS[arch]


def registers(cubin: bytes) -> dict[str, tuple[int, int]] | None:
    """{function: (registers per thread, stack bytes)} from Triton's cuobjdump, or
    None when it cannot be run."""
    import tempfile

    try:
        from triton import knobs

        tool = knobs.nvidia.cuobjdump.path
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                 timeout=120, check=False).stdout
    except (ImportError, AttributeError, OSError, subprocess.SubprocessError):  # no cuobjdump in this Triton: the register check is skipped, and said so
        return None
    found = re.findall(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+)", out)
    return {name: (int(reg), int(stack)) for name, reg, stack in found} or None


def problems(target: Target, shared: int, regs: int | None, threads: int) -> list[str]:
    """What a kernel using `shared` bytes and `regs` registers per thread over
    `threads` threads exceeds on `target` (empty: it fits)."""
    out = []
    if shared > target.shared:
        out.append(f"needs {shared} B of shared memory, sm_{target.arch} allows {target.shared} B per block")
    if regs is not None and regs > REGISTERS_PER_THREAD:
        out.append(f"needs {regs} registers per thread, at most {REGISTERS_PER_THREAD}")
    if regs is not None and regs * threads > REGISTERS_PER_BLOCK:
        out.append(f"needs {regs} x {threads} = {regs * threads} registers per block, at most "
                   f"{REGISTERS_PER_BLOCK}")
    return out
