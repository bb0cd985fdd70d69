"""The generated-kernel cache (sparsedsl/kernels/cache.py): kernels run from the
text generated in this process, never from what lies on disk; the disk copy is
private (0700 folder, 0600 files) and any trouble with it falls back to memory."""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import stat
import threading
import warnings
from pathlib import Path

import pytest

from sparsedsl.kernels import cache


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A fresh cache folder (SPARSEDSL_CACHE_DIR), no folder refused yet."""
    monkeypatch.setenv("SPARSEDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPARSEDSL_DUMP", raising=False)
    monkeypatch.setattr(cache, "_REFUSED", {})
    return tmp_path / "cache" / "kernels"


_COUNT = iter(range(10**9))


def fresh(body: str = "def f():\n    return X\n") -> tuple[str, str]:
    """A source no test has loaded yet, and its file name in the cache."""
    n = next(_COUNT)
    src = f"# test source {n}\nX = {n}\n{body}"
    return src, f"k_{hashlib.sha256(src.encode()).hexdigest()[:20]}.py"


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_planted_bytecode_never_runs(folder):
    # a .pyc whose header matches the .py's mtime and size is what Python's importer runs instead of the .py
    from importlib._bootstrap_external import _code_to_timestamp_pyc

    src, name = fresh()
    folder.mkdir(parents=True, mode=0o700)
    path = folder / name
    path.write_text(src)
    path.chmod(0o600)
    st = os.stat(path)
    code = compile(src.replace("\nX = ", "\nX = 'planted' or ", 1), str(path), "exec")
    pyc = Path(importlib.util.cache_from_source(str(path)))
    pyc.parent.mkdir()
    pyc.write_bytes(_code_to_timestamp_pyc(code, st.st_mtime, st.st_size))
    assert cache.load_source(src, "k").X != "planted"


def test_planted_source_never_runs(folder):
    src, name = fresh()
    folder.mkdir(parents=True, mode=0o700)
    (folder / name).write_text(src.replace("\nX = ", "\nX = 'planted' or ", 1))
    assert cache.load_source(src, "k").X != "planted"
    assert (folder / name).read_text() == src  # the copy is rewritten to the verified text
    assert not (folder / "__pycache__").exists()  # no bytecode is ever written


def test_private_folder_and_files_whatever_the_umask(folder):
    old = os.umask(0)
    try:
        src, name = fresh()
        module = cache.load_source(src, "k")
    finally:
        os.umask(old)
    assert mode(folder) == 0o700 and mode(folder / name) == 0o600
    assert (folder / name).read_text() == src
    assert inspect.getsource(module.f).startswith("def f")  # inspect reads the text (Triton's @jit needs it)
    assert inspect.getsourcefile(module.f) == str(folder / name)


def test_source_is_read_from_memory_not_disk(folder):
    src, name = fresh()
    module = cache.load_source(src, "k")
    (folder / name).write_text(src.replace("return X", "return 'planted'"))
    assert "planted" not in inspect.getsource(module.f)


def _refused(folder, why: str) -> None:
    src, _ = fresh()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert cache.load_source(src, "k").f() == cache.load_source(src, "k").X
        assert cache.load_source(fresh()[0], "k").f() is not None  # the second kernel: no second warning
    assert len(seen) == 1, [str(w.message) for w in seen]
    assert str(folder) in str(seen[0].message) and why in str(seen[0].message)


def test_folder_writable_by_others_is_refused(folder):
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    _refused(folder, "writable by group or others")
    assert os.listdir(folder) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_folder_of_another_user_is_refused(folder):
    folder.mkdir(parents=True, mode=0o700)
    os.chown(folder, 4242, 4242)
    _refused(folder, "owned by another user")
    assert os.listdir(folder) == []


def test_cache_path_that_is_a_file_falls_back_to_memory(folder):
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")
    _refused(folder, "cannot create")


def test_uncreatable_folder_falls_back_to_memory(folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.os, "mkdir", refuse)
    monkeypatch.setattr(cache.os, "makedirs", refuse)
    _refused(folder, "cannot create")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_falls_back_to_memory(folder):
    folder.mkdir(parents=True, mode=0o700)
    folder.chmod(0o500)
    try:
        _refused(folder, "cannot write")
    finally:
        folder.chmod(0o700)


def test_unwritable_file_falls_back_to_memory(folder, monkeypatch):
    real = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(cache.os, "open", refuse)
    _refused(folder, "cannot write")


def test_off_keeps_everything_in_memory(folder, monkeypatch):
    monkeypatch.setenv("SPARSEDSL_CACHE_DIR", "off")
    src, _ = fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = cache.load_source(src, "k")
    assert module.f() == module.X and inspect.getsource(module.f).startswith("def f")
    assert not folder.parent.exists()


def test_dump_writes_every_kernel(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEDSL_DUMP", str(tmp_path / "dump"))
    monkeypatch.setenv("SPARSEDSL_CACHE_DIR", "off")
    src, name = fresh()
    cache.load_source(src, "k")
    assert (tmp_path / "dump" / name).read_text() == src


def test_a_file_that_is_not_utf8_is_a_miss(folder):
    src, name = fresh()
    folder.mkdir(parents=True, mode=0o700)
    (folder / name).write_bytes(b"\xff\xfe not utf-8 \x80")
    assert cache.load_source(src, "k").f() is not None
    assert (folder / name).read_text() == src


def test_threads_load_a_new_source_at_once(folder):
    # the first use from several threads: one module, no clash of temporary files
    for _ in range(30):
        src, name = fresh()
        got, errors, start = [], [], threading.Barrier(8)

        def work():
            start.wait()
            try:
                got.append(cache.load_source(src, "k"))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len({id(m) for m in got}) == 1 and (folder / name).read_text() == src
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="checks Triton's @jit in the interpreter")
def test_triton_jit_reads_the_verified_text(folder):
    import torch

    from sparsedsl.kernels.launch import interpreter_ready

    if not interpreter_ready():
        pytest.skip("triton was imported without TRITON_INTERPRET=1")
    body = ("import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef add_one(X):\n"
            "    tl.store(X + tl.arange(0, 16), tl.load(X + tl.arange(0, 16)) + ONE)\n")
    src, name = fresh(body.replace("ONE", "1"))
    module = cache.load_source(src, "k")
    (folder / name).write_text(src.replace("+ 1)", "+ 100)"))  # changed on disk after the load: not read
    x = torch.zeros(16)
    module.add_one[(1,)](x)
    assert torch.equal(x, torch.ones(16))
