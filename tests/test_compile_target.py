"""The generated kernels compile for the GPU (sm_90, Hopper) with Triton's real
compiler, on this CPU machine: CI runs the kernels in the interpreter, which
does not compile them, so a kernel that only fails to compile would pass there."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [
    ["patterns/s2_attention.attn", "--pattern", "s2_attention"],  # strided, head-dependent offsets, walked blocks
    # (slow: about 20 s each; make test-long)
    pytest.param(["patterns/longnet.attn", "--pattern", "longnet"], marks=pytest.mark.slow),  # dilated, branches
    ["patterns/nsa.attn"],  # topk + landmarks: selected blocks, the inverse selection, the landmark backward
])
def test_kernels_compile_for_sm90(args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "sparsedsl", "kernel", *args, "--compile", "sm_90"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["sm_90", "sm_90 varlen"]
    kernels = 5 if "nsa" in args[0] else 4  # fwd, guard, dq, dkdv (+ dlm: the landmark entries' backward)
    assert all(line.count(" ok (") == kernels for line in lines), run.stdout
