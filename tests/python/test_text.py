"""Text models (issue 13): token ids identical to the Python ``tokenizers`` (and ``transformers``)
on the same tokenizer.json and settings, outputs within 1e-5 of Python torch on the same ids,
embeddings equal to sentence-transformers' pooling formula, the Python API, typed errors, both
Lambda handlers, and the EFS path (``python -S``) importing neither torch nor transformers.

The fixtures (``scripts/text_fixtures.py``) train the tokenizers and trace tiny BERTs here: nothing
is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO
from fixture_data import FIXTURES
from handler_harness import Handlers, http_event
from test_efs_layout import efs, fresh_python, wheel  # noqa: F401 (fixtures)
from tokenizers import Tokenizer

TEXT = FIXTURES / "text"
ROOT = TEXT / "models"
CASES = json.loads((TEXT / "texts.json").read_text()) if TEXT.exists() else {}
TEXTS: list[str] = CASES.get("texts", [])
PAIRS: list[list[str]] = CASES.get("pairs", [])
TOLERANCE = 1e-5


def text_model(tmp_path: Path, base: str, **changes: dict[str, Any]) -> Path:
    """A copy of text fixture ``base`` with ``changes`` merged into manifest sections."""
    dest = tmp_path / base
    shutil.copytree(ROOT / base, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    for section, values in changes.items():
        manifest[section] = {**manifest[section], **values}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def python_tokenizer(model: Path) -> Tokenizer:
    """The Python library configured as the manifest says: what lambdatorch must reproduce."""
    spec = json.loads((model / "manifest.json").read_text())["input"]
    tok = Tokenizer.from_file(str(model / spec["tokenizer"]))
    pad = next(t for t in ("[PAD]", "<pad>") if tok.token_to_id(t) is not None)
    if spec.get("truncation", True):
        tok.enable_truncation(spec["max_length"])
    length = spec["max_length"] if spec.get("padding") == "max_length" else None
    tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad, length=length)
    return tok


def python_ids(tok: Tokenizer, items: list) -> dict[str, np.ndarray]:
    encodings = tok.encode_batch([tuple(i) if isinstance(i, list) else i for i in items])
    return {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }


def assert_same_tokens(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert set(ours) == set(theirs)
    for name, array in theirs.items():
        assert ours[name].dtype == np.int64, name
        np.testing.assert_array_equal(ours[name], array, err_msg=name)


@pytest.mark.parametrize(
    "base, changes",
    [
        ("text-classifier", {}),
        ("text-classifier", {"input": {"padding": "max_length", "max_length": 40}}),
        ("text-classifier", {"input": {"max_length": 8}}),
        ("text-embedder", {}),
        ("text-embedder", {"input": {"padding": "max_length", "max_length": 128}}),
    ],
)
def test_token_ids_equal_python_tokenizers(lt, tmp_path, base, changes):
    path = text_model(tmp_path, base, **changes)
    model = lt.load(path)
    tok = python_tokenizer(path)
    assert_same_tokens(model.tokenize(TEXTS), python_ids(tok, TEXTS))
    for text in TEXTS:  # alone: padded to its own length
        assert_same_tokens(model.tokenize(text), python_ids(tok, [text]))


def test_pairs_equal_python_tokenizers(lt, tmp_path):
    path = text_model(tmp_path, "text-classifier", input={"pair": True, "max_length": 32})
    model = lt.load(path)
    ours = model.tokenize([tuple(p) for p in PAIRS])
    assert_same_tokens(ours, python_ids(python_tokenizer(path), PAIRS))
    assert set(np.unique(ours["token_type_ids"])) == {0, 1}


def test_token_ids_equal_transformers(lt):
    """The call people make: ``AutoTokenizer``-style fast tokenizer, padding and truncation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import PreTrainedTokenizerFast

        for base, pad in (("text-classifier", "[PAD]"), ("text-embedder", "<pad>")):
            spec = json.loads((ROOT / base / "manifest.json").read_text())["input"]
            hf = PreTrainedTokenizerFast(
                tokenizer_file=str(ROOT / base / "tokenizer.json"), pad_token=pad
            )
            theirs = hf(
                TEXTS,
                padding="longest",
                truncation=True,
                max_length=spec["max_length"],
                return_tensors="np",
                return_token_type_ids=True,
            )
            ours = lt.load(ROOT / base).tokenize(TEXTS)
            for name in ("input_ids", "attention_mask", "token_type_ids"):
                np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{base} {name}")


def traced(base: str) -> torch.jit.ScriptModule:
    module = torch.jit.load(str(ROOT / base / "model.pt"))
    module.eval()
    return module


def torch_output(base: str, tokens: dict[str, np.ndarray]) -> torch.Tensor:
    names = json.loads((ROOT / base / "manifest.json").read_text())["input"]["inputs"]
    with torch.no_grad():
        return traced(base)(*(torch.from_numpy(tokens[n]) for n in names))


def test_classifier_matches_torch_on_the_same_ids(lt):
    model = lt.load(ROOT / "text-classifier")
    tokens = model.tokenize(TEXTS)
    probabilities = torch.softmax(torch_output("text-classifier", tokens), 1).numpy()
    labels = model.manifest["output"]["labels"]
    for row, expected in zip(model.predict_batch(TEXTS, top_k=3), probabilities, strict=True):
        assert [p.index for p in row] == list(np.argsort(-expected, kind="stable"))
        assert [p.label for p in row] == [labels[p.index] for p in row]
        np.testing.assert_allclose(
            [p.score for p in row], expected[[p.index for p in row]], atol=TOLERANCE
        )
    single = model.predict(TEXTS[0], top_k=1)
    assert single[0] == model.predict_batch(TEXTS[:1], top_k=1)[0][0]


def sentence_transformers_pooling(
    vectors: torch.Tensor, mask: torch.Tensor, pooling: str, normalize: bool
) -> np.ndarray:
    """sentence-transformers' ``Pooling`` (mean: ``pooling_mode_mean_tokens``; cls) and
    ``Normalize`` modules, as written there."""
    if pooling == "mean":
        expanded = mask.unsqueeze(-1).expand(vectors.size()).float()
        summed = torch.sum(vectors * expanded, 1)
        counts = torch.clamp(expanded.sum(1), min=1e-9)
        pooled = summed / counts
    else:
        pooled = vectors[:, 0]
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled.numpy()


@pytest.mark.parametrize(
    "pooling, normalize", [("mean", True), ("mean", False), ("cls", True), ("cls", False)]
)
def test_embeddings_equal_the_sentence_transformers_formula(lt, tmp_path, pooling, normalize):
    path = text_model(
        tmp_path, "text-embedder", output={"pooling": pooling, "normalize": normalize}
    )
    model = lt.load(path)
    ours = model.embed(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 32)
    tokens = model.tokenize(TEXTS)
    vectors = torch_output("text-embedder", tokens)
    theirs = sentence_transformers_pooling(
        vectors, torch.from_numpy(tokens["attention_mask"]), pooling, normalize
    )
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
    # One text alone (no padding) embeds the same as in a padded batch.
    np.testing.assert_allclose(model.embed(TEXTS[0])[0], ours[0], atol=TOLERANCE, rtol=0)


def test_pooling_none_takes_the_models_vectors(lt, tmp_path):
    """A model that pools itself (``[batch, dims]``): normalised only."""
    path = text_model(tmp_path, "text-embedder", output={"pooling": "none"})
    # Its token vectors are [batch, tokens, dims]: not what "none" promises, found by the warmup.
    with pytest.raises(lt.InferenceError, match=r"None pooling must return \[batch, dims\]"):
        lt.load(path)


def test_wrong_calls_and_bad_texts_are_typed_errors(lt, tmp_path):
    classifier = lt.load(ROOT / "text-classifier")
    embedder = lt.load(ROOT / "text-embedder")
    with pytest.raises(lt.InvalidInput, match="embed"):
        embedder.predict("a text")
    with pytest.raises(lt.InvalidInput, match="embeddings"):
        classifier.embed(["a text"])
    with pytest.raises(lt.InvalidInput, match="text"):
        classifier.forward(np.zeros((1, 4), np.int64))
    with pytest.raises(lt.InvalidInput, match="empty"):
        classifier.predict("")
    with pytest.raises(lt.InvalidInput, match="U\\+0000"):
        classifier.predict("nul\x00byte")
    with pytest.raises(lt.InvalidInput, match="UTF-8"):
        classifier.predict(b"caf\xe9")
    with pytest.raises(lt.InvalidInput, match="surrogates"):
        classifier.predict("lone \ud800 surrogate")
    with pytest.raises(lt.InvalidInput, match="pairs"):
        classifier.predict(("question", "passage"))
    with pytest.raises(lt.InvalidInput):
        classifier.predict_batch([3])
    with pytest.raises(lt.InvalidInput, match="max_batch"):
        classifier.predict_batch(["a"] * 33)
    assert classifier.predict(b"caf\xc3\xa9")  # UTF-8 bytes are text
    pair_model = lt.load(text_model(tmp_path, "text-classifier", input={"pair": True}))
    with pytest.raises(lt.InvalidInput, match="pairs of texts"):
        pair_model.predict("one text")
    assert len(pair_model.predict(["question", "passage"])) == 3


def test_tokenizer_files_are_checked_at_load(lt, tmp_path):
    for name, damage in {
        "missing": lambda d: (d / "tokenizer.json").unlink(),
        "corrupt": lambda d: (d / "tokenizer.json").write_text('{"model": 3'),
        "huge": lambda d: os.truncate(d / "tokenizer.json", 64 * 1024 * 1024 + 1),
    }.items():
        dest = tmp_path / name
        shutil.copytree(ROOT / "text-classifier", dest)
        damage(dest)
        with pytest.raises(lt.ManifestError, match=r"manifest\.json: input\.tokenizer"):
            lt.load(dest)


# --- both handlers ---------------------------------------------------------------------------

HANDLER_ENV = {"LAMBDATORCH_MAX_TEXT_BYTES": "2000", "LAMBDATORCH_MAX_BATCH": "8"}


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    root = tmp_path_factory.mktemp("efs") / "models"
    shutil.copytree(ROOT, root)
    env = {
        "PATH": os.environ["PATH"],
        "LAMBDATORCH_MODELS": str(root),
        "LAMBDATORCH_DEFAULT_MODEL": "text-classifier",
        "LAMBDATORCH_PRELOAD": "text-classifier,text-embedder",
        **HANDLER_ENV,
    }
    with Handlers(env, tmp_path_factory.mktemp("logs")) as both:
        yield both


def test_text_requests_through_both_handlers(lt, handlers):
    classifier = lt.load(ROOT / "text-classifier")
    single = handlers.both({"text": TEXTS[2], "top_k": 2})
    assert list(single) == ["model", "predictions", "timings_ms"]
    expected = classifier.predict(TEXTS[2], top_k=2)
    assert [p["index"] for p in single["predictions"]] == [p.index for p in expected]
    assert [p["score"] for p in single["predictions"]] == pytest.approx([p.score for p in expected])
    batch = handlers.both({"texts": TEXTS[:8]})
    assert len(batch["results"]) == 8
    in_batch = batch["results"][2]["predictions"][:2]
    assert [p["index"] for p in in_batch] == [p["index"] for p in single["predictions"]]
    assert [p["score"] for p in in_batch] == pytest.approx(
        [p["score"] for p in single["predictions"]], abs=TOLERANCE
    )
    embedded = handlers.both({"model": "text-embedder", "texts": TEXTS[:8]})
    assert embedded["dims"] == 32 and len(embedded["embeddings"]) == 8
    np.testing.assert_allclose(
        np.array(embedded["embeddings"], np.float32),
        lt.load(ROOT / "text-embedder").embed(TEXTS[:8]),
        atol=TOLERANCE,
    )
    one = handlers.both({"model": "text-embedder", "text": TEXTS[0]})
    assert len(one["embeddings"]) == 1


@pytest.mark.parametrize("source", ["apigw-v1", "apigw-v2", "function-url", "alb"])
def test_text_plain_bodies(handlers, source):
    reply = handlers.both(http_event(source, TEXTS[9].encode(), "text/plain; charset=utf-8"))
    assert reply["statusCode"] == 200
    answer = json.loads(reply["body"])
    direct = handlers.both({"text": TEXTS[9]})
    assert answer["predictions"] == direct["predictions"]
    bad = handlers.both(http_event(source, b"caf\xe9", "text/plain"))
    assert bad["statusCode"] == 400
    assert json.loads(bad["body"])["error"]["type"] == "InvalidInput"
    big = handlers.both(http_event(source, b"x" * 2001, "text/plain"))
    assert big["statusCode"] == 413
    as_json = json.dumps({"model": "text-embedder", "text": "hello"}).encode()
    embedded = json.loads(handlers.both(http_event(source, as_json, "application/json"))["body"])
    assert embedded["dims"] == 32


@pytest.mark.parametrize(
    "event, error",
    [
        ({"text": ""}, "InvalidInput"),
        ({"text": "bell \x07"}, "InvalidInput"),
        ({"texts": []}, "InvalidInput"),
        ({"text": "x" * 2001}, "PayloadTooLarge"),
        ({"texts": ["x"] * 9}, "PayloadTooLarge"),
        ({"text": ["a", "pair"]}, "InvalidInput"),
        ({"text": 3}, "InvalidInput"),
        ({"text": "a", "texts": ["b"]}, "InvalidInput"),
    ],
)
def test_bad_text_requests_are_function_errors(handlers, event, error):
    assert handlers.both(event)["errorType"] == error


# --- the EFS path ----------------------------------------------------------------------------

EFS_TEXT = """
import json, sys
import lambdatorch
classifier = lambdatorch.load(sys.argv[1] + "/text-classifier")
embedder = lambdatorch.load(sys.argv[1] + "/text-embedder")
texts = json.loads(sys.argv[2])
predictions = classifier.predict_batch(texts)
embeddings = embedder.embed(texts)
print(json.dumps({
    "predictions": [[[p.index, p.score] for p in row] for row in predictions],
    "embeddings": embeddings.tolist(),
    "imported": sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules),
    "paths": [p for p in sys.path if "site-packages" in p],
}))
"""


def test_efs_path_imports_neither_torch_nor_transformers(lt, efs):  # noqa: F811
    texts = TEXTS[:6]
    out = fresh_python(efs / "python", EFS_TEXT, str(ROOT), json.dumps(texts))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["paths"] == [] and report["imported"] == []
    expected = lt.load(ROOT / "text-classifier").predict_batch(texts)
    got = [[index for index, _ in row] for row in report["predictions"]]
    assert got == [[p.index for p in row] for row in expected]
    np.testing.assert_allclose(
        report["embeddings"], lt.load(ROOT / "text-embedder").embed(texts), atol=TOLERANCE
    )


def test_readme_documents_the_text_contract():
    readme = (REPO / "README.md").read_text()
    for needle in ('"type": "text"', '"type": "embedding"', "LAMBDATORCH_MAX_TEXT_BYTES", "embed("):
        assert needle in readme, needle


# --- the command line ------------------------------------------------------------------------


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lambdatorch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_add_model_with_a_tokenizer_reads_the_inputs_from_the_model(lt, tmp_path):
    source = ROOT / "text-classifier"
    labels = tmp_path / "labels.txt"
    labels.write_text("negative\nneutral\npositive\n")
    out = cli(
        "add-model", "sentiment", "--file", source / "model.pt", "--tokenizer",
        source / "tokenizer.json", "--labels", labels, "--root", tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    added = tmp_path / "models" / "sentiment"
    manifest = json.loads((added / "manifest.json").read_text())
    assert manifest["input"] == {
        "type": "text",
        "tokenizer": "tokenizer.json",
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
    }
    assert manifest["output"]["labels"] == "labels.txt"
    out = cli("predict", "--model", added, "--text", TEXTS[0], "--text", TEXTS[4])
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    expected = lt.load(ROOT / "text-classifier").predict_batch([TEXTS[0], TEXTS[4]])
    assert [r["text"] for r in answer["results"]] == [TEXTS[0], TEXTS[4]]
    for got, want in zip(answer["results"], expected, strict=True):
        assert [p["label"] for p in got["predictions"]] == [p.label for p in want]
        assert [p["score"] for p in got["predictions"]] == pytest.approx([p.score for p in want])
    # An embedding model: the output comes from --manifest, the inputs from the model.
    fields = tmp_path / "fields.json"
    fields.write_text(json.dumps({"output": {"type": "embedding", "pooling": "cls"}}))
    source = ROOT / "text-embedder"
    out = cli(
        "add-model", "minilm", "--file", source / "model.pt", "--tokenizer",
        source / "tokenizer.json", "--manifest", fields, "--root", tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "models" / "minilm" / "manifest.json").read_text())
    assert manifest["input"]["inputs"] == ["input_ids", "attention_mask"]
    out = cli("predict", "--model", tmp_path / "models" / "minilm", "--text", "hello")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dims"] == 32


def test_add_model_with_a_model_that_takes_other_inputs_says_what_to_do(tmp_path):
    out = cli(
        "add-model", "odd", "--file", FIXTURES / "models" / "tiny" / "model.pt",
        "--tokenizer", ROOT / "text-classifier" / "tokenizer.json", "--root", tmp_path,
    )  # fmt: skip
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "['x']" in out.stderr and '"inputs"' in out.stderr
    assert not (tmp_path / "models" / "odd").exists()


def test_doctor_runs_text_models(efs):  # noqa: F811
    shutil.copytree(ROOT, efs / "models", dirs_exist_ok=True)
    out = cli("doctor", "--root", efs, "--json")
    checks = {c["check"]: c for c in json.loads(out.stdout)}
    for name in ("text-classifier", "text-embedder"):
        check = next(c for k, c in checks.items() if name in k)
        assert check["ok"], check


def hf_directory(tmp_path: Path, task: str) -> Path:
    """A Hugging Face model directory as ``save_pretrained`` writes it: a tiny BERT with random
    weights and the fixture's WordPiece tokenizer as a fast tokenizer (nothing downloaded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import (
            BertConfig,
            BertForSequenceClassification,
            BertModel,
            PreTrainedTokenizerFast,
        )

        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(ROOT / "text-classifier" / "tokenizer.json"),
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        torch.manual_seed(5)
        config = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
            id2label={0: "ham", 1: "spam"},
            label2id={"ham": 0, "spam": 1},
        )
        model = (
            BertForSequenceClassification(config) if task == "classification" else BertModel(config)
        )
        out = tmp_path / f"hf-{task}"
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out


def test_export_a_hugging_face_model_with_its_tokenizer(lt, tmp_path):
    source = hf_directory(tmp_path, "classification")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "lambdatorch", "export", "--hf", source, "--out", tmp_path / "spam",
         "--max-length", "32"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "spam" / "manifest.json").read_text())
    assert manifest["input"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["input"]["max_length"] == 32
    assert manifest["output"]["labels"] == ["ham", "spam"]
    model = lt.load(tmp_path / "spam")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source)
        eager = AutoModelForSequenceClassification.from_pretrained(source).eval()
        batch = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            expected = torch.softmax(eager(**batch).logits, 1).numpy()
    for row, want in zip(model.predict_batch(TEXTS, top_k=2), expected, strict=True):
        got = np.zeros(2, np.float32)
        for p in row:
            got[p.index] = p.score
        np.testing.assert_allclose(got, want, atol=TOLERANCE)
    ours = model.tokenize(TEXTS)
    np.testing.assert_array_equal(ours["input_ids"], batch["input_ids"].numpy())

    # The Python function (what the command calls), in this process: an embedding model.
    from lambdatorch._export_text import export_text

    source = hf_directory(tmp_path, "embedding")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecations
        report = export_text(source, tmp_path / "embedder", task="embedding", pooling="cls")
    assert report.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert report.max_abs_diff <= 1e-4
    manifest = json.loads((tmp_path / "embedder" / "manifest.json").read_text())
    assert manifest["output"] == {"type": "embedding", "pooling": "cls", "normalize": True}
    assert lt.load(tmp_path / "embedder").embed(TEXTS).shape == (len(TEXTS), 32)


def test_a_text_model_exported_to_aoti_serves_like_pytorch(lt, tmp_path):
    """``export --format aoti`` of a Hugging Face model: a package whose batch and tokens are
    dynamic, served through the Python API and both handlers with PyTorch's answers, whatever the
    batch and its length; a manifest that would give the package more tokens or other inputs
    than it was exported for is refused at load (its kernels do not check their inputs)."""
    from lambdatorch._export_text import export_text

    source = hf_directory(tmp_path, "classification")
    models = tmp_path / "models"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecations
        report = export_text(source, models / "spam", max_length=32, format="aoti")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source)
        eager = AutoModelForSequenceClassification.from_pretrained(source).eval()
    assert (report.file, report.inputs) == (
        "package",
        ["input_ids", "attention_mask", "token_type_ids"],
    )
    manifest = json.loads((models / "spam" / "manifest.json").read_text())
    assert (manifest["format"], manifest["cpu_isa"]) == ("aoti", "AVX2")

    texts = [*TEXTS[:7], " ".join(TEXTS[:6])]  # the last truncated to the package's bound
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 32
    with torch.no_grad():
        expected = torch.softmax(eager(**batch).logits, 1).numpy()

    def scores(rows: list[list[Any]]) -> np.ndarray:
        got = np.zeros((len(rows), 2), np.float32)
        for i, row in enumerate(rows):
            for p in row:
                got[i, p["index"] if isinstance(p, dict) else p.index] = (
                    p["score"] if isinstance(p, dict) else p.score
                )
        return got

    model = lt.load(models / "spam")
    np.testing.assert_allclose(
        scores(model.predict_batch(texts, top_k=2)), expected, atol=TOLERANCE
    )
    for i in (0, 2):  # alone: a batch of 1 at its own length
        np.testing.assert_allclose(
            scores([model.predict(texts[i], top_k=2)])[0], expected[i], atol=TOLERANCE
        )
    env = {"PATH": os.environ["PATH"], "LAMBDATORCH_MODELS": str(models), **HANDLER_ENV}
    (tmp_path / "logs").mkdir()
    with Handlers(env, tmp_path / "logs") as handlers:
        reply = handlers.both({"model": "spam", "texts": texts, "top_k": 2})
    got = scores([result["predictions"] for result in reply["results"]])
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)

    refusals = [
        ({"max_length": 64}, "at most 32 in dimension 1"),
        ({"inputs": ["input_ids", "attention_mask"]}, "takes 3 input tensors"),
    ]
    for i, (change, says) in enumerate(refusals):
        bad = models / f"bad-{i}"
        shutil.copytree(models / "spam", bad)
        edited = json.loads((bad / "manifest.json").read_text())
        edited["input"].update(change)
        (bad / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(lt.ManifestError, match=says):
            lt.load(bad)
