"""The EFS path as users run it, and the artifacts Lambda will load.

A wheel installed with ``pip install --target <efs>/python``, torch beside it, and a fresh
interpreter whose only import path is that directory (no site-packages), as a Lambda function with
``PYTHONPATH=/mnt/efs/python`` has it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import IMAGES, MODELS, REPO

SITE = Path(sysconfig.get_paths()["purelib"])
WHEELS = sorted((REPO / "dist").glob("lambdatorch-*.whl"))
GLIBC_MAX = (2, 34)
GLIBCXX_MAX = (3, 4, 29)


@pytest.fixture(scope="module")
def wheel() -> Path:
    assert len(WHEELS) == 1, f"expected one wheel in dist/, found {WHEELS} (run make wheel)"
    return WHEELS[0]


@pytest.fixture(scope="module")
def efs(tmp_path_factory, wheel) -> Path:
    root = tmp_path_factory.mktemp("efs")
    target = root / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", target, wheel],
        check=True,
    )
    # torch beside it, as `pip install --target` would put it (linked: PyPI's build is GBs).
    for package in ("torch", "nvidia"):
        if (SITE / package).exists():
            (target / package).symlink_to(SITE / package, target_is_directory=True)
    return root


def fresh_python(
    pythonpath: Path, code: str, *args: str, **env: str
) -> subprocess.CompletedProcess:
    """``python -S`` with ``pythonpath`` as its only import path beyond the standard library."""
    return subprocess.run(
        [sys.executable, "-S", "-c", code, *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(pythonpath), **env},
        timeout=300,
    )


PREDICT = """
import json, sys
import lambdatorch
model = lambdatorch.load(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    predictions = model.predict(f.read())
print(json.dumps({
    "predictions": [[p.index, p.label, p.score] for p in predictions],
    "torch": "torch" in sys.modules,
    "numpy": "numpy" in sys.modules,
    "paths": [p for p in sys.path if "site-packages" in p],
}))
"""


def test_predicts_from_the_efs_tree_without_python_torch(efs, tiny):
    out = fresh_python(efs / "python", PREDICT, str(MODELS / "tiny"), str(IMAGES / "chelsea.jpg"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["paths"] == []
    assert report["torch"] is False
    assert report["numpy"] is False  # bytes in, predictions out: numpy is never imported
    expected = tiny.predict((IMAGES / "chelsea.jpg").read_bytes())
    assert [p[0] for p in report["predictions"]] == [p.index for p in expected]
    assert [p[2] for p in report["predictions"]] == pytest.approx([p.score for p in expected])


def test_numpy_arrays_work_from_the_efs_tree(efs):
    code = """
import sys, numpy, lambdatorch
model = lambdatorch.load(sys.argv[1])
x = model.preprocess(numpy.zeros((40, 60, 3), numpy.uint8))
print(x.shape, x.dtype, model.forward(x).shape, "torch" in sys.modules)
"""
    out = fresh_python(efs / "python", code, str(MODELS / "tiny"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "(1, 3, 224, 224) float32 (1, 10) False"


def libtorch_error(pythonpath: Path, **env: str) -> str:
    code = """
import lambdatorch  # always imports: the CLI's doctor must be able to run
try:
    from lambdatorch import load
except lambdatorch.LibTorchError as err:
    assert isinstance(err, ImportError)
    print(err)
else:
    print("NO ERROR")
"""
    out = fresh_python(pythonpath, code, **env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_missing_libtorch_says_what_was_searched(efs, tmp_path):
    bare = tmp_path / "python"
    bare.mkdir()
    (bare / "lambdatorch").symlink_to(efs / "python" / "lambdatorch")
    message = libtorch_error(bare)
    assert "libtorch not found; searched" in message
    assert str(bare / "torch" / "lib") in message
    assert "pip install --target" in message and "2.13.0" in message


def fake_torch(root: Path, version: str) -> Path:
    lib = root / "torch" / "lib"
    lib.mkdir(parents=True)
    (root / "torch" / "version.py").write_text(f"__version__ = '{version}'\n")
    for name in ("libc10.so", "libtorch_cpu.so"):
        (lib / name).write_bytes(b"not a library")
    return lib


def test_wrong_torch_version_is_named(efs, tmp_path):
    tree = tmp_path / "python"
    tree.mkdir()
    (tree / "lambdatorch").symlink_to(efs / "python" / "lambdatorch")
    fake_torch(tree, "2.12.1+cpu")
    message = libtorch_error(tree)
    assert "found libtorch 2.12.1+cpu" in message
    assert "needs 2.13.0" in message


def test_broken_libtorch_files_are_a_libtorch_error(efs, tmp_path):
    lib = fake_torch(tmp_path, "2.13.0+cpu")
    message = libtorch_error(efs / "python", LAMBDATORCH_LIBTORCH=str(lib))
    assert "failed to load libc10.so" in message


def test_explicit_libtorch_dir(efs, tmp_path):
    message = libtorch_error(efs / "python", LAMBDATORCH_LIBTORCH=str(tmp_path))
    assert f"LAMBDATORCH_LIBTORCH={tmp_path} does not hold libc10.so, libtorch_cpu.so" in message
    good = libtorch_error(efs / "python", LAMBDATORCH_LIBTORCH=str(SITE / "torch" / "lib"))
    assert good.strip() == "NO ERROR"


def test_wheel_carries_no_libtorch_and_needs_no_torch(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert not [n for n in names if re.search(r"lib(torch|c10)[^/]*\.so", n)]
    assert requires == ["Requires-Dist: numpy>=1.23"]
    assert "lambdatorch/_core.pyi" in names and "lambdatorch/py.typed" in names
    assert wheel.name.endswith("-cp310-abi3-manylinux_2_34_x86_64.whl")


def symbol_versions(path: Path, prefix: str) -> set[tuple[int, ...]]:
    out = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True)
    found = re.findall(rf"\b{prefix}_([0-9.]+)\b", out.stdout)
    return {tuple(int(x) for x in v.split(".")) for v in found}


def test_extension_runs_on_amazon_linux_2023(efs):
    core = next((efs / "python" / "lambdatorch").glob("_core*.so"))
    assert max(symbol_versions(core, "GLIBC")) <= GLIBC_MAX
    assert max(symbol_versions(core, "GLIBCXX"), default=(0,)) <= GLIBCXX_MAX
    needed = subprocess.run(["readelf", "-d", core], capture_output=True, text=True).stdout
    libs = set(re.findall(r"NEEDED.*\[(.+)\]", needed))
    assert {"libtorch_cpu.so", "libc10.so"} <= libs
    assert not {"libtorch_cuda.so", "libtorch.so", "libtorch_python.so"} & libs
