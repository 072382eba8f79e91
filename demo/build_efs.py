"""Lay out a local stand-in for the EFS file system, as a user fills the real one.

    EFS/python/   pip install --target: lambdatorch (the wheel in dist/) and numpy; torch beside it
    EFS/models/   the digits model, added with `lambdatorch add-model`
    EFS/samples/  held-out digit images to send

then checks the tree with `lambdatorch doctor`, as a user would before attaching it to Lambda.

torch is linked from the dev venv rather than installed a second time (scripts/local_lambda.py
says why); on AWS you install the CPU-only build instead (README).

Usage: python demo/build_efs.py EFS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for scripts/
from scripts.local_lambda import install_python, run

HERE = Path(__file__).resolve().parent


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
