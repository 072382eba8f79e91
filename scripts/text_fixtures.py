"""Text-model fixtures (issue 13): tokenizers trained here, tiny BERTs traced to TorchScript.

Called by ``make_fixtures.py`` (``make fixtures``) with ``target/fixtures/text``; nothing is
downloaded. A WordPiece tokenizer (BERT's pipeline: lowercasing, accent-preserving normalizer,
``[CLS] a [SEP] b [SEP]``) and a byte-level BPE (GPT-2/RoBERTa's pipeline, whose pre-tokenizer is a
regex) are trained on the test texts below plus generated sentences; ``transformers`` builds BERTs
of 2 layers and 32 hidden units from a seed, wrapped so that ``forward`` takes the tokenizer's
tensors by name, and traces them. Each traced model is checked against the eager one on batches
of other shapes than the example's (tracing can freeze shapes or skip the attention mask).

Layout::

    text/
      texts.json                the test texts: {"texts": [...], "pairs": [[a, b], ...]}
      expected.json             per model: the Python tokenizers' ids for the texts, and the
                                traced model's output on them (what Rust tests compare against)
      models/<name>/            manifest.json, model.pt, tokenizer.json (a root of its own)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

#: Texts the tests tokenize and run: scripts, accents, emoji (with skin tones and ZWJ
#: sequences), combining marks, odd spacing, and texts long enough to be truncated.
TEXTS = [
    "The movie was great!",
    "I did not like this at all.",
    "Café au lait, naïve façade, Zürich, São Paulo, Ångström.",
    "Straße und Fußgänger: GROSS und klein.",
    "東京は日本の首都です。北京是中国的首都。",
    "서울은 한국의 수도입니다.",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Emoji: 👍🏽 🤖 👨\u200d👩\u200d👧 🇫🇷 ❤️ 😂😂😂",
    "e\u0301 (combining acute) vs é; ﬁ ligature; \uff26\uff35\uff2c\uff2c width (full-width)",
    "  leading and trailing spaces,\ttabs\nand new lines  ",
    "Numbers 3.14159, 2,000,000 and $12.50 or 50% off (really?!)",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 40),
    " ".join(f"word{i} émoji🙂{i}" for i in range(150)),
]

PAIRS = [
    ["What is the capital of Japan?", "東京は日本の首都です。"],
    ["Is it good?", "The movie was great!"],
    ["short", " ".join(["a much longer second text that needs truncation"] * 30)],
    [" ".join(["a long first text"] * 40), "and a short second 🤖"],
]

LABELS = ["negative", "neutral", "positive"]

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus() -> list[str]:
    """Training text: the test texts, pairs, and generated sentences (deterministic)."""
    subjects = ["the cat", "a dog", "my friend", "the model", "this film", "our team", "le chat"]
    verbs = ["likes", "hates", "runs", "sees", "builds", "mange", "ist", "reads"]
    objects = ["fish", "the park", "a tokenizer", "music", "the results", "ein Buch", "寿司"]
    generated = [
        f"{s} {v} {o} {n} times."
        for n, (s, v, o) in enumerate((s, v, o) for s in subjects for v in verbs for o in objects)
    ]
    return TEXTS + [t for pair in PAIRS for t in pair] + generated


def wordpiece() -> Tokenizer:
    """BERT's tokenizer pipeline (as ``BertTokenizerFast`` writes it), trained on the corpus."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=1200, special_tokens=SPECIAL)
    tok.train_from_iterator(corpus(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def byte_level_bpe() -> Tokenizer:
    """GPT-2/RoBERTa's byte-level BPE pipeline (regex pre-tokenizer), trained on the corpus."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    return tok


def configure(tok: Tokenizer, manifest_input: dict) -> Tokenizer:
    """A copy of ``tok`` set up as a manifest's text input says (what lambdatorch must match)."""
    tok = Tokenizer.from_str(tok.to_str())
    pad = next(t for t in ("[PAD]", "<pad>") if tok.token_to_id(t) is not None)
    if manifest_input.get("truncation", True):
        tok.enable_truncation(manifest_input["max_length"])
    else:
        tok.no_truncation()
    length = manifest_input["max_length"] if manifest_input.get("padding") == "max_length" else None
    tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad, length=length)
    return tok


def tiny_bert(vocab_size: int, seed: int, **extra):
    from transformers import BertConfig

    torch.manual_seed(seed)
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        **extra,
    )


class Classifier(torch.nn.Module):
    """``BertForSequenceClassification`` taking the tokenizer's three tensors, returning logits."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.logits


class Encoder(torch.nn.Module):
    """``BertModel`` taking ids and mask, returning the token vectors (``last_hidden_state``)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tensors(tok: Tokenizer, items: list) -> dict[str, torch.Tensor]:
    encodings = tok.encode_batch([tuple(i) if isinstance(i, list) else i for i in items])
    return {
        "input_ids": torch.tensor([e.ids for e in encodings]),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
        "token_type_ids": torch.tensor([e.type_ids for e in encodings]),
    }


def trace(module: torch.nn.Module, tok: Tokenizer, names: list[str]) -> torch.jit.ScriptModule:
    """Trace on a padded batch (so the mask path is recorded), then check the traced module
    against the eager one on batches of other sizes, with and without padding."""
    module.eval()
    example = tensors(tok, ["a short one", "a somewhat longer example text to pad against"])
    with torch.no_grad():
        traced = torch.jit.trace(module, tuple(example[n] for n in names))
        for batch in (TEXTS[:5], TEXTS[-3:], ["one text alone"], ["same", "size"]):
            inputs = tuple(tensors(tok, batch)[n] for n in names)
            torch.testing.assert_close(traced(*inputs), module(*inputs), rtol=0, atol=1e-5)
    return traced


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(root: Path, name: str, traced, tok: Tokenizer, manifest: dict) -> None:
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    traced.save(str(out / "model.pt"))
    tok.save(str(out / "tokenizer.json"))
    # The forward arguments, in order, as add-model and export read them.
    manifest["input"]["inputs"] = [a.name for a in traced.forward.schema.arguments[1:]]
    manifest = {"format": "torchscript", "file": "model.pt", **manifest}
    manifest["sha256"] = sha256(out / "model.pt")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def expected(tok: Tokenizer, traced, manifest: dict, items: list) -> dict:
    configured = configure(tok, manifest["input"])
    inputs = tensors(configured, items)
    with torch.no_grad():
        output = traced(*(inputs[n] for n in manifest["input"]["inputs"]))
    return {
        **{k: v.tolist() for k, v in inputs.items()},
        "output_shape": list(output.shape),
        "output": output.flatten().tolist(),
    }


def make_text_models(out: Path) -> None:
    from transformers import BertForSequenceClassification, BertModel

    models_root = out / "models"
    models_root.mkdir(parents=True, exist_ok=True)
    (out / "texts.json").write_text(
        json.dumps({"texts": TEXTS, "pairs": PAIRS}, ensure_ascii=False, indent=1) + "\n"
    )
    results = {}

    wp = wordpiece()
    config = tiny_bert(wp.get_vocab_size(), seed=13, num_labels=len(LABELS))
    classifier = trace(
        Classifier(BertForSequenceClassification(config)),
        configure(wp, {"max_length": 64}),
        ["input_ids", "attention_mask", "token_type_ids"],
    )
    manifest = {
        "input": {"type": "text", "tokenizer": "tokenizer.json", "max_length": 64},
        "output": {"type": "classification", "labels": LABELS, "top_k": 3},
        "max_batch": 32,
    }
    write(models_root, "text-classifier", classifier, wp, manifest)
    results["text-classifier"] = {
        "texts": expected(wp, classifier, manifest, TEXTS),
        "pairs": expected(wp, classifier, manifest, PAIRS),
    }

    bpe = byte_level_bpe()
    config = tiny_bert(bpe.get_vocab_size(), seed=14)
    encoder = trace(
        Encoder(BertModel(config, add_pooling_layer=False)),
        configure(bpe, {"max_length": 48}),
        ["input_ids", "attention_mask"],
    )
    manifest = {
        "input": {
            "type": "text",
            "tokenizer": "tokenizer.json",
            "max_length": 48,
            "padding": "longest",
        },
        "output": {"type": "embedding", "pooling": "mean", "normalize": True},
        "max_batch": 32,
    }
    write(models_root, "text-embedder", encoder, bpe, manifest)
    results["text-embedder"] = {"texts": expected(bpe, encoder, manifest, TEXTS)}
    (out / "expected.json").write_text(json.dumps(results) + "\n")
