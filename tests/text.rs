//! Text models on the fixtures `make fixtures` writes (`text/`): token ids identical to the Python
//! `tokenizers` library's, outputs within 1e-5 of the traced model run by Python torch on the same
//! ids, embeddings equal to sentence-transformers' mean pooling, and the typed errors of bad texts
//! and bad tokenizer files, through the model and through the service core both handlers run.

mod common;

use std::path::{Path, PathBuf};

use lambdatorch::error::Limit;
use lambdatorch::events;
use lambdatorch::manifest::{ModelDir, TextTensor};
use lambdatorch::model::TextAnswer;
use lambdatorch::service::{Config, Service};
use lambdatorch::text::TextSource;
use lambdatorch::{Error, ErrorKind, Limits, Model};
use serde_json::{json, Value};

fn text_root() -> PathBuf {
    common::fixtures().join("text")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("JSON")
}

fn load(name: &str) -> Model {
    let dir = ModelDir::open(&text_root().join("models").join(name)).expect("model dir");
    Model::load(dir, Limits::default()).expect("model loads")
}

fn sources(items: &Value) -> Vec<TextSource> {
    items
        .as_array()
        .expect("list")
        .iter()
        .map(|item| match item {
            Value::String(text) => TextSource::Single(text.clone()),
            Value::Array(pair) => TextSource::Pair(
                pair[0].as_str().expect("str").to_owned(),
                pair[1].as_str().expect("str").to_owned(),
            ),
            other => panic!("not a text: {other}"),
        })
        .collect()
}

fn ints(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_i64().expect("int"))
        })
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_f64().expect("float") as f32)
        .collect()
}

/// A copy of a text fixture model whose manifest has `changes` applied to its `input` and
/// `output` sections (and `sha256` dropped when the model file is damaged).
fn variant(name: &str, into: &Path, change: impl FnOnce(&mut Value, &Path)) -> PathBuf {
    let src = text_root().join("models").join(name);
    let dest = into.join(name);
    std::fs::create_dir_all(&dest).expect("mkdir");
    for file in ["manifest.json", "model.pt", "tokenizer.json"] {
        std::fs::copy(src.join(file), dest.join(file)).expect("copy");
    }
    let mut manifest = read_json(&dest.join("manifest.json"));
    change(&mut manifest, &dest);
    std::fs::write(dest.join("manifest.json"), manifest.to_string()).expect("write");
    dest
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lambdatorch-text-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn token_ids_match_python_tokenizers() {
    let texts = read_json(&text_root().join("texts.json"));
    let expected = read_json(&text_root().join("expected.json"));
    for (model, batches) in [
        ("text-classifier", vec!["texts", "pairs"]),
        ("text-embedder", vec!["texts"]),
    ] {
        let mut model_dir = None;
        for batch in batches {
            let want = &expected[model][batch];
            let items = sources(&texts[batch]);
            let loaded = if batch == "pairs" {
                // The same model and tokenizer, as a pair model.
                let dir = scratch("pairs");
                let path = variant(model, &dir, |m, _| m["input"]["pair"] = json!(true));
                model_dir = Some(dir);
                Model::load(ModelDir::open(&path).expect("dir"), Limits::default()).expect("loads")
            } else {
                load(model)
            };
            let tokens = loaded.tokenize(&items).expect("tokenize");
            for name in [
                TextTensor::InputIds,
                TextTensor::AttentionMask,
                TextTensor::TokenTypeIds,
            ] {
                assert_eq!(
                    tokens.get(name),
                    ints(&want[name.name()]),
                    "{model} {batch} {}",
                    name.name()
                );
            }
            // One at a time (padded to their own length) too: the same ids, without padding.
            for (i, item) in items.iter().enumerate() {
                let one = loaded
                    .tokenize(std::slice::from_ref(item))
                    .expect("tokenize");
                let row = &ints(&want["input_ids"])[i * tokens.length..(i + 1) * tokens.length];
                let mask = &ints(&want["attention_mask"])[i * tokens.length..];
                let len = mask.iter().take(tokens.length).filter(|&&m| m == 1).count();
                assert_eq!(one.input_ids, row[..len].to_vec(), "{model} {batch} {i}");
            }
        }
        if let Some(dir) = model_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn classifier_outputs_match_torch_on_the_same_ids() {
    let texts = read_json(&text_root().join("texts.json"));
    let want = &read_json(&text_root().join("expected.json"))["text-classifier"]["texts"];
    let model = load("text-classifier");
    let items = sources(&texts["texts"]);
    let logits = floats(&want["output"]);
    let classes = 3;
    let (answer, timings) = model.run_texts(&items, Some(classes)).expect("runs");
    let TextAnswer::Predictions(rows) = answer else {
        panic!("a classifier answers with predictions")
    };
    assert_eq!(rows.len(), items.len());
    for (row, scores) in rows.iter().zip(logits.chunks(classes)) {
        let max = scores.iter().copied().fold(f32::MIN, f32::max);
        let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        for p in row {
            assert!(
                (p.score - exp[p.index] / sum).abs() < 1e-5,
                "{p:?} vs {scores:?}"
            );
        }
        assert!(row.windows(2).all(|w| w[0].score >= w[1].score));
    }
    assert!(timings.preprocess > 0.0 && timings.inference > 0.0);
}

#[test]
fn embeddings_are_sentence_transformers_mean_pooling() {
    let texts = read_json(&text_root().join("texts.json"));
    let want = &read_json(&text_root().join("expected.json"))["text-embedder"]["texts"];
    let model = load("text-embedder");
    let items = sources(&texts["texts"]);
    let (answer, _) = model.run_texts(&items, None).expect("runs");
    let TextAnswer::Embeddings(embeddings) = answer else {
        panic!("an embedding model answers with embeddings")
    };
    // The formula, from the traced model's token vectors computed by Python torch.
    let shape: Vec<usize> = want["output_shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().expect("dim") as usize)
        .collect();
    let [batch, tokens, dims] = shape[..] else {
        panic!("token vectors")
    };
    let vectors = floats(&want["output"]);
    let mask = ints(&want["attention_mask"]);
    assert_eq!((embeddings.batch, embeddings.dims), (batch, dims));
    for b in 0..batch {
        let mut pooled = vec![0f64; dims];
        let mut count = 0f64;
        for t in 0..tokens {
            let m = mask[b * tokens + t] as f64;
            count += m;
            for d in 0..dims {
                pooled[d] += f64::from(vectors[(b * tokens + t) * dims + d]) * m;
            }
        }
        let pooled: Vec<f64> = pooled.iter().map(|v| v / count.max(1e-9)).collect();
        let norm = pooled.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        let got = &embeddings.data[b * dims..(b + 1) * dims];
        for (g, p) in got.iter().zip(&pooled) {
            assert!(
                (f64::from(*g) - p / norm).abs() < 1e-5,
                "text {b}: {g} vs {}",
                p / norm
            );
        }
    }
}

fn text_service(limits: Limits) -> &'static Service {
    Box::leak(Box::new(Service::new(Config {
        models_root: text_root().join("models"),
        default_model: Some("text-classifier".to_owned()),
        preload: Vec::new(),
        limits,
    })))
}

#[test]
fn requests_through_the_service_core() {
    let service = text_service(Limits::default());
    let call = |event: Value| events::handle(service, event, "test").reply();
    let single = call(json!({"text": "The movie was great!", "top_k": 2})).expect("answers");
    assert_eq!(single["model"], "text-classifier");
    assert_eq!(single["predictions"].as_array().map(Vec::len), Some(2));
    let batch = call(json!({"texts": ["The movie was great!", "bad"]})).expect("answers");
    let results = batch["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["predictions"][0], single["predictions"][0]);
    let embedded = call(json!({"model": "text-embedder", "texts": ["a", "b c"]})).expect("answers");
    assert_eq!(embedded["dims"], 32);
    let vectors = embedded["embeddings"].as_array().expect("embeddings");
    assert_eq!(vectors.len(), 2);
    let norm: f64 = vectors[0]
        .as_array()
        .expect("vector")
        .iter()
        .map(|v| v.as_f64().unwrap_or(0.0).powi(2))
        .sum();
    assert!((norm - 1.0).abs() < 1e-5);
    // text/plain over HTTP: the same answer as the direct invoke.
    let http = json!({
        "version": "2.0", "routeKey": "POST /predict", "rawPath": "/predict", "rawQueryString": "top_k=2",
        "queryStringParameters": {"top_k": "2"},
        "headers": {"content-type": "text/plain; charset=utf-8"},
        "requestContext": {
            "accountId": "1", "apiId": "api", "domainName": "api.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "api", "requestId": "id", "routeKey": "POST /predict", "stage": "$default",
            "time": "02/Dec/2026:06:00:00 +0000", "timeEpoch": 0,
            "http": {"method": "POST", "path": "/predict", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t"}
        },
        "body": "The movie was great!", "isBase64Encoded": false
    });
    let reply = call(http.clone()).expect("proxy response");
    assert_eq!(reply["statusCode"], 200);
    let body: Value = serde_json::from_str(reply["body"].as_str().expect("body")).expect("JSON");
    assert_eq!(body["predictions"], single["predictions"]);
    let mut latin1 = http;
    latin1["headers"]["content-type"] = json!("text/plain; charset=iso-8859-1");
    assert_eq!(call(latin1).expect("proxy")["statusCode"], 400);
}

#[test]
fn bad_texts_are_typed_errors_before_any_work() {
    let limits = Limits {
        max_text_bytes: 100,
        max_batch: 4,
        ..Limits::default()
    };
    let service = text_service(limits);
    let kind = |event: Value| match events::handle(service, event, "test").reply() {
        Err(err) => err.kind(),
        Ok(reply) => panic!("expected an error, got {reply}"),
    };
    assert_eq!(kind(json!({"text": ""})), ErrorKind::InvalidInput);
    assert_eq!(kind(json!({"text": "  \n "})), ErrorKind::InvalidInput);
    assert_eq!(kind(json!({"text": "bell\u{7}"})), ErrorKind::InvalidInput);
    assert_eq!(
        kind(json!({"text": "c1 \u{85} control"})),
        ErrorKind::InvalidInput
    );
    assert_eq!(kind(json!({"texts": []})), ErrorKind::InvalidInput);
    assert_eq!(
        kind(json!({"text": ["a", "pair"]})),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(json!({"text": "x".repeat(101)})),
        ErrorKind::PayloadTooLarge
    );
    assert_eq!(
        kind(json!({"texts": vec!["x"; 5]})),
        ErrorKind::PayloadTooLarge
    );
    // Invalid UTF-8 can only arrive as bytes: an HTTP body.
    assert!(matches!(
        TextSource::from_utf8(vec![b'a', 0xff, b'b']),
        Err(Error::InvalidInput(message)) if message.contains("byte 1")
    ));
    // Tensors and images are refused by a text model, before anything runs.
    let tensor = json!({"tensor": {"shape": [1, 2], "data": [1, 2]}});
    assert_eq!(kind(tensor), ErrorKind::InvalidInput);
    assert_eq!(kind(json!({"image": "AAAA"})), ErrorKind::InvalidInput);
}

#[test]
fn truncation_off_refuses_long_texts_and_padding_max_length_pads() {
    let dir = scratch("settings");
    let strict = variant("text-classifier", &dir, |m, _| {
        m["input"]["truncation"] = json!(false);
        m["input"]["padding"] = json!("max_length");
    });
    let model =
        Model::load(ModelDir::open(&strict).expect("dir"), Limits::default()).expect("loads");
    let tokens = model
        .tokenize(&[TextSource::Single("short".into())])
        .expect("tokenize");
    assert_eq!(tokens.length, 64);
    let long = TextSource::Single("word ".repeat(100));
    assert!(matches!(
        model.tokenize(&[long]),
        Err(Error::TooLarge {
            limit: Limit::TextTokens,
            max: 64,
            ..
        })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_tokenizer_files_are_manifest_errors_naming_the_field() {
    let dir = scratch("tokenizers");
    type Damage = Box<dyn Fn(&mut Value, &Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "missing",
            Box::new(|_, d| std::fs::remove_file(d.join("tokenizer.json")).expect("rm")),
        ),
        (
            "corrupt",
            Box::new(|_, d| std::fs::write(d.join("tokenizer.json"), b"{\"model\": 3").expect("w")),
        ),
        (
            "huge",
            Box::new(|_, d| {
                let file = std::fs::File::create(d.join("tokenizer.json")).expect("create");
                file.set_len(lambdatorch::text::MAX_TOKENIZER_BYTES + 1)
                    .expect("sparse");
            }),
        ),
        (
            "outside",
            Box::new(|m, _| m["input"]["tokenizer"] = json!("../text-embedder/tokenizer.json")),
        ),
        (
            "too-short",
            Box::new(|m, _| m["input"]["max_length"] = json!(2)),
        ),
        (
            "no-ids-first",
            Box::new(|m, _| m["input"]["inputs"] = json!(["attention_mask"])),
        ),
    ];
    for (case, damage) in cases {
        let case_dir = dir.join(case);
        std::fs::create_dir_all(&case_dir).expect("mkdir");
        let path = variant("text-classifier", &case_dir, |m, d| damage(m, d));
        let err = ModelDir::open(&path)
            .and_then(|d| Model::load(d, Limits::default()))
            .expect_err(case);
        match &err {
            Error::Manifest {
                path: at, field, ..
            } => {
                assert!(at.ends_with("manifest.json"), "{case}: {err}");
                let want = if case == "too-short" {
                    "input.max_length"
                } else if case == "no-ids-first" {
                    "input.inputs"
                } else {
                    "input.tokenizer"
                };
                assert_eq!(field, want, "{case}: {err}");
            }
            other => panic!("{case}: expected a ManifestError, got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
