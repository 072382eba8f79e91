"""AOTInductor packages (``format: "aoti"``): parity with ``ExportedProgram.module()``, both
handlers, ``add-model``'s unpacking of hostile archives, ``export --format aoti`` and ``doctor``.

The packages are small models compiled once by ``scripts/make_fixtures.py`` (``aoti/`` in the
fixtures, with the exported program's outputs on seeded inputs); the loads, the ISA check, the
digest and static batches are also tested from Rust (``tests/aoti.rs``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import image_bytes
from fixture_data import FIXTURES
from handler_harness import Handlers
from test_cli import doctor, efs, parse  # noqa: F401 (efs: the EFS tree fixture)

AOTI = FIXTURES / "aoti"
TOLERANCE = 1e-4


def reference(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    data = np.load(AOTI / f"{name}.npz")
    return [(data[f"input{i}"], data[f"output{i}"]) for i in range(len(data.files) // 2)]


@pytest.mark.parametrize("name", ["aoti_tiny", "aoti_mlp", "aoti_static"])
def test_forward_matches_the_exported_program(lt, name):
    model = lt.load(AOTI / "models" / name)
    assert model.manifest["format"] == "aoti"
    for x, want in reference(name):
        got = model.forward(x)
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) <= TOLERANCE


def test_images_go_through_one_forward_pass(lt):
    model = lt.load(AOTI / "models" / "aoti_tiny")
    photos = [image_bytes("chelsea.jpg"), image_bytes("astronaut.jpg"), image_bytes("coffee.jpg")]
    batch = model.predict_batch(photos, top_k=10)
    for photo, predictions in zip(photos, batch, strict=True):
        assert predictions == model.predict(photo, top_k=10)
        logits = model.forward(model.preprocess(photo))[0]
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        for p in predictions:
            assert abs(p.score - probabilities[p.index]) <= TOLERANCE
    with pytest.raises(lt.InvalidInput, match="max_batch of 4"):
        model.predict_batch(photos * 2)


def test_lambdatorch_packages_never_load_libtorch_so():
    """aoti_tiny is compiled as lambdatorch export compiles (not linked against libtorch.so, which
    in PyPI's CUDA build pulls the CUDA runtime); aoti_mlp with the standard calls, which need it:
    it is loaded then, from beside libtorch_cpu.so, with no LD_LIBRARY_PATH."""
    from handler_harness import SITE

    script = f"""
import lambdatorch
def mapped():
    return any(line.rstrip().endswith("/libtorch.so") for line in open("/proc/self/maps"))
lambdatorch.load({str(AOTI / "models" / "aoti_tiny")!r})
print(mapped())
lambdatorch.load({str(AOTI / "models" / "aoti_mlp")!r})
print(mapped())
"""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(SITE)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_a_static_batch_takes_its_size_only(lt):
    model = lt.load(AOTI / "models" / "aoti_static")
    with pytest.raises(lt.InvalidInput, match="static batch of 2"):
        model.forward(np.zeros((1, 4), np.float32))


# --- both handlers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    root = tmp_path_factory.mktemp("efs") / "models"
    shutil.copytree(AOTI / "models", root)
    env = {
        "PATH": os.environ["PATH"],
        "LAMBDATORCH_MODELS": str(root),
        "LAMBDATORCH_DEFAULT_MODEL": "aoti_tiny",
        "LAMBDATORCH_PRELOAD": "aoti_tiny",
    }
    with Handlers(env, tmp_path_factory.mktemp("logs")) as both:
        yield both


def test_both_handlers_serve_packages_alike(handlers):
    import base64

    photo = base64.b64encode(image_bytes("chelsea.jpg")).decode()
    (x, want), _ = reference("aoti_mlp")
    events = [
        {"image": photo, "top_k": 3},
        {"model": "aoti_tiny", "images": [photo, photo]},
        {"model": "aoti_mlp", "tensor": {"shape": list(x.shape), "data": x.ravel().tolist()}},
        {"model": "aoti_static", "tensor": {"shape": [2, 4], "data": [0.5] * 8}},
        {"model": "aoti_static", "tensor": {"shape": [1, 4], "data": [0.5] * 4}},
    ]
    replies = [handlers.both(event) for event in events]
    assert [p["index"] for p in replies[0]["predictions"]] == [
        p["index"] for p in replies[1]["results"][0]["predictions"]
    ]
    got = np.array(replies[2]["output"]["data"], np.float32).reshape(want.shape)
    assert np.max(np.abs(got - want)) <= TOLERANCE
    assert replies[3]["output"]["shape"] == [2, 3]
    assert replies[4]["errorType"] == "InvalidInput"
    assert "static batch of 2" in replies[4]["errorMessage"]


# --- add-model and hostile archives --------------------------------------------------------------


def add_model(root: Path, name: str, archive: Path, *extra: str) -> tuple[int, str]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lambdatorch",
            "add-model",
            name,
            "--file",
            str(archive),
            "--root",
            str(root),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stdout + out.stderr


def test_add_model_unpacks_the_package_and_records_its_isa(lt, tmp_path):
    manifest = tmp_path / "fields.json"
    manifest.write_text(json.dumps({"input": {"type": "tensor", "shape": [-1, 4]}}))
    code, out = add_model(tmp_path, "mlp", AOTI / "aoti_mlp.pt2", "--manifest", str(manifest))
    assert code == 0, out
    model_dir = tmp_path / "models" / "mlp"
    written = json.loads((model_dir / "manifest.json").read_text())
    assert written["format"] == "aoti"
    assert written["file"] == "package"
    assert written["cpu_isa"] == "AVX2"
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "package"]
    assert (model_dir / "package" / "data" / "aotinductor" / "model").is_dir()
    model = lt.load(model_dir)
    for x, want in reference("aoti_mlp"):
        assert np.max(np.abs(model.forward(x) - want)) <= TOLERANCE


def rewritten(source: Path, dest: Path, extra=None, keep=lambda info: True) -> Path:
    """A copy of the package ``source`` at ``dest`` with entries dropped and ``extra`` added:
    ``extra(archive)`` writes into the new archive."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(dest, "w") as new:
        for info in old.infolist():
            if keep(info):
                new.writestr(info, old.read(info))
        if extra is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns of duplicate names
                extra(new)
    return dest


def symlink_entry(archive: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("aoti_mlp/data/escape")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive.writestr(info, "/etc/passwd")


def fifo_entry(archive: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("aoti_mlp/data/pipe")
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    archive.writestr(info, "")


def bomb_entry(archive: zipfile.ZipFile) -> None:
    archive.writestr("aoti_mlp/data/zeros", b"\0" * (64 << 20), zipfile.ZIP_DEFLATED)


def raw_name(name: str):
    """An entry whose stored name is exactly ``name`` (zipfile would normalise some)."""

    def write(archive: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("aoti_mlp/placeholder")
        info.filename = name
        archive.writestr(info, b"evil")

    return write


HOSTILE = {
    "absolute path": (raw_name("/tmp/evil"), "not a relative path"),
    "dot-dot": (raw_name("aoti_mlp/../../evil"), "leaves the package"),
    "backslash": (raw_name("aoti_mlp\\..\\..\\evil"), "not a relative path"),
    "symlink": (symlink_entry, "symlink or special file"),
    "fifo": (fifo_entry, "symlink or special file"),
    "duplicate": (
        lambda a: a.writestr("aoti_mlp/archive_format", b"pt2"),
        "appears twice",
    ),
    "outside the prefix": (lambda a: a.writestr("other/evil", b"evil"), "outside the package"),
    "compression bomb": (bomb_entry, "compression bomb"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archives_are_refused_and_write_nothing(tmp_path, case):
    extra, expected = HOSTILE[case]
    archive = rewritten(AOTI / "aoti_mlp.pt2", tmp_path / "hostile.pt2", extra)
    root = tmp_path / "efs"
    code, out = add_model(root, "mlp", archive, "--preset", "imagenet")
    assert code == 1, out
    assert "ManifestError" in out and expected in out, out
    assert not (root / "models" / "mlp").exists()
    assert list((root / "models").iterdir()) == []
    assert not list(tmp_path.rglob("evil")) and not Path("/tmp/evil").exists()


def test_truncated_incomplete_and_oversized_packages_are_refused(tmp_path, monkeypatch, capsys):
    from lambdatorch import _aoti, cli

    source = AOTI / "aoti_mlp.pt2"
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size * 2 // 3])
    no_library = rewritten(
        source, tmp_path / "nolib.pt2", keep=lambda i: not i.filename.endswith(".so")
    )
    cases = {truncated: "not a readable .pt2", no_library: "expected one model library"}
    for archive, expected in cases.items():
        code, out = add_model(tmp_path / "efs", "mlp", archive, "--preset", "imagenet")
        assert code == 1 and "ManifestError" in out and expected in out, out
    # Entries over the size limit (lowered here: the real one is 4 GiB).
    monkeypatch.setattr(_aoti, "MAX_ENTRY_BYTES", 100_000)
    argv = ["add-model", "mlp", "--file", str(source), "--root", str(tmp_path / "efs")]
    assert cli.main([*argv, "--preset", "imagenet"]) == 1
    err = capsys.readouterr().err
    assert "ManifestError" in err and "over the limit of 100000" in err, err
    assert list((tmp_path / "efs" / "models").iterdir()) == []


def test_tree_digest_is_sha256sum_of_the_files(tmp_path):
    from lambdatorch import _aoti

    package = tmp_path / "p"
    _aoti.unpack(AOTI / "aoti_mlp.pt2", package)
    listing = subprocess.run(
        "find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum | sha256sum",
        shell=True,
        cwd=package,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert _aoti.tree_sha256(package) == listing
    manifest = json.loads((AOTI / "models" / "aoti_mlp" / "manifest.json").read_text())
    assert manifest["sha256"] == listing


# --- export --------------------------------------------------------------------------------------


def test_export_format_aoti_compiles_for_avx2_and_checks_parity(lt, tmp_path):
    import torch

    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    example = torch.randn(1, 6)
    out = lt.export(module, example, tmp_path, name="exported", format="aoti")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "aoti" and manifest["cpu_isa"] == "AVX2"
    assert manifest["input"] == {"type": "tensor", "shape": [-1, 6], "dtype": "float32"}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "package"]
    model = lt.load(out)
    x = torch.randn(5, 6)
    with torch.no_grad():
        want = module(x).numpy()
    assert np.max(np.abs(model.forward(x.numpy()) - want)) <= TOLERANCE
    with pytest.raises(lt.InvalidInput, match="cpu must be one of"):
        lt.export(module, example, tmp_path / "x", format="aoti", cpu="avx3")


#: Runs a package's forward twice in a fresh ``python -S`` and prints the second call's oneDNN
#: primitives (``ONEDNN_VERBOSE``) after a marker, then the output as JSON.
WARM_CALL = """
import json, sys
import numpy as np
import lambdatorch
model = lambdatorch.load(sys.argv[1])
x = np.load(sys.argv[2])
model.forward(x)
print("=== warm", flush=True)
print(json.dumps(model.forward(x).tolist()), flush=True)
"""


def warm_call(
    model_dir: Path, x: np.ndarray, tmp_path: Path, **env: str
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """oneDNN's primitives in a warm forward of ``model_dir`` on ``x`` (kind and problem, e.g.
    ``("reorder", "32x8x1x1")``), and the output."""
    from handler_harness import SITE

    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(
        [sys.executable, "-S", "-c", WARM_CALL, str(model_dir), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(SITE), "ONEDNN_VERBOSE": "1", **env},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    warm = out.stdout.split("=== warm\n", 1)[1].splitlines()
    fields = [line.split(",") for line in warm if line.startswith("onednn_verbose,v1,primitive")]
    return [(f[5], f[-2]) for f in fields], np.array(json.loads(warm[-1]), np.float32)


def test_export_packs_convolution_weights_once_with_a_dynamic_batch(lt, tmp_path):
    """With a dynamic batch, Inductor leaves convolution weights plain and oneDNN reorders each
    on every call; export packs them for a batch of one (``_export_prepack``): a warm call of one
    input runs convolutions and no reorder, larger batches reorder at most the weights of 1x1
    convolutions on pooled inputs, and every batch gets PyTorch's answers, also on a CPU that
    wants other layouts (oneDNN held to AVX2, which reorders the packed weights)."""
    import torch

    class Block(torch.nn.Module):
        """A residual convolution scaled by channel attention: freezing leaves the attention's
        weights in their submodule (a dotted name), and the residual add is fused."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
            self.scale = torch.nn.Sequential(
                torch.nn.Conv2d(channels, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, channels, 1)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.conv(x) + x) * self.scale(x.mean((2, 3), keepdim=True))

    torch.manual_seed(2)
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        Block(32),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1, groups=4),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 5),
    ).eval()
    out = lt.export(conv, torch.randn(1, 3, 32, 32), tmp_path, name="conv", format="aoti")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = conv(x).numpy()
        primitives, got = warm_call(out, x.numpy(), tmp_path)
        assert [kind for kind, _ in primitives].count("convolution") == 5, primitives
        reordered = [weight for kind, weight in primitives if kind == "reorder"]
        if batch == 1:
            assert not reordered, primitives
        else:  # oneDNN may want another layout for a 1x1 convolution on a pooled input
            assert all(weight.endswith("x1x1") for weight in reordered), primitives
        assert np.max(np.abs(got - want)) <= TOLERANCE
        primitives, got = warm_call(out, x.numpy(), tmp_path, ONEDNN_MAX_CPU_ISA="AVX2")
        assert [kind for kind, _ in primitives].count("convolution") == 5, primitives
        assert np.max(np.abs(got - want)) <= TOLERANCE


def test_export_refuses_a_package_inductor_compiled_without_the_isa(lt, tmp_path, monkeypatch):
    """When Inductor finds no vector ISA on this machine, it compiles scalar code
    (`INVALID_VEC_ISA`): export says so, and leaves nothing behind."""
    import torch
    from torch._inductor import cpu_vec_isa

    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: [])
    module = torch.nn.Sequential(torch.nn.Linear(6, 2))
    with pytest.raises(lt.InferenceError, match="compiled for 'INVALID_VEC_ISA', not avx2"):
        lt.export(module, torch.randn(2, 6), tmp_path / "scalar", format="aoti")
    assert not (tmp_path / "scalar").exists()


def test_export_command_takes_format_and_cpu():
    from lambdatorch import cli

    args = cli.parser().parse_args(
        [
            "export",
            "--module",
            "m:f",
            "--example-shape",
            "2,4",
            "--out",
            "o",
            "--format",
            "aoti",
            "--cpu",
            "native",
        ]
    )
    assert (args.format, args.cpu) == ("aoti", "native")
    assert cli.parser().parse_args(
        ["export", "--module", "m:f", "--example-shape", "2,4", "--out", "o"]
    ).format == ("torchscript")


def test_doctor_checks_packages_and_their_isa(efs, tmp_path):  # noqa: F811 (the fixture)
    root = tmp_path / "efs"
    root.mkdir()
    (root / "python").symlink_to(efs / "python", target_is_directory=True)
    shutil.copytree(AOTI / "models", root / "models")
    code, lines = doctor(root)
    checks = parse(lines)
    assert code == 0, "\n".join(lines)
    for name in ("aoti_mlp", "aoti_static", "aoti_tiny"):
        ok, detail = checks[f"models/{name}"]
        assert ok and "AOTInductor for AVX2, which this CPU has" in detail, detail
    assert "(2x4 -> 2x3)" in checks["models/aoti_static"][1]
