""".attn source text for property tests (part of `sparsedsl.testing`): a second
printer, independent of ``sparsedsl.ir.printer``, that writes a drawn pattern
the way a person might (parameters, let statements, helper patterns, keyword
arguments, comments, line breaks).
"""
from __future__ import annotations

from hypothesis import strategies as st

from ..ir import nodes as ir
from ..atoms import ATOMS
from ..ir.printer import to_text
from .strategies import _cached, _one_of, patterns

__all__ = ["ENTRY", "rendered_patterns", "pattern_sources"]

#: The name of the pattern to compile in the text of `rendered_patterns` and
#: `pattern_sources` (those files may also define helper patterns).
ENTRY = "main"

# ---- source text ---------------------------------------------------------------------


def _int_text(draw, v: int) -> str:
    text = str(abs(v))
    if len(text) > 1 and draw(st.integers(0, 4)) == 0:  # INT allows 1_000
        i = draw(st.integers(1, len(text) - 1))
        text = text[:i] + "_" + text[i:]
    return f"(-{text})" if v < 0 else text


class _Module:
    """Collects helper patterns while a pattern is rendered."""

    def __init__(self):
        self.helpers: list[str] = []
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"


class _Scope:
    """One pattern being written: its parameters and let statements."""

    def __init__(self, module: _Module, params_allowed: bool, depth: int):
        self.module = module
        self.params: list[str] = []  # "name: type = default" or "name: type"
        self.args: list[str] = []  # call-site keyword arguments for required params
        self.lets: list[str] = []
        self.params_allowed = params_allowed
        self.depth = depth


def _sep(draw) -> str:
    return draw(st.sampled_from((" ", " ", " ", "\n    ", "  # note\n    ")))


def render(draw, node: ir.Node, scope: _Scope, bind: bool = True) -> str:
    """Fully parenthesised text for `node`, drawn with random choices: lets,
    parameters, helper patterns, keyword or positional arguments, comments and
    line breaks. Lowering the text gives `node` back. With bind=False the node
    itself is written out (its operands may still be bound to names)."""
    if bind and ir.is_mask(node) and scope.depth < 3:
        how = draw(st.integers(0, 9))
        if how == 0:
            name = scope.module.fresh("m")
            scope.lets.append(f"let {name} = {render(draw, node, scope, False)}")
            return name
        if how == 1:
            return _helper(draw, node, scope)
    if isinstance(node, ir.Const):
        how = draw(st.integers(0, 5)) if scope.params_allowed else 9
        if how == 0:
            name = scope.module.fresh("n")
            scope.params.append(f"{name}: int = {_int_text(draw, node.value)}")
            return name
        if how == 1 and scope.args is not None and scope.depth > 0:
            name = scope.module.fresh("n")
            scope.params.append(f"{name}: int")
            a = draw(st.integers(-3, 3))
            value = f"({_int_text(draw, node.value - a)} + {_int_text(draw, a)})"
            scope.args.append(f"{name}={value}")
            return name
        if how == 2:
            name = scope.module.fresh("c")
            scope.lets.append(f"let {name} = {_int_text(draw, node.value)}")
            return name
        return _int_text(draw, node.value)
    if isinstance(node, ir.Bool):
        text = "true" if node.value else "false"
        if scope.params_allowed and draw(st.integers(0, 3)) == 0:
            name = scope.module.fresh("f")
            scope.params.append(f"{name}: bool = {text}")
            return name
        return text
    if isinstance(node, ir.Sym):
        return node.name
    r = lambda n: render(draw, n, scope)  # noqa: E731
    if isinstance(node, ir.IntOp):
        if node.op == "neg":
            return f"(-{r(node.args[0])})"
        if node.op in ("min", "max", "abs"):
            return f"{node.op}({', '.join(r(a) for a in node.args)})"
        return f"({r(node.args[0])} {node.op} {r(node.args[1])})"
    if isinstance(node, ir.Cmp):
        return f"({r(node.a)} {node.op} {r(node.b)})"
    if isinstance(node, ir.Logic):
        if node.op == "not":
            return f"(not {r(node.args[0])})"
        return "(" + f"{_sep(draw)}{node.op} ".join(r(a) for a in node.args) + ")"
    if isinstance(node, ir.Union):
        return "(" + f"{_sep(draw)}| ".join(r(a) for a in node.args) + ")"
    if isinstance(node, ir.Inter):
        return "(" + f"{_sep(draw)}& ".join(r(a) for a in node.args) + ")"
    if isinstance(node, ir.Diff):
        return f"({r(node.a)} - {r(node.b)})"
    if isinstance(node, ir.Compl):
        return f"(~{r(node.a)})"
    if isinstance(node, ir.Heads):
        parts = [_branch_text(draw, b, scope) for b in node.branches]
        trailing = "," if draw(st.booleans()) else ""
        return "(" + f",{_sep(draw)}".join(parts) + trailing + ")"
    if isinstance(node, ir.Atom):
        return _atom_text(draw, node, scope)
    raise TypeError(f"cannot render {node!r}")  # pragma: no cover


def _branch_text(draw, b: ir.Branch, scope: _Scope) -> str:
    if b.kind == "all":
        sel = "*"
    elif b.kind == "index":
        sel = render(draw, b.start, scope)
    else:
        start = "" if b.start is None else render(draw, b.start, scope)
        stop = "" if b.stop is None else render(draw, b.stop, scope)
        sel = f"{start}:{stop}"
    return f"heads[{sel}] => {render(draw, b.body, scope)}"


def _atom_text(draw, node: ir.Atom, scope: _Scope) -> str:
    sig = ATOMS[node.kind]
    if not sig.params:
        return draw(st.sampled_from((node.kind, node.kind + "()")))
    items = []
    for p, v in zip(sig.params, node.args):
        if p.default is not None and v == p.default and draw(st.booleans()):
            continue  # leave the default out
        if p.kind == "choice":
            text = str(v)
        else:
            text = render(draw, v, scope)
        items.append((p, text))
    # A positional prefix (in order), then keywords in any order.
    npos = draw(st.integers(0, len(items)))
    # Positional arguments must be the leading parameters, without gaps.
    leading = 0
    for i, (p, _) in enumerate(items):
        if p is sig.params[i]:
            leading = i + 1
        else:
            break
    npos = min(npos, leading)
    kw = items[npos:]
    kw = draw(st.permutations(kw)) if kw else kw
    parts = [t for _, t in items[:npos]] + [f"{p.name}={t}" for p, t in kw]
    if not parts:
        return node.kind
    return f"{node.kind}({', '.join(parts)})"


def _helper(draw, node: ir.Node, scope: _Scope) -> str:
    module = scope.module
    name = module.fresh("helper")
    inner = _Scope(module, True, scope.depth + 1)
    body = _body_text(draw, node, inner)
    module.helpers.append(_pattern_text(name, inner, body))
    if inner.args:
        return f"{name}({', '.join(inner.args)})"
    return draw(st.sampled_from((name, name + "()")))


def _body_text(draw, node: ir.Node, scope: _Scope) -> str:
    if isinstance(node, ir.Heads) and draw(st.booleans()):
        sep = draw(st.sampled_from(("\n    ", ";", "\n\n    # branch\n    ")))
        return sep.join(_branch_text(draw, b, scope) for b in node.branches)
    return render(draw, node, scope, False)


def _pattern_text(name: str, scope: _Scope, body: str) -> str:
    lets = "".join(f"    {let}\n" for let in scope.lets)
    return f"pattern {name}({', '.join(scope.params)}) {{\n{lets}    {body}\n}}\n"


@st.composite
def rendered_patterns(draw, max_depth: int = 3, dynamic: bool = False):
    """(source text, ir.Pattern): hand-written style .attn text (parameters with
    defaults, let statements, helper patterns called with and without keyword
    arguments, comments, line breaks in brackets) defining the pattern `ENTRY`
    (``compile_pattern(text, pattern=ENTRY)``), and the IR it must lower to."""
    p = draw(patterns(max_depth, dynamic, ENTRY))
    module = _Module()
    scope = _Scope(module, True, 0)
    scope.args = None  # the entry pattern's parameters all have defaults
    body = _body_text(draw, p.body, scope)
    parts = [f"# generated\n{h}" for h in module.helpers] + [_pattern_text(ENTRY, scope, body)]
    return "\n".join(parts), p


@_cached
def pattern_sources(max_depth: int = 3, dynamic: bool = False) -> st.SearchStrategy:
    """.attn source text that compiles, defining the pattern `ENTRY`: either a
    generated pattern printed by the IR printer, or hand-written style text
    (see `rendered_patterns`)."""
    printed = patterns(max_depth, dynamic, ENTRY).map(to_text)
    return _one_of(printed, rendered_patterns(max_depth, dynamic).map(lambda t: t[0]))
