"""The Python Lambda handler people write today to serve a text model from EFS.

torch and transformers come from EFS (``PYTHONPATH=/mnt/efs/python``); the model is the TorchScript
file lambdatorch serves too, with a fast tokenizer from the same ``tokenizer.json`` and the same
settings (its manifest's), loaded during init. It answers lambdatorch's direct invokes of text
models in the same shape (``results`` for a classifier, ``embeddings`` and ``dims`` for an
embedding model), and its ``timings_ms.inference`` covers what lambdatorch's does: the forward
pass and the output head (softmax and top-k, or mean pooling over the attention mask and L2
normalisation), up to the results as tensors. Tokenizing, building the tensors and turning the
results into Python lists are the overhead, in both.
"""

import json
import os
import time

import torch
import transformers

MODELS = os.environ.get("MODELS_DIR", "/mnt/efs/models")
DEFAULT_MODEL = os.environ.get("DEFAULT_MODEL", "text-classifier")
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>")

_models = {}


def get_model(name):
    if name not in _models:
        folder = os.path.join(MODELS, name)
        with open(os.path.join(folder, "manifest.json")) as f:
            manifest = json.load(f)
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(folder, "tokenizer.json")
        )
        vocabulary = tokenizer.get_vocab()
        tokenizer.pad_token = next(t for t in PAD_TOKENS if t in vocabulary)
        model = torch.jit.load(os.path.join(folder, "model.pt")).eval()
        _models[name] = (manifest, tokenizer, model)
    return _models[name]


get_model(DEFAULT_MODEL)  # during init, so that requests do not pay for it


def lambda_handler(event, context):
    start = time.perf_counter()
    name = event.get("model", DEFAULT_MODEL)
    manifest, tokenizer, model = get_model(name)
    texts = event["texts"] if "texts" in event else [event["text"]]
    batch = tokenizer(
        texts,
        padding="longest",
        truncation=True,
        max_length=manifest["input"]["max_length"],
        return_tensors="pt",
        return_token_type_ids=True,
    )
    output = manifest["output"]
    with torch.inference_mode():
        before = time.perf_counter()
        out = model(*(batch[n] for n in manifest["input"]["inputs"]))
        if output["type"] == "embedding":
            mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
            pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        else:
            scores, indices = out.softmax(dim=1).topk(min(output.get("top_k", 5), out.shape[1]))
        inference = time.perf_counter() - before
    if output["type"] == "embedding":
        body = {"embeddings": vectors.tolist(), "dims": vectors.shape[1]}
    else:
        labels = output["labels"]
        body = {
            "results": [
                {
                    "predictions": [
                        {"index": i, "label": labels[i], "score": s}
                        for s, i in zip(row, top, strict=True)
                    ]
                }
                for row, top in zip(scores.tolist(), indices.tolist(), strict=True)
            ]
        }
    timings = {"inference": inference * 1e3, "total": (time.perf_counter() - start) * 1e3}
    return {"model": name, **body, "timings_ms": timings}
