"""The command line: exit codes, what it prints, the PNG it writes."""
import os
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


SHOW_FILE = str(ROOT / "patterns" / "streaming_llm.attn")


@pytest.mark.parametrize("flags, message", [
    (["--len", "0"], "--len must be >= 1, got 0"),
    (["--kv-len", "0"], "--kv-len must be >= 1, got 0"),
    (["--cells", "0"], "--cells must be >= 1, got 0"),
    (["--heads", "0"], "--heads must be >= 1, got 0"),
    (["--heads", "4", "--kv-heads", "3"], "--kv-heads (3) must divide --heads (4)"),
    (["--heads", "2", "--head", "2"], "--head must be in [0, 2), got 2"),
])
def test_show_bad_flags_exit_with_a_message(flags, message):
    with pytest.raises(SystemExit) as e:
        main(["show", SHOW_FILE, "--len", "64", *flags])
    assert str(e.value) == f"sparsedsl: {message}"


def test_show_png_into_a_missing_folder(tmp_path):
    target = tmp_path / "nowhere" / "x.png"
    res = subprocess.run([sys.executable, "-m", "sparsedsl", "show", SHOW_FILE, "--len", "64", "--png",
                          str(target)], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert f"the folder {tmp_path / 'nowhere'} does not exist" in res.stderr
    assert not target.parent.exists()
    with pytest.raises(SystemExit) as e:
        main(["show", SHOW_FILE, "--len", "64", "--png", str(tmp_path)])
    assert str(e.value) == f"sparsedsl: --png {tmp_path} is a folder; give a file name"


def test_show_long_sequence_is_sampled(capsys, tmp_path):
    # L = 10^6: the dense mask would be 10^12 pairs; the picture comes from a sample of each tile.
    png = tmp_path / "long.png"
    assert main(["show", SHOW_FILE, "-p", "window=4096", "--len", "1000000", "--cells", "20", "--ascii",
                 "--png", str(png)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert len(rows) == 20 and all(len(r) == 22 for r in rows)
    assert "# sampled:" in out and "(sampled: " in out.split("density ")[1].splitlines()[0]
    # causal & (sink(4) | window(4096)): the sink column and the diagonal are partly visible, the rest empty
    for i, r in enumerate(rows):
        expect = ["+" if j == 0 or j in (i - 1, i) else "." for j in range(20)]
        assert r[1:-1] == "".join(expect), (i, r)
    density = float(out.split("density ")[1].split()[0])
    assert density == pytest.approx((4096 + 4) / 1e6, rel=0.1)  # about (window + sink) / L
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "sampled)" in out


def test_show_small_lengths_are_exact_not_sampled(capsys):
    assert main(["show", SHOW_FILE, "-p", "window=8", "--len", "64", "--cells", "8", "--ascii"]) == 0
    out = capsys.readouterr().out
    assert "sampled" not in out
    rows = [line[1:-1] for line in out.splitlines() if line.startswith("|")]
    # causal & (sink(4) | window(8)) in 8 x 8 tiles: sink column 0, the diagonal tile and the one left of it
    assert rows == ["".join("+" if j in (0, i - 1, i) else "." for j in range(8)) for i in range(8)]
    p = sparsedsl.compile_pattern(SHOW_FILE, window=8)
    assert rows == block_picture(p.mask(64)[0], 8, "ascii").splitlines()
    assert out.split("density ")[1].split()[0] == f"{p.density(64):.4f}"


@pytest.mark.parametrize("name", ["longnet", "s2_attention", "streaming_llm"])
def test_picture_coverage_is_exact_below_the_limit(name):
    from sparsedsl import picture
    from sparsedsl.render import coverage

    p = sparsedsl.compile_pattern(ROOT / "patterns" / f"{name}.attn", pattern=name)
    frac, dens, sampled = picture.coverage(p, 300, 250, 4, 2, 16)
    mask = p.mask(300, 250, 4, 2)
    assert not sampled
    assert all(torch.equal(frac[i].float(), coverage(mask[i], 16)) for i in range(4))
    assert torch.allclose(dens, mask.flatten(1).double().mean(1))


def test_picture_sample_sees_the_same_tiles_here():
    # The exact limit lowered: the sampled picture of streaming_llm equals the exact one at L = 4096.
    from sparsedsl import picture

    p = sparsedsl.compile_pattern(SHOW_FILE)
    exact, _, sampled = picture.coverage(p, 4096, 4096, 1, 1, 16)
    approx, _, sampled2 = picture.coverage(p, 4096, 4096, 1, 1, 16, exact_pairs=1000, samples=16 * 16)
    assert not sampled and sampled2
    assert torch.equal(exact == 0, approx == 0) and torch.equal(exact == 1, approx == 1)


def test_kernel_compile_unsupported_target_is_a_clean_error():
    for target, why in (("sm_12", "unsupported target sm_12: the generated kernels need sm_80 or newer"),
                        ("sm_95", "unsupported target sm_95: its limits are not known here"),
                        ("hopper", "--compile takes a CUDA target like sm_90, got 'hopper'")):
        with pytest.raises(SystemExit) as e:
            main(["kernel", SHOW_FILE, "--compile", target])
        assert str(e.value).startswith(f"sparsedsl: {why}")


def test_kernel_compile_reports_shared_memory_past_the_limit(monkeypatch, capsys):
    # The check itself, with the sizes Triton reports for head dim 512 (the real compile: the slow test below).
    from sparsedsl.kernels import aot

    sizes = {"fwd": 65536, "guard": 49152, "dq": 393216, "dkdv": 98816}
    names = {"fwd": "fwd", "guard": "fwd_guard", "dq": "bwd_dq", "dkdv": "bwd_dkdv"}

    def fake(plan, head_dim, arch, varlen, binaries):
        binaries.update({k: (b"", f"streaming_llm_{names[k]}_kernel", 256) for k in sizes})  # no cubin: no regs
        return dict(sizes)

    monkeypatch.setattr(aot, "compile_kernels", fake)
    assert main(["kernel", SHOW_FILE, "--compile", "sm_90"]) == 1
    cap = capsys.readouterr()
    assert "the dq kernel (streaming_llm_bwd_dq_kernel, head dim 128) does not fit: needs 393216 B of shared " \
           "memory, sm_90 allows 232448 B per block" in cap.err
    assert cap.out.startswith("sm_90: fwd ok (65536 B shared), guard ok (49152 B shared), dq FAILS")
    sizes["dq"] = 98304
    assert main(["kernel", SHOW_FILE, "--compile", "sm_90"]) == 0
    assert main(["kernel", SHOW_FILE, "--compile", "sm_86"]) == 0  # 98816 B fits in sm_86's 101376
    sizes["dkdv"] = 166912 + 1
    assert main(["kernel", SHOW_FILE, "--compile", "sm_80"]) == 1
    assert "sm_80 allows 166912 B" in capsys.readouterr().err


def test_register_limits():
    from sparsedsl.kernels.targets import TARGETS, problems

    assert problems(TARGETS[90], 1024, 255, 256) == []
    assert problems(TARGETS[90], 1024, 255, 512) == ["needs 255 x 512 = 130560 registers per block, at most 65536"]


@pytest.mark.slow  # Triton's compile at head dim 512 spills heavily: about a minute
def test_kernel_compile_head_dim_512_does_not_fit_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "sparsedsl", "kernel", SHOW_FILE, "--compile", "sm_90",
                          "--head-dim", "512"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "the dq kernel (streaming_llm_bwd_dq_kernel, head dim 512) does not fit: needs 327680 B of shared " \
           "memory, sm_90 allows 232448 B per block" in res.stderr
    assert "dq FAILS (327680 B shared" in res.stdout
