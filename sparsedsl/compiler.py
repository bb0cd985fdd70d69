"""The pipeline: source -> syntax tree -> IR -> checks -> CompiledPattern -> kernel plan.

    parse (language/parser.py)  ->  lower (language/lower.py)
    -> check_dynamic_placement, check_compensation (ir/check.py) -> verify (ir/graph.py)
    -> CompiledPattern (runtime/pattern.py)
    -> optimize (passes/) -> make_plan (passes/plan.py): the KernelPlan (ir/plan.py)

The last step runs once per pattern, when its kernels are first needed
(CompiledPattern.plan, through runtime/ops.py plan_for): patterns used only with
the reference (masks, densities, backend="reference") never pay for it. The
kernels receive the plan; they never plan. A builder mask takes the same path.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import PatternError
from .ir import nodes as ir
from .ir.check import check_compensation, check_dynamic_placement
from .ir.graph import verify
from .language.lower import Loader, Lowerer, ModuleInfo, suggest
from .resources import data_dir, library_path
from .runtime.pattern import CompiledPattern


def _looks_like_source(text: str) -> bool:
    """A path or a shipped pattern's name is one short token without brackets."""
    return not re.fullmatch(r"[\w./\\~:-]{1,1024}", text.strip()) or "\n" in text


def load(source, loader: Loader | None = None) -> ModuleInfo:
    """Parse a path or source text (with its imports) into a module."""
    loader = loader or Loader()
    if isinstance(source, Path) or (isinstance(source, str) and not _looks_like_source(source)):
        path = Path(source)
        try:
            if not path.exists() and not path.is_absolute():
                shipped = library_path(path.name)
                if shipped.exists() and (len(path.parts) == 1 or path.parts[-2] == "patterns"):
                    path = shipped
            exists = path.is_file()
            what = "is a directory, not a file" if path.is_dir() else \
                "not a regular file" if path.exists() else "file not found"
        except (OSError, RuntimeError) as e:  # e.g. a name too long for the file system, a symlink loop
            raise PatternError(f"cannot open {str(source)[:80]!r}: {getattr(e, 'strerror', None) or e}") from None
        if not exists:
            names = ", ".join(sorted(p.stem for p in data_dir("patterns").glob("*.attn")))
            raise PatternError(f"{what}: {source}", None, (f"shipped patterns: {names}",))
        return loader.load_file(path)
    if isinstance(source, str):
        return loader.load_text(source, "<string>", Path.cwd())
    raise PatternError(f"expected a path, source text or a builder mask, got {type(source).__name__}")


def pattern_names(info: ModuleInfo) -> list[str]:
    return list(info.own)


def compile_pattern(source, pattern: str | None = None, **params) -> CompiledPattern:
    """Compile a pattern from a .attn path, .attn source text or a builder mask.

    `pattern` picks one when the file defines several; keyword arguments bind
    the pattern's parameters."""
    from .builder import Mask

    if isinstance(source, Mask):
        if params:
            raise PatternError(f"a builder mask takes no parameters, got {', '.join(params)}")
        name = pattern or "built"
        if not _valid_name(name):
            raise PatternError(f"pattern name {name!r} is not a valid name (a letter or _, then letters, digits, "
                               "_; not a keyword or built-in)")
        root = ir.Pattern(name, source.node)
        return _finish(root, {}, {})
    try:
        info = load(source)
        names = pattern_names(info)
        if pattern is None:
            if not names:
                raise PatternError(f"no pattern is defined in {info.module.source.name}")
            stem = Path(info.module.source.name).stem
            if len(names) > 1 and stem in names and info.path is not None:
                names = [stem]  # a library file's main pattern carries the file's name
            if len(names) > 1:
                raise PatternError(f"{info.module.source.name} defines several patterns "
                                   f"({', '.join(names)}); pass pattern=NAME")
            pattern = names[0]
        if pattern in info.own:
            pdef, home = info.own[pattern], info
        elif pattern in info.imported:
            pdef, home = info.imported[pattern]
        else:
            raise PatternError(f"no pattern named {pattern!r} in {info.module.source.name}", None,
                               suggest(pattern, names) + (f"patterns: {', '.join(names) or 'none'}",))
        lowerer = Lowerer()
        body = lowerer.instantiate(pdef, home, params, None, from_python=True)
        root = ir.Pattern(pdef.name, body)
        return _finish(root, params, lowerer.spans)
    except RecursionError:
        raise PatternError("the pattern is nested too deeply to compile") from None


def _valid_name(name: str) -> bool:
    from .language.lower import BUILTIN_SYMBOLS, INT_FUNCS
    from .atoms import ATOMS

    keywords = {"pattern", "import", "let", "heads", "true", "false", "and", "or", "not"}
    return (isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None
            and name not in keywords and name not in ATOMS and name not in INT_FUNCS and name not in BUILTIN_SYMBOLS)


MAX_DEPTH = 128  # levels of nodes in one pattern after inlining (the passes and the printer recurse)


def _check_depth(root: ir.Node, spans: dict) -> None:
    """PatternError when the IR nests more than MAX_DEPTH deep (a DAG: each node once)."""
    height: dict[ir.Node, int] = {}
    stack = [(root, False)]
    while stack:
        n, expanded = stack.pop()
        if expanded:
            height[n] = 1 + max((height[c] for c in n.children()), default=0)
        elif n not in height:
            stack.append((n, True))
            stack.extend((c, False) for c in n.children() if c not in height)
    if height[root] <= MAX_DEPTH + 1:  # (+1: the Pattern node itself)
        return
    node, span = root, None
    for _ in range(MAX_DEPTH + 1):  # down the deepest path to the first node too deep
        node = max(node.children(), key=height.__getitem__)
        span = spans.get(node, span)
    raise PatternError(f"the pattern nests {height[root] - 1} levels deep after inlining pattern calls; "
                       f"the limit is {MAX_DEPTH}", span)


def _finish(root: ir.Pattern, params: dict, spans: dict) -> CompiledPattern:
    _check_depth(root, spans)
    check_dynamic_placement(root, spans)
    check_compensation(root, spans)
    verify(root)
    return CompiledPattern(root, params, spans)
