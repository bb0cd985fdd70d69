"""`sparsedsl fuzz`: random shapes against one pattern, kernel vs reference.

Hypothesis draws shapes (lengths around tile boundaries, Lq != Lk, GQA head
counts, head dims, dtypes, memory layouts) and tile sizes, runs the pattern's
kernel and checks it with `sparsedsl.testing.assert_matches_reference`. On a
failure Hypothesis shrinks the case, and `run` prints a ready-to-paste pytest
test that reproduces it. The command line (cli.py cmd_fuzz) parses its
arguments and calls `run`; this module does not import the command line.

    sparsedsl fuzz patterns/s2_attention.attn --pattern s2_attention -p block=16 --examples 200

Hypothesis is imported only here (and by sparsedsl.testing), never by
`import sparsedsl`.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field

from .passes.dynamic import decode_topk

# Tile sizes (BLOCK_M, BLOCK_N) tried on the CPU (the interpreter takes one
# fixed tile); on a GPU None (the autotuned configs) is tried as well. Key
# sequences longer than LONG take wider key tiles (the interpreter's time grows
# with the number of tiles, not much with their size).
CPU_CONFIGS = ((16, 16), (32, 16), (16, 32))
LONG_CONFIGS = ((16, 64), (16, 128))
LONG = 256
SMALL_LEN = 49  # the tile-boundary lengths stay below this; the pattern's scales go up to max_len


class FuzzError(Exception):
    """A problem with the fuzz run itself (not a mismatch): printed, exit 1."""


@dataclass
class _Failure:
    shape: dict
    seed: int
    config: tuple | None
    scale: float | None
    error: BaseException


@dataclass
class _Stats:
    runs: int = 0
    lengths: set = field(default_factory=set)
    dtypes: set = field(default_factory=set)
    heads: set = field(default_factory=set)
    full: int = 0  # key tiles the forward visited without the element mask (static patterns)
    partial: int = 0  # and with it
    blind_rows: int = 0  # query rows that see no key
    rows: int = 0
    selected: int = 0  # key blocks a topk selected (dynamic patterns)

    def cover(self, p, q, k, config) -> None:
        """Add what one example exercised: its forward tiles (the plan's cost walk),
        its rows that see nothing, the blocks its topk selected."""
        b, h, lq, d = q.shape
        hk, lk = k.shape[1], k.shape[2]
        if _given_scores(p):  # (its selection comes from drawn gate scores: no mask without them)
            self.rows += b * h * lq
            return
        if p.is_dynamic:
            m = p.mask(lq, lk, h, hk, q=q.cpu(), k=k.cpu())
            if _has_topk(p):
                sel = p.select_blocks(q.cpu(), k.cpu(), backend="reference")
                self.selected += sum(int((s >= 0).sum()) for s in (sel if isinstance(sel, tuple) else (sel,)))
        else:
            m = p.mask(lq, lk, h, hk)
            c = p.cost(lq, lk, h, hk, tile=config or (128, 64), head_dim=d)
            self.full += b * c.full
            self.partial += b * c.partial
            m = m.expand(b, *m.shape)
        self.blind_rows += int((~m.any(-1)).sum())
        self.rows += m.shape[0] * m.shape[1] * m.shape[2]

    def summary(self, p) -> str:
        if _given_scores(p):
            return f"  covered: {self.rows} query rows, topk(score=given) selecting from drawn gate scores"
        parts = [f"{self.blind_rows} of {self.rows} query rows see no key"]
        if p.is_dynamic:
            if _has_topk(p):
                parts.append(f"{self.selected} key blocks selected by topk")
        else:
            parts.insert(0, f"forward tiles {self.full} full (no mask) and {self.partial} partial (masked)")
        text = "  covered: " + ", ".join(parts)
        if not p.is_dynamic and (self.full == 0 or self.partial == 0):
            text += f"\n  note: no {'full' if self.full == 0 else 'partial'} tile was visited; try more --examples " \
                    "or a larger --max-len"
        return text


def _has_topk(p) -> bool:
    return any(a.kind == "topk" for a in p.dynamic_atoms)


def _given_scores(p) -> bool:
    """Whether a topk of the pattern selects from the call's scores (score=given)."""
    return any(a.kind == "topk" and decode_topk(a).score == "given" for a in p.dynamic_atoms)


def _hypothesis():
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise FuzzError("sparsedsl fuzz needs hypothesis; install it with `pip install hypothesis` "
                        "(or `pip install sparsedsl[test]`)") from None
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from . import testing

    return HealthCheck, Phase, given, settings, hseed, st, testing


def _device(backend: str) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"


def run(p, *, examples: int = 50, backend: str = "triton", seed: int = 0, source: str | None = None,
        pattern: str | None = None, params: dict | None = None, max_len: int = 4096, out=None,
        check=None) -> int:
    """Fuzz the compiled pattern `p`; print a summary (exit status 0) or the
    shrunk failing case as a pytest test (exit status 1).

    Lengths: around 16-key tiles up to 49, and around the pattern's own scales
    (testing.pattern_scales: windows, blocks, budgets, from its plan) up to
    `max_len`. The summary says what the examples covered: forward tiles with
    and without the element mask, rows that see nothing, topk-selected blocks.

    `source`, `pattern` and `params` only describe where `p` came from, in the
    printed test. `check` replaces assert_matches_reference (tests use it)."""
    out = out or sys.stdout
    HealthCheck, Phase, given, settings, hseed, st, testing = _hypothesis()

    if backend not in ("triton", "reference"):
        raise FuzzError(f"--backend must be triton or reference, got {backend!r}")
    if examples < 1:
        raise FuzzError(f"--examples must be at least 1, got {examples}")
    if max_len < 1:
        raise FuzzError(f"--max-len must be at least 1, got {max_len}")
    device = _device(backend)
    if backend == "triton" and device == "cpu":
        from .kernels.launch import interpreter_ready

        if not interpreter_ready():
            raise FuzzError("no CUDA device and Triton's interpreter is off: set TRITON_INTERPRET=1 before "
                            "triton is imported (the sparsedsl command does this itself)")
    check = check or testing.assert_matches_reference
    dtypes = ("float32", "float16") + (("bfloat16",) if device == "cuda" else ())
    configs = CPU_CONFIGS + ((None,) if device == "cuda" else ())
    long_configs = LONG_CONFIGS + ((None,) if device == "cuda" else ())
    scales = testing.pattern_scales(p.plan)
    softmax_scales = st.one_of(st.none(), st.sampled_from((0.0, 0.05, 0.5, 3.0, -1.0)))
    stats = _Stats()
    failures: list[_Failure] = []

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
              phases=(Phase.explicit, Phase.generate, Phase.shrink))
    @given(shape=testing.kernel_shapes(max_len=min(SMALL_LEN, max_len), dtypes=dtypes, scales=scales,
                                       scale_len=max_len),
           data_seed=st.integers(0, 2 ** 16), data=st.data(), scale=softmax_scales)
    def one(shape, data_seed, data, scale):
        config = data.draw(st.sampled_from(long_configs if shape["kv_len"] > LONG else configs), label="config")
        q, k, v = testing.attention_inputs(shape, data_seed, device=device)
        kwargs = {"_config": config} if backend == "triton" and config is not None else {}
        stats.runs += 1
        stats.lengths.update((shape["q_len"], shape["kv_len"]))
        stats.dtypes.add(shape["dtype"])
        stats.heads.add((shape["num_heads"], shape["num_kv_heads"]))
        try:
            check(p, q, k, v, backend=backend, scale=scale, **kwargs)
        except Exception as e:  # every error counts: a mismatch, a crash, a raw torch/triton error
            failures.append(_Failure(dict(shape), data_seed, config, scale, e))
            raise
        stats.cover(p, q, k, config)

    start = time.time()
    try:
        one()
    except Exception as e:
        failure = failures[-1] if failures else _Failure({}, 0, None, None, e)
        print(_report(p, failure, backend, device, seed, source, pattern, params), file=out)
        return 1
    lengths = sorted(stats.lengths)
    where = "GPU" if device == "cuda" else "CPU, Triton interpreter" if backend == "triton" else "CPU"
    print(f"fuzz: pattern {p.name!r} on backend {backend!r} ({where}): "
          f"{stats.runs} examples match the float64 reference in {time.time() - start:.1f}s\n"
          f"  lengths {lengths[0]}..{lengths[-1]} (the pattern's scales: {', '.join(map(str, scales)) or 'none'}; "
          f"--max-len {max_len}), dtypes {', '.join(sorted(stats.dtypes))}, "
          f"(H, Hk) {', '.join(f'({h}, {hk})' for h, hk in sorted(stats.heads))}, seed {seed}\n"
          f"{stats.summary(p)}", file=out)
    return 0


def _ident(text: str) -> str:
    return re.sub(r"\W+", "_", text).strip("_").lower() or "pattern"


def _report(p, f: _Failure, backend, device, seed, source, pattern, params) -> str:
    """The failing case, and a pytest test that reproduces it."""
    err = f"{type(f.error).__name__}: {f.error}"
    origin = source or "<pattern>"
    cmd = f"sparsedsl fuzz {origin}" + (f" --pattern {pattern}" if pattern else "") + \
        "".join(f" -p {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in (params or {}).items()) + \
        f" --backend {backend} --seed {seed}"
    kwargs = []
    if f.scale is not None:
        kwargs.append(f"scale={f.scale!r}")
    if backend == "triton" and f.config is not None:
        kwargs.append(f"_config={f.config!r}")
    call = ", ".join(["p", "q", "k", "v", f"backend={backend!r}"] + kwargs)
    shape = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in f.shape.items()) + "}"
    dev = ', device="cuda"' if device == "cuda" else ""
    ir_text = p.ir().rstrip("\n")
    lines = [
        f"fuzz: FAILED: pattern {p.name!r} on backend {backend!r} does not match the reference",
        "",
        *("  " + line for line in err.splitlines()),
        "",
        f"shrunk case: shape {shape}, data seed {f.seed}, scale {f.scale}, tile {f.config}",
        "",
        "# ---- a pytest test that reproduces it (paste into tests/) ----",
        "import os",
        "",
        "os.environ.setdefault(\"TRITON_INTERPRET\", \"1\")  # no GPU: run the kernel in Triton's interpreter",
        "",
        "import sparsedsl  # noqa: E402",
        "from sparsedsl.testing import assert_matches_reference, attention_inputs  # noqa: E402",
        "",
        "",
        f"def test_fuzz_{_ident(p.name)}_repro():",
        f"    # found by: {cmd}",
        f"    # from {origin}" + (f", pattern {pattern}" if pattern else "")
        + (f", params {params!r}" if params else ""),
        f"    p = sparsedsl.compile_pattern(\"\"\"\n{_indent(ir_text, 4)}\n    \"\"\")",
        f"    shape = {shape}",
        f"    q, k, v = attention_inputs(shape, seed={f.seed}{dev})",
        f"    assert_matches_reference({call})",
    ]
    return "\n".join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())
