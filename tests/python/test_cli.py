"""The ``lambdatorch`` command as users run it (``python -m lambdatorch ...`` in a subprocess).

``doctor`` runs on an EFS tree laid out once for the module the way users lay it out
(``pip install --target`` from the wheel, torch linked in from the venv as in test_efs_layout.py,
the fixture models copied in), then on trees derived from it, each broken in one way: the small
parts that change are copied, the rest (torch, the big models) linked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, MODELS, REPO

SITE = Path(sysconfig.get_paths()["purelib"])
WHEELS = sorted((REPO / "dist").glob("lambdatorch-*.whl"))


def lambdatorch_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lambdatorch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- doctor ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def efs(tmp_path_factory) -> Path:
    assert len(WHEELS) == 1, f"expected one wheel in dist/, found {WHEELS} (run make wheel)"
    root = tmp_path_factory.mktemp("efs")
    python = root / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", python, WHEELS[0]],
        check=True,
    )
    for package in ("torch", "nvidia"):
        if (SITE / package).exists():
            (python / package).symlink_to(SITE / package, target_is_directory=True)
    shutil.copytree(MODELS, root / "models")
    return root


def doctor(root: Path, *extra: str) -> tuple[int, list[str]]:
    out = lambdatorch_cli("doctor", "--root", root, *extra)
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert out.stderr == ""
    return out.returncode, out.stdout.splitlines()


#: The checks before the models' own, in order.
TREE_CHECKS = ["python/lambdatorch", "python/numpy", "python/torch", "torch-version", "libtorch"]
TREE_CHECKS += ["no-python-torch", "models/"]
#: Then one per fixture model, in name order.
CHECKS = [*TREE_CHECKS, *(f"models/{model.name}" for model in sorted(MODELS.iterdir()))]
LINE = re.compile(r"(ok|FAIL)  (\S+)  (.+)")


def parse(lines: list[str]) -> dict[str, tuple[bool, str]]:
    """check name -> (ok, the rest of the line)."""
    found = {}
    for line in lines:
        match = LINE.fullmatch(line)
        assert match, f"not a check line: {line!r}"
        found[match[2]] = (match[1] == "ok", match[3])
    return found


def test_doctor_passes_on_a_good_tree(efs):
    code, lines = doctor(efs)
    checks = parse(lines)
    assert list(checks) == CHECKS
    assert all(ok for ok, _ in checks.values()), "\n".join(lines)
    assert code == 0
    assert "2.13.0" in checks["torch-version"][1]
    for name in ("gray", "mobilenet", "tensor", "tiny"):
        assert re.match(r"loaded in \d+ ms, inference [\d.]+ ms", checks[f"models/{name}"][1])
    assert "(1x1x32x32 -> 1x4)" in checks["models/gray"][1]
    assert "(1x4 -> 1x3)" in checks["models/tensor"][1]
    assert "(1x3x224x224 -> 1x1000)" in checks["models/mobilenet"][1]


def test_doctor_json(efs, tmp_path):
    (tmp_path / "python").symlink_to(efs / "python")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tensor").symlink_to(efs / "models" / "tensor")
    code, lines = doctor(tmp_path, "--json")
    report = json.loads("\n".join(lines))
    assert code == 0
    assert [item["check"] for item in report] == [*TREE_CHECKS, "models/tensor"]
    assert all(set(item) == {"check", "ok", "detail", "fix"} for item in report)
    assert all(item["ok"] is True and item["fix"] is None for item in report)
    assert report[-1]["detail"].startswith("loaded in ")


def python_tree(efs: Path, root: Path, without: tuple[str, ...] = ()) -> Path:
    """``root/python`` linking to the good tree's packages, except ``without``."""
    python = root / "python"
    python.mkdir(parents=True)
    for entry in (efs / "python").iterdir():
        if entry.name not in without:
            (python / entry.name).symlink_to(entry)
    return python


def no_torch(efs: Path, root: Path) -> None:
    python_tree(efs, root, without=("torch", "nvidia"))
    (root / "models").symlink_to(efs / "models")


def old_torch(efs: Path, root: Path) -> None:
    python = python_tree(efs, root, without=("torch", "nvidia"))
    (python / "torch" / "lib").mkdir(parents=True)
    (python / "torch" / "__init__.py").write_text("")
    (python / "torch" / "version.py").write_text("__version__ = '2.12.0'\n")
    for name in ("libc10.so", "libtorch_cpu.so"):
        (python / "torch" / "lib" / name).write_bytes(b"not a library")
    (root / "models").symlink_to(efs / "models")


def no_lambdatorch(efs: Path, root: Path) -> None:
    python_tree(efs, root, without=("lambdatorch",))
    (root / "models").symlink_to(efs / "models")


def with_models(efs: Path, root: Path) -> Path:
    """The good python/, and models/ with a copy of tiny (to break) beside a link to tensor."""
    (root / "python").symlink_to(efs / "python")
    models = root / "models"
    models.mkdir()
    shutil.copytree(efs / "models" / "tiny", models / "tiny")
    (models / "tensor").symlink_to(efs / "models" / "tensor")
    return models / "tiny"


def manifest_typo(efs: Path, root: Path) -> None:
    manifest = with_models(efs, root) / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"resize_shorter"', '"resize_shorte"'))


def replaced_file(efs: Path, root: Path) -> None:
    shutil.copyfile(MODELS / "gray" / "model.pt", with_models(efs, root) / "model.pt")


def truncated_file(efs: Path, root: Path) -> None:
    tiny = with_models(efs, root)
    manifest = json.loads((tiny / "manifest.json").read_text())
    del manifest["sha256"]
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    data = (tiny / "model.pt").read_bytes()
    (tiny / "model.pt").write_bytes(data[: len(data) // 2])


def stray_files(efs: Path, root: Path) -> None:
    with_models(efs, root)
    (root / "models" / "notes.txt").write_text("resnet18 goes here\n")
    (root / "models" / "empty").mkdir()
    shutil.copytree(MODELS / "tensor", root / "models" / "-bad")


NOT_RUN = ("not run: libtorch did not load", "fix the libtorch check first")

#: How each tree is broken, and the (problem, fix) expected on each failing check ("models/*":
#: every model); every other check must pass.
BROKEN = {
    "no-torch": (
        no_torch,
        {
            "python/torch": ("no torch in", "torch==2.13.0"),
            "torch-version": ("no torch in", "pip install --target"),
            "libtorch": ("libtorch not found; searched", "torch==2.13.0"),
            "no-python-torch": NOT_RUN,
            "models/*": NOT_RUN,
        },
    ),
    "torch-2.12": (
        old_torch,
        {
            "torch-version": ("torch 2.12.0 in", "--upgrade torch==2.13.0"),
            "libtorch": ("found libtorch 2.12.0", "--upgrade torch==2.13.0"),
            "no-python-torch": NOT_RUN,
            "models/*": NOT_RUN,
        },
    ),
    "no-lambdatorch": (
        no_lambdatorch,
        {
            "python/lambdatorch": ("no lambdatorch in", "pip install --target"),
            "libtorch": ("not run: lambdatorch does not import", "pip install --target"),
            "no-python-torch": NOT_RUN,
            "models/*": NOT_RUN,
        },
    ),
    "manifest-typo": (
        manifest_typo,
        {"models/tiny": ("unknown field `resize_shorte`", "correct the field")},
    ),
    "replaced-file": (
        replaced_file,
        {"models/tiny": ("corrupt, truncated or replaced", "copy the model file again")},
    ),
    "truncated-file": (
        truncated_file,
        {"models/tiny": ("not a loadable TorchScript model", "torch.jit.save")},
    ),
    "stray-files": (
        stray_files,
        {
            "models/notes.txt": ("is not a directory", "remove it or move it out of models/"),
            "models/empty": ("has no manifest.json", "remove it or move it out of models/"),
            "models/-bad": ("is not a valid model name", "rename it"),
        },
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_doctor_names_the_problem_and_the_fix(efs, tmp_path, case):
    breaks, failures = BROKEN[case]
    root = tmp_path / "efs"
    root.mkdir()
    breaks(efs, root)
    code, lines = doctor(root)
    assert code == 1
    checks = parse(lines)
    for name, (ok, rest) in checks.items():
        is_model = name.startswith("models/") and name != "models/"
        expected = failures.get(name) or (failures.get("models/*") if is_model else None)
        if expected is None:
            assert ok, f"{name} failed: {rest}"
            continue
        assert not ok, f"{name} passed"
        problem, fix = rest.split(" -- fix: ")
        assert expected[0] in problem, name
        assert expected[1] in fix, name
    assert set(failures) - {"models/*"} <= set(checks)
    if case == "manifest-typo":  # the message names the file, the fix the same file
        manifest = root / "models" / "tiny" / "manifest.json"
        problem, fix = checks["models/tiny"][1].split(" -- fix: ")
        assert problem.startswith(f"ManifestError: {manifest.resolve()}: input")
        assert fix == f"correct the field the message names in {manifest}"


def test_doctor_json_on_a_broken_tree(efs, tmp_path):
    replaced_file(efs, tmp_path)
    code, lines = doctor(tmp_path, "--json")
    report = {item["check"]: item for item in json.loads("\n".join(lines))}
    assert code == 1
    assert list(report) == [*TREE_CHECKS, "models/tensor", "models/tiny"]
    assert report["models/tiny"]["ok"] is False
    assert "corrupt, truncated or replaced" in report["models/tiny"]["detail"]
    assert "copy the model file again" in report["models/tiny"]["fix"]
    assert report["models/tensor"]["ok"] is True


def test_doctor_on_a_missing_root(tmp_path):
    code, lines = doctor(tmp_path / "nothing")
    checks = parse(lines)
    assert code == 1
    assert not any(ok for ok, _ in checks.values())
    assert "is not a directory" in checks["models/"][1]


def test_doctor_child_sees_only_the_tree(tmp_path):
    """The in-tree check imports the tree's lambdatorch with only ``root/python`` before the
    standard library: not the CLI's package directory (it runs by path), not the current one."""
    from lambdatorch import _doctor_child, cli

    python = tmp_path / "python"
    (python / "lambdatorch").mkdir(parents=True)
    (python / "lambdatorch" / "__init__.py").write_text(
        "import json, sys\nraise ImportError(json.dumps(sys.path))\n"
    )
    report, why = cli._run_probe(python, [tmp_path / "models" / "m"])
    assert report is not None, why
    assert report["stage"] == "import lambdatorch"
    assert report["error"]["type"] == "ImportError"
    path = json.loads(report["error"]["message"])
    assert path[0] == str(python)
    assert "" not in path and os.getcwd() not in path
    assert str(Path(_doctor_child.__file__).parent) not in path
    assert report["models"] == {} and report["torch"] is False


def test_doctor_checks_a_tree_whose_lambdatorch_has_no_child(efs, tmp_path):
    """The in-tree check ships with the CLI, so a tree with another lambdatorch (here one without
    the check's file) is checked all the same."""
    python = python_tree(efs, tmp_path, without=("lambdatorch",))
    shutil.copytree(efs / "python" / "lambdatorch", python / "lambdatorch")
    (python / "lambdatorch" / "_doctor_child.py").unlink(missing_ok=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tensor").symlink_to(efs / "models" / "tensor")
    code, lines = doctor(tmp_path)
    assert code == 0, "\n".join(lines)
    assert list(parse(lines)) == [*TREE_CHECKS, "models/tensor"]


# --- add-model ---------------------------------------------------------------------------------


def test_add_model_then_predict(tmp_path, tiny):
    out = lambdatorch_cli(
        "add-model",
        "cat-or-dog",
        "--file",
        MODELS / "tiny" / "model.pt",
        "--labels",
        MODELS / "tiny" / "labels.txt",
        "--preset",
        "imagenet",
        "--root",
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    model = tmp_path / "models" / "cat-or-dog"
    assert "added model 'cat-or-dog'" in out.stdout
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["format"] == "torchscript"
    assert manifest["sha256"] == sha256(model / manifest["file"])
    assert manifest["output"]["labels"] == "labels.txt"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["cat-or-dog"]

    out = lambdatorch_cli("predict", "--model", model, "--top-k", "3", IMAGES / "chelsea.jpg")
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)["results"]
    expected = tiny.predict((IMAGES / "chelsea.jpg").read_bytes(), top_k=3)
    assert [(p["index"], p["label"]) for p in result["predictions"]] == [
        (p.index, p.label) for p in expected
    ]
    assert [p["score"] for p in result["predictions"]] == pytest.approx([p.score for p in expected])


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "bad name", "x" * 65, ""])
def test_add_model_refuses_invalid_names(tmp_path, name):
    root = tmp_path / "efs"
    out = lambdatorch_cli(
        "add-model", name, "--file", MODELS / "tensor" / "model.pt", "--preset", "imagenet",
        "--root", root,
    )  # fmt: skip
    assert out.returncode == 2
    assert "is not a valid model name" in out.stderr
    assert "Traceback" not in out.stderr
    assert not tmp_path.joinpath("x").exists()
    assert not root.exists()


def test_add_model_does_not_overwrite_without_force(tmp_path):
    add = ["add-model", "m", "--preset", "imagenet", "--root", tmp_path]
    assert lambdatorch_cli(*add, "--file", MODELS / "tiny" / "model.pt").returncode == 0
    model_file = tmp_path / "models" / "m" / "model.pt"

    out = lambdatorch_cli(*add, "--file", MODELS / "mobilenet" / "model.pt")
    assert out.returncode == 2
    assert "already exists; pass --force to replace it" in out.stderr
    assert sha256(model_file) == sha256(MODELS / "tiny" / "model.pt")

    out = lambdatorch_cli(*add, "--file", MODELS / "mobilenet" / "model.pt", "--force")
    assert out.returncode == 0, out.stderr
    assert sha256(model_file) == sha256(MODELS / "mobilenet" / "model.pt")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m"]


def test_add_model_failure_is_one_line(tmp_path):
    fields = tmp_path / "fields.json"
    fields.write_text(json.dumps({"input": {"type": "tensor", "shape": [-1, 4]}}))
    out = lambdatorch_cli(
        "add-model", "m", "--file", MODELS / "gray" / "model.pt", "--manifest", fields,
        "--root", tmp_path,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("lambdatorch add-model: InferenceError: model ")
    assert ": warmup on zeros of shape [1, 4] failed: " in out.stderr
    assert out.stderr.count("\n") == 1
    assert "Expected 4-dimensional input" in out.stderr  # the actual error, from the last line
    assert list((tmp_path / "models").iterdir()) == []


# --- export ------------------------------------------------------------------------------------

HELPERS = """
import torch


class Net(torch.nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, classes)
        with torch.no_grad():  # statistics as a trained model has them: folding them matters
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def mlp(width=16):
    layers = [torch.nn.Linear(6, width), torch.nn.Tanh(), torch.nn.Linear(width, 3)]
    return torch.nn.Sequential(*layers)
"""


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    """A module of small torch models, importable as ``ltexport_helpers``."""
    where = tmp_path_factory.mktemp("helpers")
    (where / "ltexport_helpers.py").write_text(textwrap.dedent(HELPERS))
    sys.path.insert(0, str(where))
    import ltexport_helpers

    yield where, ltexport_helpers
    sys.path.remove(str(where))
    del sys.modules["ltexport_helpers"]


def test_export_command_round_trip(lt, helpers, tmp_path):
    import torch
    from lambdatorch.cli import PRESETS

    where, module = helpers
    labels = tmp_path / "classes.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(5)))
    out_dir = tmp_path / "models" / "net"
    out = lambdatorch_cli(
        "export", "--module", "ltexport_helpers:Net", "--kwargs", '{"classes": 5}',
        "--example-shape", "1,3,224,224", "--out", out_dir, "--preset", "imagenet",
        "--labels", labels,
        cwd=where,  # the module is found from the current directory, as users run it
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"wrote {out_dir / 'model.pt'}, {out_dir / 'manifest.json'}" in out.stdout
    assert "TorchScript: traced, frozen" in out.stdout
    diff = re.search(r"max abs diff (\S+) \(limit 0.0001\), output 1x5", out.stdout)
    assert diff and float(diff[1]) <= 1e-4

    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert list(manifest)[:5] == ["format", "file", "sha256", "input", "output"]
    assert manifest["format"] == "torchscript" and manifest["file"] == "model.pt"
    assert manifest["sha256"] == sha256(out_dir / "model.pt")
    assert manifest["sha256"] in out.stdout
    assert manifest["input"] == PRESETS["imagenet"]["input"]
    assert manifest["output"] == {**PRESETS["imagenet"]["output"], "labels": "labels.txt"}
    assert (out_dir / "labels.txt").read_text() == labels.read_text()
    assert sorted(p.name for p in out_dir.iterdir()) == ["labels.txt", "manifest.json", "model.pt"]

    torch.manual_seed(0)  # the command seeds the same way before building the module
    reference = module.Net(classes=5).eval()
    x = torch.rand(2, 3, 224, 224) * 4 - 2  # a fresh input, batch 2: not the traced example
    with torch.no_grad():
        expected = reference(x).numpy()
    model = lt.load(out_dir)
    np.testing.assert_allclose(model.forward(x.numpy()), expected, rtol=0, atol=1e-4)
    predictions = model.predict((IMAGES / "chelsea.jpg").read_bytes())
    assert [p.label for p in predictions] and all(p.label.startswith("class ") for p in predictions)


def test_export_api(lt, helpers, tmp_path):
    import torch
    from lambdatorch._export import export_model

    _, module = helpers
    torch.manual_seed(1)
    mlp = module.mlp(width=8)
    x = torch.randn(3, 6)
    path = lt.export(mlp, x, tmp_path / "models", name="mlp", method="script")
    assert path == tmp_path / "models" / "mlp"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest == {
        "format": "torchscript",
        "file": "model.pt",
        "sha256": sha256(path / "model.pt"),
        "input": {"type": "tensor", "shape": [-1, 6], "dtype": "float32"},
        "output": {"type": "raw"},
    }
    fresh = torch.randn(5, 6)
    with torch.no_grad():
        expected = mlp(fresh).numpy()
    np.testing.assert_allclose(lt.load(path).forward(fresh.numpy()), expected, rtol=0, atol=1e-4)

    report = export_model(mlp, x, tmp_path / "plain", optimize=False, labels=["a"] * 3)
    assert report.optimization == "not optimized (asked not to)"
    assert report.max_abs_diff <= 1e-4 and report.output_shape == (3, 3)
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["output"] == {
        "type": "classification",
        "labels": "labels.txt",
    }

    with pytest.raises(lt.InvalidInput, match="not a valid model name"):
        lt.export(mlp, x, tmp_path, name="../up")
    with pytest.raises(lt.InvalidInput, match="float32"):
        lt.export(mlp, x.double(), tmp_path / "double")


def test_export_refuses_output_it_cannot_reproduce(lt, helpers, tmp_path, monkeypatch):
    import torch
    from lambdatorch import _export

    _, module = helpers
    monkeypatch.setattr(_export, "PARITY_ATOL", -1.0)  # no output can pass
    with pytest.raises(lt.InferenceError, match=r"differs from Python torch's by \S+ \(max abs"):
        lt.export(module.mlp(), torch.randn(1, 6), tmp_path / "m")
    assert not (tmp_path / "m").exists()  # nothing left that could be served


def test_export_without_torch_is_one_line(tmp_path):
    import lambdatorch

    python = tmp_path / "python"
    python.mkdir()
    (python / "lambdatorch").symlink_to(Path(lambdatorch.__file__).parent)
    args = ["export", "--module", "x:y", "--example-shape", "1,4", "--out", tmp_path / "out"]
    out = subprocess.run(
        [sys.executable, "-S", "-m", "lambdatorch", *map(str, args)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(python)},
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.startswith(
        "lambdatorch export: export needs Python torch: pip install torch==2.13.0"
    )
    assert out.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
