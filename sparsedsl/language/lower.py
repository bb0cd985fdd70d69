"""Syntax tree -> IR: resolve names and imports, bind parameters, check types,
fold constants. Every mistake is a PatternError pointing at its source."""
from __future__ import annotations

import difflib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PatternError, Span
from ..ir import build
from ..ir import nodes as ir
from ..atoms import ATOMS, arg_problem, atom_problem, call_problem, choice_text
from ..ir.ranges import range_problem
from . import ast
from .parser import parse

BUILTIN_SYMBOLS = ("h", "H", "hk", "Hk", "q", "k")
INT_FUNCS = {"min": 2, "max": 2, "abs": 1}
PARAM_TYPES = ("int", "bool")
# values of an atom's choice written as calls (topk's score=attention(window=w, pool=p)): name -> (atom, param)
CHOICE_CALLS = {c.name: (name, p.name) for name, d in ATOMS.items() for p in d.params for c in p.calls}
MAX_CALL_DEPTH = 64  # pattern calls nest at most this deep
MAX_FILE_BYTES = 1 << 20  # an .attn file is at most 1 MiB


@dataclass
class ModuleInfo:
    """A parsed file with the patterns it can see (its own, then imported)."""

    module: ast.Module
    path: Path | None
    own: dict[str, ast.PatternDef] = field(default_factory=dict)
    imported: dict[str, tuple[ast.PatternDef, "ModuleInfo"]] = field(default_factory=dict)


class Loader:
    """Reads .attn files and their imports, once each; detects import cycles."""

    def __init__(self):
        self._files: dict[Path, ModuleInfo] = {}

    def load_file(self, path: Path, stack: tuple[Path, ...] = (), span: Span | None = None,
                  imported: bool = False) -> ModuleInfo:
        try:
            path = Path(os.path.abspath(path)).resolve()
        except (OSError, RuntimeError) as e:  # (a symlink loop is a RuntimeError before Python 3.13)
            raise PatternError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}", span) from None
        if imported and path.suffix != ".attn":  # (never show a line of some other file in an error)
            raise PatternError(f"cannot import {path}: only .attn files can be imported", span)
        if path in stack:
            chain = " -> ".join(p.name for p in (*stack, path))
            raise PatternError(f"import cycle: {chain}", span)
        if path in self._files:
            return self._files[path]
        text = read_source(path, span)
        info = self._load(parse(text, str(path)), path, (*stack, path), path.parent)
        self._files[path] = info
        return info

    def load_text(self, text: str, name: str = "<string>", base: Path | None = None) -> ModuleInfo:
        """Source text; its imports resolve against `base` (the working directory by default)."""
        return self._load(parse(text, name), None, (), Path(base) if base is not None else Path.cwd())

    def _load(self, module: ast.Module, path: Path | None, stack: tuple[Path, ...], folder: Path) -> ModuleInfo:
        info = ModuleInfo(module, path)
        for imp in module.imports:
            target = self.load_file(folder / imp.path, stack, imp.span, imported=True)
            visible = dict(target.imported)  # the imported file's own patterns win over its imports
            visible.update({n: (d, target) for n, d in target.own.items()})
            for name, entry in visible.items():
                info.imported.setdefault(name, entry)
        for pdef in module.patterns:
            if pdef.name in info.own:
                raise PatternError(f"pattern {pdef.name!r} is defined twice in this file", pdef.span)
            if pdef.name in ATOMS or pdef.name in INT_FUNCS or pdef.name in BUILTIN_SYMBOLS:
                raise PatternError(f"{pdef.name!r} is a built-in name; choose another pattern name", pdef.span)
            info.own[pdef.name] = pdef
        return info


def read_source(path: Path, span: Span | None = None) -> str:
    """The UTF-8 text of a regular file of at most MAX_FILE_BYTES, or a PatternError."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise PatternError(f"file not found: {path}", span) from None
    except OSError as e:
        raise PatternError(f"cannot read {path}: {e.strerror}", span) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise PatternError(f"cannot read {path}: {what}", span)
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise PatternError(f"cannot read {path}: {e.strerror}", span) from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise PatternError(f"cannot read {path}: larger than {MAX_FILE_BYTES} bytes (1 MiB)", span)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise PatternError(f"cannot read {path}: not UTF-8 text (byte {e.start})", span) from None


def suggest(name: str, candidates) -> tuple[str, ...]:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return (f"did you mean {close[0]!r}?",) if close else ()


class Lowerer:
    """Instantiates patterns into IR. `spans` maps each IR node to where it was written."""

    def __init__(self):
        self.spans: dict[ir.Node, Span] = {}
        self._depth = 0
        self._calls: dict[tuple, ir.Node] = {}  # a pattern called twice with the same arguments is lowered once

    # -- patterns ---------------------------------------------------------------------

    def instantiate(self, pdef: ast.PatternDef, info: ModuleInfo, args: dict[str, object],
                    call_span: Span | None, from_python: bool = False) -> ir.Node:
        """The IR mask of `pdef` with parameters bound from `args` (IR nodes or Python values)."""
        key = None if from_python else (id(pdef), id(info), tuple(sorted(args.items(), key=lambda kv: kv[0])))
        if key in self._calls:
            return self._calls[key]
        self._depth += 1
        if self._depth > MAX_CALL_DEPTH + 1:  # (the compiled pattern itself plus 64 nested calls)
            raise PatternError(f"patterns call each other more than {MAX_CALL_DEPTH} deep", call_span)
        try:
            env: dict[str, ir.Node] = {}
            names = [p.name for p in pdef.params]
            for name in args:
                if name not in names:
                    raise PatternError(f"pattern {pdef.name!r} has no parameter {name!r}", call_span,
                                       suggest(name, names) + (f"parameters: {', '.join(names) or 'none'}",))
            for p in pdef.params:
                if p.type not in PARAM_TYPES:
                    raise PatternError(f"unknown parameter type {p.type!r}; expected int or bool", p.span)
                if p.name in env:
                    raise PatternError(f"parameter {p.name!r} is declared twice", p.span)
                if p.name in BUILTIN_SYMBOLS:
                    raise PatternError(f"{p.name!r} is a built-in name and cannot be a parameter", p.span)
                if p.name in args:
                    value = self._python_value(args[p.name], p, pdef, call_span) if from_python else args[p.name]
                elif p.default is not None:
                    value = self.expr(p.default, env, info, pdef)
                else:
                    how = f"pass {p.name}=... to compile_pattern" if from_python or call_span is None \
                        else f"pass {p.name}=... in the call"
                    raise PatternError(f"missing required parameter {p.name!r} of pattern {pdef.name!r}",
                                       call_span or p.span, (how,))
                env[p.name] = self._check_param_type(value, p, pdef, call_span)
            for let in pdef.lets:
                if let.name in BUILTIN_SYMBOLS:
                    raise PatternError(f"{let.name!r} is a built-in name and cannot be redefined", let.span)
                env[let.name] = self.expr(let.value, env, info, pdef)
            body = self.expr(pdef.body, env, info, pdef)
            if not ir.is_mask(body):
                raise PatternError(f"the body of pattern {pdef.name!r} must be a mask, got {_kind(body)}",
                                   pdef.body.span)
            if key is not None:
                self._calls[key] = body
            return body
        finally:
            self._depth -= 1

    def _python_value(self, value, p: ast.Param, pdef, span) -> ir.Node:
        if isinstance(value, ir.Node):
            return value
        if p.type == "bool" and isinstance(value, bool):
            return ir.Bool(value)
        if p.type == "int" and isinstance(value, int) and not isinstance(value, bool):
            problem = range_problem(ir.Const(value))
            if problem:
                raise PatternError(f"parameter {p.name!r} of pattern {pdef.name!r}: {problem}", p.span,
                                   (f"given from Python as {p.name}={value}",))
            return ir.Const(value)
        raise PatternError(f"parameter {p.name!r} of pattern {pdef.name!r} is {p.type}, got {value!r}",
                           p.span)

    def _check_param_type(self, value: ir.Node, p: ast.Param, pdef, span) -> ir.Node:
        ok = ir.is_int(value) if p.type == "int" else ir.is_bool(value)
        if not ok:
            raise PatternError(f"parameter {p.name!r} of pattern {pdef.name!r} is {p.type}, got {_kind(value)}",
                               span or p.span)
        if ir.symbols(value) & {"q", "k"}:
            raise PatternError(f"parameter {p.name!r} may not depend on q or k", span or p.span)
        problem = range_problem(value) if ir.is_int(value) else None
        if problem:  # (IR nodes given from Python; lowered values were checked when built)
            raise PatternError(f"parameter {p.name!r} of pattern {pdef.name!r}: {problem}", span or p.span)
        return value

    # -- expressions -------------------------------------------------------------------

    def expr(self, e: ast.Expr, env, info: ModuleInfo, pdef: ast.PatternDef) -> ir.Node:
        # A chain of binary operators (a | b | c ..., left-associative) or of prefix
        # operators is lowered in a loop, so that a long flat chain does not recurse.
        spine, x = [], e
        while isinstance(x, (ast.BinOp, ast.UnaryOp)):
            spine.append(x)
            x = x.left if isinstance(x, ast.BinOp) else x.operand
        node = self._checked(x, self._expr, x, env, info, pdef)
        for y in reversed(spine):
            if isinstance(y, ast.BinOp):
                right = self.expr(y.right, env, info, pdef)
                node = self._checked(y, self._binop, y, node, right)
            else:
                node = self._checked(y, self._unary, y, node)
        return node

    def _checked(self, e: ast.Expr, make, *args) -> ir.Node:
        """make(*args), the node of `e`; an integer must stay in range; remember its span."""
        try:
            node = make(*args)
        except ZeroDivisionError:
            raise PatternError("division or modulo by zero", e.span) from None
        problem = range_problem(node, _source_text(e.span)) if ir.is_int(node) else None
        if problem:
            raise PatternError(problem, e.span)
        self.spans.setdefault(node, e.span)
        return node

    def _expr(self, e, env, info, pdef) -> ir.Node:
        sub = lambda x: self.expr(x, env, info, pdef)  # noqa: E731
        if isinstance(e, ast.Num):
            return ir.Const(e.value)
        if isinstance(e, ast.BoolLit):
            return ir.Bool(e.value)
        if isinstance(e, ast.Name):
            return self._name(e, env, info, pdef)
        if isinstance(e, ast.Call):
            return self._call(e, env, info, pdef)
        if isinstance(e, ast.Compare):
            values = [self._want_int(sub(x), x, "a comparison") for x in e.operands]
            parts = [build.cmp(op, a, b) for op, a, b in zip(e.ops, values, values[1:])]
            return parts[0] if len(parts) == 1 else build.logic("and", *parts)
        if isinstance(e, ast.HeadSwitch):
            return ir.Heads(tuple(self._branch(b, env, info, pdef) for b in e.branches))
        raise PatternError(f"unsupported expression {type(e).__name__}", e.span)  # pragma: no cover

    def _unary(self, e: ast.UnaryOp, value: ir.Node) -> ir.Node:
        if e.op == "-":
            return build.int_op("neg", self._want_int(value, e.operand, "'-'"))
        if e.op == "~":
            if ir.is_bool(value):
                raise PatternError("'~' complements a mask; for a condition use 'not'", e.span)
            return build.compl(self._want_mask(value, e.operand, "'~'"))
        return build.logic("not", self._want_bool(value, e.operand, "'not'"))

    def _binop(self, e: ast.BinOp, a: ir.Node, b: ir.Node) -> ir.Node:
        op = e.op
        if op in ("and", "or"):
            return build.logic(op, self._want_bool(a, e.left, f"'{op}'"), self._want_bool(b, e.right, f"'{op}'"))
        if op in ("|", "&"):
            if ir.is_bool(a) or ir.is_bool(b):
                word = "or" if op == "|" else "and"
                raise PatternError(f"'{op}' combines masks; for conditions use '{word}'", e.span)
            if ir.is_int(a) or ir.is_int(b):
                word = "or" if op == "|" else "and"
                raise PatternError(f"'{op}' combines masks, got an integer; it binds tighter than comparisons, "
                                   f"so combine conditions with '{word}'", e.span)
            return build.union(a, b) if op == "|" else build.inter(a, b)
        if op == "-" and (ir.is_mask(a) or ir.is_mask(b)):
            return build.diff(self._want_mask(a, e.left, "'-'"), self._want_mask(b, e.right, "'-'"))
        a, b = self._want_int(a, e.left, f"'{op}'"), self._want_int(b, e.right, f"'{op}'")
        if op in ("//", "%"):
            if ir.symbols(b) & {"q", "k"}:
                raise PatternError(f"the divisor of '{op}' may not depend on q or k", e.right.span)
            if isinstance(b, ir.Const) and b.value == 0:
                raise PatternError(f"'{op}' by zero", e.right.span)
        return build.int_op(op, a, b)

    def _branch(self, b: ast.Branch, env, info, pdef) -> ir.Branch:
        bounds = []
        for x in (b.start, b.stop):
            if x is None:
                bounds.append(None)
                continue
            v = self._want_int(self.expr(x, env, info, pdef), x, "a head selection")
            bad = ir.symbols(v) & {"h", "hk", "q", "k"}
            if bad:
                raise PatternError(f"a head selection may use H and Hk but not {sorted(bad)[0]}", x.span)
            bounds.append(v)
        body = self._want_mask(self.expr(b.body, env, info, pdef), b.body, "a heads[...] branch")
        node = ir.Branch(b.kind, bounds[0], bounds[1], body)
        self.spans.setdefault(node, b.span)
        return node

    def _name(self, e: ast.Name, env, info: ModuleInfo, pdef) -> ir.Node:
        name = e.id
        if name in env:
            return env[name]
        if name in BUILTIN_SYMBOLS:
            return ir.Sym(name)
        if name in ATOMS:
            return self._atom(name, (), (), e.span, env, info, pdef)
        target = self._lookup_pattern(name, e.span, info, pdef)
        if target is not None:
            return self.instantiate(target[0], target[1], {}, e.span)
        if name in INT_FUNCS:
            raise PatternError(f"{name!r} is a function; call it as {name}(...)", e.span)
        if name in CHOICE_CALLS:
            raise _choice_call_elsewhere(name, e.span)
        known = list(env) + list(BUILTIN_SYMBOLS) + list(ATOMS) + list(self._visible(info, pdef))
        raise PatternError(f"unknown name {name!r}", e.span, suggest(name, known))

    def _visible(self, info: ModuleInfo, pdef) -> list[str]:
        own = list(info.own)
        earlier = own[: own.index(pdef.name)] if pdef.name in own else own
        return earlier + list(info.imported)

    def _lookup_pattern(self, name, span, info: ModuleInfo, pdef):
        own = list(info.own)
        if name in info.own and (pdef.name not in own or own.index(name) < own.index(pdef.name)):
            return info.own[name], info
        if name in info.own:
            why = "itself" if name == pdef.name else "a pattern defined later in the file"
            raise PatternError(f"pattern {pdef.name!r} cannot use {why} ({name!r}); "
                               "a pattern may use only imported or earlier patterns", span)
        return info.imported.get(name)

    def _call(self, e: ast.Call, env, info, pdef) -> ir.Node:
        name = e.func
        if name in INT_FUNCS:
            if e.kwargs or len(e.args) != INT_FUNCS[name]:
                raise PatternError(f"{name}() takes {INT_FUNCS[name]} positional argument(s)", e.span)
            values = [self._want_int(self.expr(a, env, info, pdef), a, f"{name}()") for a in e.args]
            return build.int_op(name, *values)
        if name in ATOMS:
            return self._atom(name, e.args, e.kwargs, e.span, env, info, pdef)
        target = self._lookup_pattern(name, e.span, info, pdef)
        if target is not None:
            if e.args:
                raise PatternError(f"pass the parameters of pattern {name!r} by name, e.g. {name}(x=1)",
                                   e.args[0].span)
            args: dict[str, ir.Node] = {}
            for kw in e.kwargs:
                if kw.name in args:
                    raise PatternError(f"parameter {kw.name!r} given twice", kw.span)
                args[kw.name] = self.expr(kw.value, env, info, pdef)
            return self.instantiate(target[0], target[1], args, e.span)
        if name in env or name in BUILTIN_SYMBOLS:
            raise PatternError(f"{name!r} is a value, not a function or pattern", e.span)
        if name in CHOICE_CALLS:
            raise _choice_call_elsewhere(name, e.span)
        known = list(ATOMS) + list(INT_FUNCS) + self._visible(info, pdef)
        raise PatternError(f"unknown atom or pattern {name!r}", e.span, suggest(name, known))

    def _atom(self, name, args, kwargs, span, env, info, pdef) -> ir.Node:
        sig = ATOMS[name]
        pnames = [p.name for p in sig.params]
        usage = f"{name}({', '.join(pnames)})" if pnames else name
        if len(args) > len(sig.params):
            raise PatternError(f"{name} takes {len(sig.params)} argument(s), got {len(args)}", span,
                               (f"usage: {usage}",))
        given: dict[str, ast.Expr] = dict(zip(pnames, args))
        for kw in kwargs:
            if kw.name not in pnames:
                raise PatternError(f"{name} has no argument {kw.name!r}", kw.span,
                                   suggest(kw.name, pnames) + (f"usage: {usage}",))
            if kw.name in given:
                raise PatternError(f"argument {kw.name!r} of {name} given twice", kw.span)
            given[kw.name] = kw.value
        values = []
        for p in sig.params:
            if p.name not in given:
                if p.default is None:
                    raise PatternError(f"{name} needs its argument {p.name!r}", span, (f"usage: {usage}",))
                values.append(p.default)
                continue
            x = given[p.name]
            if p.kind == "choice":
                values.append(self._choice(name, p, x, env, info, pdef))
                continue
            v = self.expr(x, env, info, pdef)
            values.append(self._atom_value(name, p, v, x.span))
        problem = atom_problem(name, tuple(values))
        if problem:
            raise PatternError(problem, span)
        node = ir.Atom(name, tuple(values))
        self.spans.setdefault(node, span)
        return node

    def _choice(self, atom: str, p, x: ast.Expr, env, info, pdef):
        """A choice argument: one of p.choices written as a name, or a call value (p.calls) written
        as name(field=integer, ...) with integers the same for every head."""
        if isinstance(x, ast.Name) and x.id in p.choices:
            return x.id
        call = next((c for c in p.calls if isinstance(x, ast.Call) and x.func == c.name), None)
        if call is None:
            raise PatternError(f"{p.name} of {atom} must be {choice_text(p)}", x.span)
        usage = (f"usage: {call.name}({', '.join(f + '=...' for f in call.fields())})",)
        if x.args:
            raise PatternError(f"pass the arguments of {call.name}(...) by name", x.args[0].span, usage)
        given = {}
        for kw in x.kwargs:
            if kw.name not in call.fields():
                raise PatternError(f"{call.name}(...) has no argument {kw.name!r}", kw.span,
                                   suggest(kw.name, call.fields()) + usage)
            if kw.name in given:
                raise PatternError(f"argument {kw.name!r} of {call.name}(...) given twice", kw.span)
            v = self._want_int(self.expr(kw.value, env, info, pdef), kw.value, f"{kw.name} of {call.name}(...)")
            if not isinstance(v, ir.Const):
                uses = ", ".join(sorted(ir.symbols(v))) or "a non-constant expression"
                raise PatternError(f"{kw.name} of {call.name}(...) must be the same for every head (it uses {uses})",
                                   kw.value.span)
            if v.value < call.minimum:
                raise PatternError(f"{kw.name} of {call.name}(...) must be at least {call.minimum}, got {v.value}",
                                   kw.value.span)
            given[kw.name] = v.value
        missing = [f for f in call.fields() if f not in given]
        if missing:
            raise PatternError(f"{call.name}(...) needs its argument {missing[0]!r}", x.span, usage)
        value = call(**given)
        problem = call_problem(atom, value)
        if problem:
            raise PatternError(problem, x.span)
        return value

    def _atom_value(self, name, p, v: ir.Node, span: Span) -> ir.Node:
        problem = arg_problem(name, p, v)
        if problem:
            raise PatternError(problem, span)
        return v

    # -- type checks -------------------------------------------------------------------

    def _want(self, v, test, want: str, e, where: str, span=None):
        if not test(v):
            raise PatternError(f"{where} needs {want}, got {_kind(v)}", span or e.span)
        return v

    def _want_int(self, v, e, where, span=None):
        return self._want(v, ir.is_int, "an integer", e, where, span)

    def _want_bool(self, v, e, where, span=None):
        return self._want(v, ir.is_bool, "a condition", e, where, span)

    def _want_mask(self, v, e, where, span=None):
        return self._want(v, ir.is_mask, "a mask", e, where, span)


def _choice_call_elsewhere(name: str, span: Span) -> PatternError:
    atom, param = CHOICE_CALLS[name]
    return PatternError(f"{name}(...) is a value of {atom}'s {param}, not a mask or an integer: write it as "
                        f"{atom}(..., {param}={name}(...))", span,
                        ("for example: topk(1024, block=1, score=attention(window=32, pool=7))",))


def _source_text(span: Span) -> str | None:
    """The text under a one-line span, when short (to name an expression in a message)."""
    if span.end_line != span.line or not 0 < span.end_col - span.col <= 80:
        return None
    return span.source.line(span.line)[span.col - 1:span.end_col - 1]


def _kind(v: ir.Node) -> str:
    if ir.is_int(v):
        return "an integer"
    if ir.is_bool(v):
        return "a condition"
    return "a mask"
