"""The command line: exit codes, what it prints, the PNG it writes."""
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import sparsedsl
from sparsedsl.cli import main
from sparsedsl.render import block_picture

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = sorted((ROOT / "patterns").glob("*.attn"))


def test_check_all_shipped_patterns(capsys):
    assert main(["check", *map(str, PATTERNS), "--heads", "16", "--kv-heads", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(PATTERNS)


def test_check_reports_errors_with_caret_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.attn"
    bad.write_text("pattern p() {\n    causal & windw(8)\n}\n")
    good = tmp_path / "good.attn"
    good.write_text("pattern g() { causal }\n")
    assert main(["check", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "good.attn: ok" in captured.out
    assert f"{bad}:2:14: error: unknown atom or pattern 'windw'" in captured.err
    assert "did you mean 'window'?" in captured.err
    lines = captured.err.splitlines()
    src = next(i for i, line in enumerate(lines) if "causal & windw(8)" in line)
    assert lines[src + 1].index("^") == lines[src].index("windw")


def test_check_head_count_error(tmp_path, capsys):
    f = tmp_path / "h.attn"
    f.write_text("pattern p() {\n  heads[0:2] => causal\n}\n")
    assert main(["check", str(f)]) == 0
    assert main(["check", str(f), "--heads", "4"]) == 1
    assert "head 2 is not covered" in capsys.readouterr().err


@pytest.mark.parametrize("path", PATTERNS, ids=lambda p: p.stem)
def test_show_draws_every_shipped_pattern(path, capsys):
    text = path.read_text()
    names = [line.split()[1].split("(")[0] for line in text.splitlines() if line.startswith("pattern ")]
    for name in names:
        assert main(["show", str(path), "--pattern", name, "--len", "256", "--heads", "4",
                     "--kv-heads", "2", "--cells", "16", "--ascii"]) == 0
        out = capsys.readouterr().out
        rows = [line for line in out.splitlines() if line.startswith("|")]
        assert len(rows) == 16 and all(len(r) == 18 for r in rows)
        density = float(out.split("density ")[1].split()[0])
        assert 0.0 < density <= 1.0


def test_show_picture_matches_mask(capsys):
    src = "pattern w() { causal & window(4) }"
    p = sparsedsl.compile_pattern(src)
    expected = block_picture(p.mask(16)[0], 16, "ascii")
    # independent: element (i, j) visible iff i - 4 < j <= i
    rows = ["".join("#" if i - 4 < j <= i else "." for j in range(16)) for i in range(16)]
    assert expected.splitlines() == rows


def test_show_png_is_a_valid_image(tmp_path):
    out = tmp_path / "s2.png"
    assert main(["show", str(ROOT / "patterns" / "streaming_llm.attn"), "--len", "300", "--heads", "2",
                 "--png", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (300 * 2 + 8, 300)
    # decode IDAT and check a pixel: the diagonal is visible (dark), the upper triangle is not (white)
    idat = data[data.index(b"IDAT") + 4: data.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    row = lambda y: raw[y * (width + 1) + 1:(y + 1) * (width + 1)]  # noqa: E731
    assert row(100)[100] == 0 and row(100)[200] == 255


def test_ir_round_trips(capsys):
    assert main(["ir", str(ROOT / "patterns" / "duo_attention.attn"), "--pattern", "duo_attention",
                 "-p", "retrieval=3", "--graph"]) == 0
    out = capsys.readouterr().out
    text = out.split("# ")[0]
    again = sparsedsl.compile_pattern(text)
    direct = sparsedsl.compile_pattern(ROOT / "patterns" / "duo_attention.attn", pattern="duo_attention",
                                       retrieval=3)
    assert again.root.body is direct.root.body
    assert "heads[0:3] => causal" in text


def test_bad_param_syntax_exits():
    with pytest.raises(SystemExit):
        main(["ir", str(ROOT / "patterns" / "streaming_llm.attn"), "-p", "window"])


def test_demo_runs_as_a_module():
    res = subprocess.run([sys.executable, "-m", "sparsedsl", "demo"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "-> OK" in res.stdout
    err = float(res.stdout.split("max abs error ")[1].split()[0])
    assert err < 1e-4


def test_cli_errors_are_not_tracebacks(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sparsedsl", "show", str(tmp_path / "missing.attn")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "file not found" in res.stderr


def test_block_picture_partial_tiles():
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[:4, :4] = True
    m[5, 6] = True
    assert block_picture(m, 2, "ascii").splitlines() == ["#.", ".+"]
