"""Imports: where they resolve, and which files they may read (regular .attn
files of at most 1 MiB of UTF-8 text). Every refusal is a PatternError at the
import, and never shows a line of a file that is not an .attn file."""
from __future__ import annotations

import os
import threading

import pytest

import sparsedsl as sd
from sparsedsl.language.lower import MAX_FILE_BYTES

MAIN = 'import "lib.attn"\npattern main() { lib }\n'


def _lib(folder, body):
    (folder / "lib.attn").write_text(f"pattern lib() {{ {body} }}\n")


def _import_error(tmp_path, target: str, match: str) -> sd.PatternError:
    with pytest.raises(sd.PatternError, match=match) as e:
        sd.compile_pattern(f'import "{target}"\npattern main() {{ causal }}\n')
    assert e.value.span is not None and e.value.span.line == 1  # at the import
    return e.value


def test_source_text_resolves_against_a_dotted_working_directory(tmp_path, monkeypatch):
    # the folder's name has a suffix: it is still the folder, not a file in its parent
    run = tmp_path / "run.d"
    run.mkdir()
    _lib(run, "window(3)")
    _lib(tmp_path, "sink(2)")
    monkeypatch.chdir(run)
    assert sd.compile_pattern(MAIN).root.body is sd.window(3).node


def test_a_file_without_suffix_resolves_against_its_folder(tmp_path):
    _lib(tmp_path, "window(5)")
    (tmp_path / "main").write_text(MAIN)
    assert sd.compile_pattern(tmp_path / "main").root.body is sd.window(5).node


def test_imports_resolve_against_the_importing_files_folder(tmp_path, monkeypatch):
    sub = tmp_path / "sub.v1"
    sub.mkdir()
    _lib(sub, "window(7)")
    _lib(tmp_path, "sink(1)")
    (sub / "main.attn").write_text(MAIN)
    monkeypatch.chdir(tmp_path)
    assert sd.compile_pattern(sub / "main.attn").root.body is sd.window(7).node


def test_dev_zero_is_refused(tmp_path):
    _import_error(tmp_path, "/dev/zero", "only .attn files can be imported")
    os.symlink("/dev/zero", tmp_path / "zero.attn")  # an .attn name is not enough
    _import_error(tmp_path, str(tmp_path / "zero.attn"), "only .attn files can be imported")
    os.symlink("/dev/null", tmp_path / "null.attn")
    _import_error(tmp_path, str(tmp_path / "null.attn"), "only .attn files can be imported")


def test_a_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "pipe.attn"
    os.mkfifo(fifo)
    result = []

    def run():
        try:
            sd.compile_pattern(f'import "{fifo}"\npattern main() {{ causal }}\n')
            result.append(None)
        except Exception as e:  # noqa: BLE001 - reported below
            result.append(e)

    t = threading.Thread(target=run, daemon=True)  # (a daemon: a hang must not keep pytest alive)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "importing a FIFO blocked"
    assert isinstance(result[0], sd.PatternError) and "not a regular file" in str(result[0])
    with pytest.raises(sd.PatternError, match="not a regular file"):
        sd.compile_pattern(fifo)  # nor as the file to compile


def test_a_non_attn_file_is_never_shown(tmp_path):
    e = _import_error(tmp_path, "/etc/passwd", "only .attn files can be imported")
    assert "root:" not in str(e)
    os.symlink("/etc/passwd", tmp_path / "passwd.attn")
    e = _import_error(tmp_path, str(tmp_path / "passwd.attn"), "only .attn files can be imported")
    assert "root:" not in str(e)
    (tmp_path / "notes.txt").write_text("secret: 42\n")
    e = _import_error(tmp_path, str(tmp_path / "notes.txt"), "only .attn files")
    assert "secret" not in str(e)


def test_a_symlink_loop(tmp_path):
    os.symlink(tmp_path / "a.attn", tmp_path / "b.attn")
    os.symlink(tmp_path / "b.attn", tmp_path / "a.attn")
    _import_error(tmp_path, str(tmp_path / "a.attn"), "cannot read")


def test_a_directory(tmp_path):
    (tmp_path / "dir.attn").mkdir()
    _import_error(tmp_path, str(tmp_path / "dir.attn"), "a directory")


def test_file_size_limit(tmp_path):
    assert MAX_FILE_BYTES == 1 << 20
    head = "pattern lib() { causal }\n"
    at_limit = head + "#" * (MAX_FILE_BYTES - len(head) - 1) + "\n"
    (tmp_path / "lib.attn").write_text(at_limit)
    assert len((tmp_path / "lib.attn").read_bytes()) == MAX_FILE_BYTES
    (tmp_path / "main.attn").write_text(MAIN)
    assert sd.compile_pattern(tmp_path / "main.attn").root.body is sd.causal.node
    (tmp_path / "big.attn").write_text(at_limit + "\n")
    _import_error(tmp_path, str(tmp_path / "big.attn"), r"larger than 1048576 bytes \(1 MiB\)")
    with pytest.raises(sd.PatternError, match="1 MiB"):
        sd.compile_pattern(tmp_path / "big.attn")


def test_non_utf8_content(tmp_path):
    (tmp_path / "bad.attn").write_bytes(b"pattern lib() { causal }  # caf\xe9\n")
    _import_error(tmp_path, str(tmp_path / "bad.attn"), "not UTF-8 text")
    with pytest.raises(sd.PatternError, match="not UTF-8 text"):
        sd.compile_pattern(tmp_path / "bad.attn")
