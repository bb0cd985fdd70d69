"""A plain (non-editable) install carries the grammar, the pattern library and
the kernel templates inside the package."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_data_folders(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--quiet", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("sparsedsl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sparsedsl/grammar/attn.lark" in names
    shipped = {p.name for p in (ROOT / "patterns").glob("*.attn")}
    assert shipped and {f"sparsedsl/patterns/{n}" for n in shipped} <= names
    assert "sparsedsl/cli.py" in names and "sparsedsl/language/parser.py" in names
    assert {f"sparsedsl/codegen/{p.name}" for p in (ROOT / "codegen").iterdir()} <= names  # the kernel templates
    # every Python package of the source tree ships
    for init in (ROOT / "sparsedsl").rglob("__init__.py"):
        rel = init.relative_to(ROOT).as_posix()
        if "__pycache__" not in rel:
            assert rel in names, f"{rel} missing from the wheel"
    for module in (ROOT / "sparsedsl").rglob("*.py"):
        rel = module.relative_to(ROOT).as_posix()
        assert rel in names, f"{rel} missing from the wheel"
    # The installed layout works without the source tree: unpack and import from there.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sparsedsl, sys; p = sparsedsl.compile_pattern('streaming_llm', window=8); "
            "assert sparsedsl.__file__.startswith(sys.argv[1]), sparsedsl.__file__; "
            "from sparsedsl.kernels.generate import kernel_source; "
            "assert 'def streaming_llm_fwd_kernel' in kernel_source(p.plan, '', False, 64)[0]; "
            "print(int(p.mask(16).sum()))")
    res = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site)}, timeout=300)
    assert res.returncode == 0, res.stderr
    # causal & (sink(4) | window(8)) at L=16: rows 0..7 see i+1 keys; rows 8..15 see 8 + (keys < 4 not in window)
    expected = sum(min(i + 1, 8) + max(0, min(4, i - 7)) for i in range(16))
    assert int(res.stdout) == expected
