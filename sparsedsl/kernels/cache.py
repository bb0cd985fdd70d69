"""Generated kernels as modules, compiled from the text generated in this
process (content-addressed: same source -> same module object while in use).

What lies on disk is never executed: no import, no .pyc. A copy of each kernel
is written for reading (tracebacks, editors) under SPARSEDSL_CACHE_DIR, else
$XDG_CACHE_HOME/sparsedsl or ~/.cache/sparsedsl (folder `kernels`, 0700, files
0600), only into a folder owned by this user and not writable by others;
otherwise no copy is written, with one warning per folder (none with
SPARSEDSL_CACHE_DIR=off). SPARSEDSL_DUMP=dir also writes every kernel there.

Modules in use (a live pattern's kernels hold theirs) stay shared; of the
others, the MAX_MODULES most recently used are kept."""
from __future__ import annotations

import hashlib
import linecache
import os
import secrets
import stat
import sys
import threading
import types
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path

MAX_MODULES = 256
_MODULES: weakref.WeakValueDictionary[str, types.ModuleType] = weakref.WeakValueDictionary()  # digest -> module
_RECENT: OrderedDict[str, types.ModuleType] = OrderedDict()  # the MAX_MODULES last used, kept alive
_REFUSED: dict[str, str] = {}  # cache folder -> why it is not used (warned once)
_LOCK = threading.RLock()


def cache_dir() -> Path | None:
    """The folder of the disk copies; None with SPARSEDSL_CACHE_DIR=off."""
    base = os.environ.get("SPARSEDSL_CACHE_DIR")
    if base and base.lower() == "off":
        return None
    base = base or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "sparsedsl")
    return Path(base) / "kernels"


def load_source(src: str, stem: str) -> types.ModuleType:
    """The module of generated source `src`, executed from `src` itself."""
    digest = hashlib.sha256(src.encode()).hexdigest()[:20]
    with _LOCK:
        module = _MODULES.get(digest)
        if module is not None:
            _keep(digest, module)
            return module
    name = f"{stem}_{digest}.py"
    filename = _save(src, name)  # outside the lock: threads may write at once (unique temporary files)
    dump = os.environ.get("SPARSEDSL_DUMP")
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / name).write_text(src)
    with _LOCK:
        module = _MODULES.get(digest)
        if module is None:
            module = _MODULES[digest] = _execute(src, f"sparsedsl_generated_{stem}_{digest}", filename)
        _keep(digest, module)
        return module


def _keep(digest: str, module: types.ModuleType) -> None:
    _RECENT[digest] = module
    _RECENT.move_to_end(digest)
    while len(_RECENT) > MAX_MODULES:
        _RECENT.popitem(last=False)


def _execute(src: str, name: str, filename: str) -> types.ModuleType:
    # inspect (Triton's @jit, and its interpreter when it first runs a kernel) reads
    # source through linecache: give it the verified text, so it never reads the disk
    entry = (len(src), None, src.splitlines(keepends=True), filename)
    linecache.cache[filename] = entry
    module = types.ModuleType(name)  # not in sys.modules: it goes when unused
    module.__file__ = filename
    try:
        exec(compile(src, filename, "exec", dont_inherit=True), module.__dict__)
    except BaseException:
        _release(filename, entry, module.__dict__)
        raise
    weakref.finalize(module, _release, filename, entry, module.__dict__).atexit = False  # nothing to do at exit
    return module


def _release(filename: str, entry, namespace: dict) -> None:
    """A module is gone: drop its lines, and the references Triton keeps to every
    kernel it has seen (its registry of @jit functions, the interpreter's rewrites)."""
    if linecache.cache.get(filename) is entry:
        linecache.cache.pop(filename, None)
    jit, interpreter = sys.modules.get("triton.runtime.jit"), sys.modules.get("triton.runtime.interpreter")
    tables = (getattr(jit, "_triton_jit_function_registry", None),
              getattr(getattr(interpreter, "InterpretedFunction", None), "rewritten_fn", None))
    for table in tables:
        if isinstance(table, dict):
            for key, value in list(table.items()):
                if getattr(key, "__globals__", None) is namespace or getattr(value, "__globals__", None) is namespace:
                    table.pop(key, None)


def _save(src: str, name: str) -> str:
    """The disk copy's path, or a name for a kernel kept in memory only."""
    folder = cache_dir()
    memory = f"<sparsedsl kernel {name}>"
    if folder is None or str(folder) in _REFUSED:
        return memory
    why = _private_folder(folder)
    if why is None:
        try:
            path = folder / name
            data = src.encode()
            if not _holds(path, data):  # missing, changed, not ours, not private, or not UTF-8: rewrite
                _write(folder, path, data)
            return str(path)
        except OSError as e:
            why = f"cannot write into it ({e})"
    with _LOCK:
        if str(folder) not in _REFUSED:
            _REFUSED[str(folder)] = why
            warnings.warn(f"sparsedsl: not writing kernels into the cache folder {folder}: {why}; they are kept "
                          "in memory only (SPARSEDSL_CACHE_DIR=off does so without this warning)", stacklevel=3)
    return memory


def _private_folder(folder: Path) -> str | None:
    """Create `folder` (0700) if missing; None when it is safe to write into, else why not."""
    try:
        os.makedirs(folder.parent, mode=0o700, exist_ok=True)
        try:
            os.mkdir(folder, 0o700)
            os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask
        except FileExistsError:
            pass
        st = os.lstat(folder)
    except OSError as e:
        return f"cannot create it ({e})"
    if not stat.S_ISDIR(st.st_mode):
        return "cannot create it (a file or link is in the way)"
    if st.st_uid != os.geteuid():
        return f"it is owned by another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _holds(path: Path, data: bytes) -> bool:
    """True when `path` is this user's private regular file holding exactly `data`."""
    try:
        st = os.lstat(path)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077
                or st.st_size != len(data)):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _write(folder: Path, path: Path, data: bytes) -> None:
    # a temporary name of its own per process and thread, then an atomic rename
    tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # whatever the umask
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
