"""The package's layers import downwards only. Every module under sparsedsl/ is
parsed with `ast` (nothing is imported) and its imports inside the package are
collected, those inside functions included. Bottom to top:

    errors, resources
    ir                          nodes, checks, printer, ranges; the kernel plan's data (ir/plan.py)
    language, builder, passes,  front ends; the optimizer and the lowering to a kernel plan;
    reference, render           the exact semantics; pictures
    kernels                     code generation and launches: read the plan, never build it
    runtime                     CompiledPattern (owns its plan), the torch ops
    compiler                    the pipeline
    fuzz, integrations,         the command line (cli calls fuzz, never the other way); other libraries' glue;
    distributed, cli            context parallelism

A module imports only from lower layers or its own package. Packages not named
here (sparsedsl/atoms, sparsedsl/testing, the package's __init__ and __main__)
are not checked. On top of the ranks: kernels/ imports neither passes/ nor
reference/ (it reads the plan's data in ir/plan.py; the compile pipeline runs
passes/ and hands the plan to the kernels), and runtime/ calls the reference only
through its entry points (REFERENCE_ENTRY_POINTS)."""
from __future__ import annotations

import ast
from pathlib import Path

import sparsedsl

PACKAGE = Path(sparsedsl.__file__).resolve().parent

RANK = {
    "errors": 0, "resources": 0,
    "ir": 1,
    "language": 2, "builder": 2, "passes": 2, "reference": 2, "render": 2,
    "kernels": 3,
    "runtime": 4,
    "compiler": 5,
    "fuzz": 6, "picture": 6, "integrations": 6, "distributed": 6,
    "cli": 7,
}

# Lower layers that a layer still may not import.
APART = {("kernels", "passes"), ("kernels", "reference")}

# What runtime/ may import from reference/: the reference attention and the exact
# meaning of a mask, which backend="reference", mask(), density() and the
# FlexAttention export run; and the meaning of topk(score=given), the selection
# from the call's scores, which both backends take as a given selection.
REFERENCE_ENTRY_POINTS = {
    ("sparsedsl.reference.attention", "reference_attention"),
    ("sparsedsl.reference.attention", "visible"),
    ("sparsedsl.reference.attention", "compute_selection"),
    ("sparsedsl.reference.evaluate", "eval_mask"),
    ("sparsedsl.reference.select", "select_given"),
}


def package_sources(root: Path = PACKAGE) -> dict[str, str]:
    """{dotted module name: source} of every module under `root`; a package's
    __init__.py is named by the package ("sparsedsl.ir")."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path.read_text(encoding="utf-8")
    return out


def imports(sources: dict[str, str], packages: set[str] | None = None) -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module, imported name or None, line) for every import of
    a sparsedsl module, anywhere in the module (functions and `if` blocks too).
    `packages`: the names that are packages (default: those with submodules)."""
    if packages is None:
        packages = {n.rsplit(".", 1)[0] for n in sources if "." in n}
    out = []
    for name, source in sources.items():
        here = name if name in packages else name.rsplit(".", 1)[0]  # the package relative imports start from
        for node in ast.walk(ast.parse(source, filename=name)):
            if isinstance(node, ast.Import):
                out.extend((name, a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "sparsedsl")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != "sparsedsl":
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    out.append((name, sub, None, node.lineno) if sub in sources else (name, base, a.name, node.lineno))
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank_violations(sources: dict[str, str]) -> list[str]:
    bad = []
    for src, dst, what, line in imports(sources):
        a, b = _layer(src), _layer(dst)
        if a == b or a not in RANK or b not in RANK:
            continue
        if RANK[b] >= RANK[a] or (a, b) in APART:
            why = f"{b} is not below {a}" if RANK[b] >= RANK[a] else f"{a} does not import {b}"
            bad.append(f"{src}:{line} imports {dst}{'.' + what if what else ''} ({why})")
    return bad


def kernels_to_passes(sources: dict[str, str]) -> list[str]:
    return [f"{src}:{line} imports {dst}" for src, dst, _, line in imports(sources)
            if _layer(src) == "kernels" and _layer(dst) == "passes"]


def runtime_to_reference(sources: dict[str, str]) -> list[str]:
    return [f"{src}:{line} imports {dst}{'.' + what if what else ''}" for src, dst, what, line in imports(sources)
            if _layer(src) == "runtime" and _layer(dst) == "reference" and (dst, what) not in REFERENCE_ENTRY_POINTS]


def cli_fuzz_cycle(sources: dict[str, str]) -> list[str]:
    edges = {(_layer(src), _layer(dst)): f"{src}:{line}" for src, dst, _, line in imports(sources)
             if src in ("sparsedsl.cli", "sparsedsl.fuzz")}
    if ("cli", "fuzz") in edges and ("fuzz", "cli") in edges:
        return [f"{edges['cli', 'fuzz']} imports fuzz and {edges['fuzz', 'cli']} imports cli"]
    return []


def test_kernels_never_import_passes():
    """The plan is built by the compile pipeline and handed to the kernels."""
    assert kernels_to_passes(package_sources()) == []


def test_runtime_calls_only_the_reference_entry_points():
    assert runtime_to_reference(package_sources()) == []


def test_cli_and_fuzz_do_not_import_each_other():
    assert cli_fuzz_cycle(package_sources()) == []


def test_layers_import_downwards_only():
    assert rank_violations(package_sources()) == []


def test_every_layer_is_ranked():
    """A new subpackage or top-level module gets a place in RANK (or is left out here on purpose)."""
    unchecked = {"", "atoms", "testing", "__main__"}
    layers = {_layer(m) for m in package_sources()} - unchecked
    assert layers <= set(RANK), sorted(layers - set(RANK))


def test_the_checks_see_what_they_forbid():
    """Imports inside functions, relative and absolute, `from . import module`: each
    forbidden edge is found (the shapes of the imports these checks replaced)."""
    sources = {
        "sparsedsl": "",
        "sparsedsl.kernels": "",
        "sparsedsl.kernels.launch": "from ..passes import optimize\n",
        "sparsedsl.kernels.generate": "def f():\n    from sparsedsl.passes.bounds import Segment\n",
        "sparsedsl.passes": "",
        "sparsedsl.passes.bounds": "",
        "sparsedsl.runtime": "",
        "sparsedsl.runtime.pattern": "from ..reference.heads import dynamic_atoms\n"
                                     "from ..reference.attention import visible\n",
        "sparsedsl.runtime.ops": "def g():\n    from ..reference import select\n",
        "sparsedsl.reference": "",
        "sparsedsl.reference.heads": "",
        "sparsedsl.reference.select": "",
        "sparsedsl.reference.attention": "",
        "sparsedsl.cli": "def h():\n    from .fuzz import run\n",
        "sparsedsl.fuzz": "def main():\n    import sparsedsl.cli\n",
    }
    assert len(kernels_to_passes(sources)) == 2
    assert runtime_to_reference(sources) == ["sparsedsl.runtime.pattern:1 imports sparsedsl.reference.heads."
                                             "dynamic_atoms", "sparsedsl.runtime.ops:2 imports "
                                             "sparsedsl.reference.select"]
    assert len(cli_fuzz_cycle(sources)) == 1
    assert len(rank_violations(sources)) == 2 + 1  # kernels -> passes twice, cli <- fuzz
