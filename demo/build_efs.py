"""Lay out a local stand-in for the EFS file system, as a user fills the real one.

    EFS/python/   pip install --target: lambdatorch (the wheel in dist/) and numpy; torch beside it
    EFS/models/   the digits model, added with `lambdatorch add-model`
    EFS/samples/  held-out digit images to send

then checks the tree with `lambdatorch doctor`, as a user would before attaching it to Lambda.

torch is linked from the dev venv rather than installed a second time: PyPI's torch 2.13.0 is a
CUDA build of several GB (with its nvidia-* packages, which libtorch_cpu.so finds through its
RPATH, hence the nvidia link too). On AWS you install the CPU-only build instead (README).

Usage: python demo/build_efs.py EFS_DIR
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run(*args: str | os.PathLike[str], **env: str) -> None:
    print("$", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, env={**os.environ, **env})


def install_python(efs: Path) -> Path:
    target = efs / "python"
    wheels = sorted((REPO / "dist").glob("lambdatorch-*.whl"))
    if not wheels:
        sys.exit("no wheel in dist/: run `make wheel` first")
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--upgrade",
        "--target",
        target,
        wheels[-1],
    )
    site = Path(sysconfig.get_paths()["purelib"])
    for package in ("torch", "nvidia"):
        link = target / package
        if not link.exists() and (site / package).exists():
            link.symlink_to(site / package, target_is_directory=True)
    return target


def add_digits(efs: Path) -> None:
    work = efs / "build" / "digits"
    if not (work / "model.pt").exists():
        run(sys.executable, HERE / "train_digits.py", work)
    run(
        sys.executable,
        "-m",
        "lambdatorch",
        "add-model",
        "digits",
        "--file",
        work / "model.pt",
        "--labels",
        work / "labels.txt",
        "--manifest",
        HERE / "digits.json",
        "--root",
        efs,
        "--force",
    )
    samples = efs / "samples"
    samples.mkdir(exist_ok=True)
    for image in sorted((work / "samples").glob("*.png")):
        (samples / image.name).write_bytes(image.read_bytes())


def main() -> None:
    efs = Path(sys.argv[1]).resolve()
    (efs / "models").mkdir(parents=True, exist_ok=True)
    install_python(efs)
    add_digits(efs)
    run(sys.executable, "-m", "lambdatorch", "doctor", "--root", efs)


if __name__ == "__main__":
    main()
