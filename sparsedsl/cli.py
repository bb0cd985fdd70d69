"""The sparsedsl command line: check, show, ir, kernel, demo, fuzz."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from .compiler import compile_pattern, load
from .ir.topk import num_groups
from .passes.dynamic import decode_topk
from .errors import SparseDSLError
from .render import block_picture


def _params(items: list[str]) -> dict:
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"sparsedsl: --param takes NAME=VALUE, got {item!r}")
        low = value.strip().lower()
        if low in ("true", "false"):
            out[name] = low == "true"
        else:
            try:
                out[name] = int(value.replace("_", ""))
            except ValueError:
                raise SystemExit(f"sparsedsl: --param {name}: expected an integer or true/false, got {value!r}")
    return out


def cmd_check(args) -> int:
    bad = 0
    for path in args.files:
        try:
            info = load(path)
            names = list(info.own)
            for name in names:
                pdef = info.own[name]
                missing = [p.name for p in pdef.params if p.default is None]
                if missing:
                    print(f"{path}: {name}: needs {', '.join(missing)} (not instantiated)")
                    continue
                p = compile_pattern(path, pattern=name)
                if args.heads:
                    p.check(args.heads, args.kv_heads)
                for line in p.bounds_warnings(num_heads=args.heads or 1, num_kv_heads=args.kv_heads):
                    print(line)
                if args.cost:
                    if p.is_dynamic:
                        print(f"{path}: {name}: cost: static patterns only (the selection depends on the data)")
                    else:
                        rep = p.cost(args.cost_len, num_heads=args.heads or 1, num_kv_heads=args.kv_heads,
                                     tile=tuple(args.tile))
                        print(f"{path}: {name}: {rep}")
            print(f"{path}: ok ({len(names)} pattern{'s' if len(names) != 1 else ''}: {', '.join(names)})")
        except SparseDSLError as e:
            bad += 1
            print(e, file=sys.stderr)
    return 1 if bad else 0


def _pick(args):
    return compile_pattern(args.file, pattern=args.pattern, **_params(args.param))


def cmd_ir(args) -> int:
    p = _pick(args)
    print(p.ir(), end="")
    if args.graph:
        g = p.graph()
        print(f"# {g.number_of_nodes()} nodes, {g.number_of_edges()} edges")
    if args.passes:
        from .ir.printer import to_text
        from .passes import optimize

        trace: list = []
        optimize(p.root, trace)
        for step, after in trace:
            print(f"\n# after {step.name}: {step.purpose}")
            print(to_text(after), end="")
        if not p.is_dynamic:
            plan = p.plan  # (the same optimizer, then the lowering)
            print("\n# kernel plan" + (f" (residue layout, rate {plan.rate})" if plan.rate > 1 else ""))
            for i, br in enumerate(plan.branches):
                print(f"branch {i}: heads where {to_text(br.cond)}")
                for seg in br.segments:
                    line = f"  keys [{to_text(seg.lo)}, {to_text(seg.hi)})"
                    if seg.strided:
                        line += f" in blocks j of {to_text(seg.block)} with (j + {to_text(seg.offset)}) % " \
                                f"{to_text(seg.stride)} == 0"
                    if seg.guard != seg.__class__.__dataclass_fields__["guard"].default:
                        line += f" if {to_text(seg.guard)}"
                    line += f"; no mask in [{to_text(seg.full_lo)}, {to_text(seg.full_hi)})"
                    print(line)
    return 0


def cmd_kernel(args) -> int:
    from .kernels.generate import kernel_source

    p = _pick(args)
    if args.compile is not None:
        from .kernels.targets import TargetError, parse_target

        try:
            target = parse_target(args.compile)
        except TargetError as e:
            raise SystemExit(f"sparsedsl: {e}")
        if args.head_dim < 1:
            raise SystemExit(f"sparsedsl: --head-dim must be >= 1, got {args.head_dim}")
        return _compile_for(p, target, args.head_dim)
    src, _ = kernel_source(p.plan, p.plan.text, False, args.head_dim)
    print(src, end="")
    return 0


def _compile_for(p, target, head_dim: int) -> int:
    """Compile the kernels for `target` and check each against its limits: exit 1
    with the kernel and the numbers when one does not fit (then the varlen
    kernels are not compiled)."""
    from .kernels.aot import compile_kernels
    from .kernels.targets import problems, registers

    arch, bad = target.arch, 0
    for varlen in (False, True):
        binaries: dict = {}
        unchecked = False
        try:
            shared = compile_kernels(p.plan, head_dim, arch=arch, varlen=varlen, binaries=binaries)
        except Exception as e:  # Triton's CompilationError and friends: report, exit 1
            print(f"sparsedsl: compiling for sm_{arch}{' (varlen)' if varlen else ''} failed:\n{e}",
                  file=sys.stderr)
            return 1
        parts = []
        for kind, size in shared.items():
            cubin, name, threads = binaries[kind]
            regs = (registers(cubin) or {}).get(name) if cubin else None
            used = f"{size} B shared" + (f", {regs[0]} registers" if regs else "")
            unchecked = unchecked or regs is None
            if regs and regs[1]:
                used += f", {regs[1]} B stack"
            found = problems(target, size, regs[0] if regs else None, threads)
            if found:
                bad += 1
                print(f"sparsedsl: sm_{arch}{' varlen' if varlen else ''}: the {kind} kernel ({name}, head dim "
                      f"{head_dim}) does not fit: {'; '.join(found)}", file=sys.stderr)
                parts.append(f"{kind} FAILS ({used})")
            else:
                parts.append(f"{kind} ok ({used})")
        print(f"sm_{arch}{' varlen' if varlen else ''}: " + ", ".join(parts))
        if unchecked:
            print("  (registers not checked: Triton's cuobjdump could not be run here)")
        if bad:  # (the varlen kernels differ only in their offsets: no second, equally long compile)
            return 1
    return 0


def _sample_mask(p, lq, lk, h, hk, seed=0):
    """The mask for random q and k (and, for topk(score=given), random gate scores) from `seed`."""
    if not p.is_dynamic:
        return p.mask(lq, lk, h, hk)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, h, lq, 64, generator=gen)
    k = torch.randn(1, hk, lk, 64, generator=gen)
    scores = None
    for t in (decode_topk(a) for a in p.dynamic_atoms if a.kind == "topk"):
        if t.score == "given":
            scores = torch.randn(1, h, num_groups(lq, lk, t.block), -(-lk // t.block), generator=gen)
    return p.mask(lq, lk, h, hk, q=q, k=k, scores=scores)[0]


def _given_note(p) -> str:
    given = any(decode_topk(a).score == "given" for a in p.dynamic_atoms if a.kind == "topk")
    return " and gate scores" if given else ""


def _check_show_args(args) -> None:
    """Clear errors for flags `show` cannot draw (SystemExit, no traceback)."""
    for flag, value in (("--len", args.len), ("--kv-len", args.kv_len), ("--cells", args.cells),
                        ("--heads", args.heads), ("--kv-heads", args.kv_heads)):
        if value is not None and value < 1:
            raise SystemExit(f"sparsedsl: {flag} must be >= 1, got {value}")
    if args.kv_heads is not None and args.heads % args.kv_heads:
        raise SystemExit(f"sparsedsl: --kv-heads ({args.kv_heads}) must divide --heads ({args.heads})")
    if not 0 <= args.head < args.heads:
        raise SystemExit(f"sparsedsl: --head must be in [0, {args.heads}), got {args.head}")
    if args.png:
        folder = os.path.dirname(os.path.abspath(args.png))
        if not os.path.isdir(folder):
            raise SystemExit(f"sparsedsl: --png {args.png}: the folder {folder} does not exist")
        if os.path.isdir(args.png):
            raise SystemExit(f"sparsedsl: --png {args.png} is a folder; give a file name")


def cmd_show(args) -> int:
    from .picture import EXACT_PAIRS, coverage, row_density
    from .render import coverage_picture, write_coverage_png

    _check_show_args(args)
    p = _pick(args)
    lq = args.len
    lk = args.kv_len or lq
    h, hk = args.heads, args.kv_heads or args.heads
    head = args.head
    p.check(h, hk)
    mask = None
    if p.is_dynamic:
        if h * lq * lk > EXACT_PAIRS:
            raise SystemExit(f"sparsedsl: show draws a data-dependent pattern from its dense mask, for heads x "
                             f"--len x --kv-len up to {EXACT_PAIRS}; got {h} x {lq} x {lk}")
        mask = _sample_mask(p, lq, lk, h, hk)
    cov, per_head, sampled = coverage(p, lq, lk, h, hk, args.cells, mask)
    how = "   (sampled: estimated from the picture's sample)"
    if sampled and (rows := row_density(p, lq, lk, h, hk)) is not None:
        per_head, n = rows
        how = f"   (sampled: {n} evenly spaced query rows of {lq}, every key)"
    print(p.ir(), end="")
    print(f"# Lq={lq} Lk={lk} H={h} Hk={hk}"
          + (f"   (data-dependent: drawn for random q, k{_given_note(p)} with seed 0)" if p.is_dynamic else ""))
    for atom in p.dynamic_atoms:
        if atom.kind == "landmarks":
            print(f"# + landmarks: one mean key per complete block of {atom.args[0].value} keys")
        elif atom.kind == "compensation":
            print("# + compensation: one mean key per query, of the keys its branch hides (not drawn)")
    print(f"density {float(per_head.mean()):.4f}   per head: "
          + " ".join(f"{float(d):.3f}" for d in per_head[:32]) + (" ..." if h > 32 else "")
          + (how if sampled else ""))
    cells = min(args.cells, max(lq, lk, 1))
    print(f"head {head}: each character is a tile of about {-(-lq // min(cells, max(lq, 1)))} x "
          f"{-(-lk // min(cells, max(lk, 1)))} pairs ('{'.' if args.ascii else ' '}' none visible, "
          f"'{'+' if args.ascii else '░'}' some, '{'#' if args.ascii else '█'}' all)")
    if sampled:
        print(f"# sampled: past {EXACT_PAIRS} pairs each tile is evaluated on a grid of sample rows and columns, "
              "not every pair, so none/some/all describe the sample (a narrow feature between samples can be missed)")
    picture = coverage_picture(cov[head], "ascii" if args.ascii else "unicode")
    print("\n".join("|" + line + "|" for line in picture.splitlines()))
    if args.png:
        shown = min(h, 8)
        png, _, png_sampled = coverage(p, lq, lk, h, hk, 512, mask)
        try:
            write_coverage_png(args.png, [png[i] for i in range(shown)])
        except OSError as e:
            raise SystemExit(f"sparsedsl: cannot write --png {args.png}: {e.strerror or e}")
        print(f"wrote {args.png} (heads 0..{shown - 1}{', sampled' if png_sampled else ''})")
    return 0


def cmd_demo(args) -> int:
    path = "patterns/streaming_llm.attn"
    p = compile_pattern(path, sink=4, window=256)
    lq = 1024
    h, hk, d = 8, 2, 64
    print(f"compiled {path} with sink=4, window=256:\n{p.ir()}")
    mask = p.mask(lq, lq, h, hk)
    print(f"density at L={lq}: {p.density(lq, lq, h, hk):.4f}")
    print("\n".join("|" + line + "|" for line in block_picture(mask[0], 32).splitlines()))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, h, lq, d, generator=gen)
    k = torch.randn(2, hk, lq, d, generator=gen)
    v = torch.randn(2, hk, lq, d, generator=gen)
    out, lse = p(q, k, v, return_lse=True)
    # Dense check: the same attention through torch SDPA with the full boolean mask.
    rep = h // hk
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1),
        attn_mask=mask.unsqueeze(0))
    err = float((out.double() - dense).abs().max())
    ok = err < 1e-4 and bool(torch.isfinite(lse).all())
    print(f"attention [B=2, H={h}, Hk={hk}, L={lq}, D={d}] vs dense SDPA: max abs error {err:.2e} "
          f"-> {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sparsedsl", description="A compiler for attention sparsity patterns.")
    sub = ap.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="parse and check .attn files (exit 1 on errors)")
    c.add_argument("files", nargs="+")
    c.add_argument("--heads", type=int, default=0, help="also check for this many query heads")
    c.add_argument("--kv-heads", type=int, default=None)
    c.add_argument("--cost", action="store_true", help="print each pattern's static kernel cost (tiles visited, "
                   "full, partial, needed)")
    c.add_argument("--cost-len", type=int, default=16384, help="sequence length of --cost (default 16384)")
    c.add_argument("--tile", type=int, nargs=2, default=[128, 128], metavar=("BLOCK_M", "BLOCK_N"),
                   help="tile of --cost (default 128 128)")
    c.set_defaults(run=cmd_check)

    def pattern_args(s):
        s.add_argument("file")
        s.add_argument("--pattern", default=None, help="which pattern, when the file has several")
        s.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")

    s = sub.add_parser("show", help="draw a pattern and print its density")
    pattern_args(s)
    s.add_argument("--len", type=int, default=2048, help="query length (default 2048)")
    s.add_argument("--kv-len", type=int, default=None, help="key length (default: --len)")
    s.add_argument("--heads", type=int, default=1)
    s.add_argument("--kv-heads", type=int, default=None)
    s.add_argument("--head", type=int, default=0, help="which head to draw")
    s.add_argument("--cells", type=int, default=64, help="picture width in characters")
    s.add_argument("--ascii", action="store_true", help="draw with . + # only")
    s.add_argument("--png", default=None, help="also write a PNG of the first heads")
    s.set_defaults(run=cmd_show)

    i = sub.add_parser("ir", help="print the IR (as .attn text)")
    pattern_args(i)
    i.add_argument("--graph", action="store_true", help="also print the graph size")
    i.add_argument("--passes", action="store_true", help="also print the IR after each optimizer pass and the plan")
    i.set_defaults(run=cmd_ir)

    kern = sub.add_parser("kernel", help="print the generated Triton kernels (forward, backward dQ and dK/dV)")
    pattern_args(kern)
    kern.add_argument("--head-dim", type=int, default=128, help="head dim the tile configs are chosen for")
    kern.add_argument("--compile", metavar="sm_90", default=None,
                      help="instead, compile the kernels for this GPU target (no GPU needed) and report")
    kern.set_defaults(run=cmd_kernel)

    d = sub.add_parser("demo", help="compile a shipped pattern, draw it and check attention against SDPA")
    d.set_defaults(run=cmd_demo)

    f = sub.add_parser("fuzz", help="run the pattern's kernel on random shapes against the reference "
                                    "(needs hypothesis); print a pytest test for a failure")
    pattern_args(f)
    f.add_argument("--examples", type=int, default=50, help="how many random cases (default 50)")
    f.add_argument("--backend", choices=("triton", "reference"), default="triton")
    f.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    f.add_argument("--max-len", type=int, default=4096,
                   help="longest sequence drawn around the pattern's own scales (default 4096)")
    f.set_defaults(run=cmd_fuzz)
    return ap


def cmd_fuzz(args) -> int:
    from .fuzz import FuzzError, run

    params = _params(args.param)
    try:
        p = compile_pattern(args.file, pattern=args.pattern, **params)
        return run(p, examples=args.examples, backend=args.backend, seed=args.seed, source=args.file,
                   pattern=args.pattern, params=params, max_len=args.max_len)
    except FuzzError as e:
        print(f"sparsedsl fuzz: {e}", file=sys.stderr)
        return 1


def _interpreter_without_cuda(args) -> None:
    """Kernels on a machine without CUDA run in Triton's interpreter, which must
    be switched on before triton is imported (sparsedsl imports it lazily)."""
    compiling = getattr(args, "compile", None) is not None  # ahead-of-time: Triton's real compiler
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available() and not compiling:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _interpreter_without_cuda(args)
    try:
        return args.run(args)
    except SparseDSLError as e:
        print(e, file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `sparsedsl show ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
