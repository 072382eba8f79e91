//! Many requests at once: every request answered once, as it would be alone; the batcher shares
//! forward passes; the model cache stays within its budget.

mod common;

use std::sync::{Arc, Once};

use common::{fixtures, image_base64, models, service};
use lambdatorch::registry::Registry;
use lambdatorch::service::{Config, Service};
use lambdatorch::{events, ErrorKind, Limits};
use serde_json::{json, Value};

/// Batching on for every model this test binary loads (its own process): requests wait up to
/// 20 ms for others.
fn batching_on() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("LAMBDATORCH_BATCH_DELAY_MS", "20"));
}

fn requests() -> Vec<(Value, Option<ErrorKind>)> {
    let (cat, coffee) = (image_base64("chelsea.jpg"), image_base64("coffee.jpg"));
    vec![
        (json!({"model": "tiny", "image": cat}), None),
        (json!({"model": "tiny", "images": [coffee, cat]}), None),
        (
            json!({"model": "tiny", "image": "bm90IGFuIGltYWdl"}),
            Some(ErrorKind::InvalidImage),
        ),
        (
            json!({"model": "tensor-classifier", "tensor": {"shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}}),
            None,
        ),
        (
            json!({"model": "tensor-classifier", "tensor": {"shape": [2, 4], "data": [1, 2, 3, 4, -1, 0, 1, 2]}}),
            None,
        ),
        (
            json!({"model": "tensor-classifier", "tensor": {"shape": [1, 3], "data": [1, 2, 3]}}),
            Some(ErrorKind::InvalidInput),
        ),
        (
            json!({"model": "dtype-int64", "tensor": {"shape": [1, 4], "data": [9007199254740993i64, 1, 2, 3]}}),
            None,
        ),
        (
            json!({"model": "nope", "image": cat}),
            Some(ErrorKind::ModelNotFound),
        ),
    ]
}

/// What the answer must equal, whatever batch it ran in: predictions (indices exact, scores
/// within float rounding of a batched convolution) or raw output.
fn same_answer(got: &Value, alone: &Value) -> bool {
    let rows = |v: &Value| -> Vec<Value> {
        match (v.get("predictions"), v.get("results")) {
            (Some(p), _) => vec![p.clone()],
            (_, Some(Value::Array(results))) => {
                results.iter().map(|r| r["predictions"].clone()).collect()
            }
            _ => vec![v["output"].clone()],
        }
    };
    let close = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-5,
        _ => a == b,
    };
    let (got, alone) = (rows(got), rows(alone));
    got.len() == alone.len()
        && got
            .iter()
            .zip(&alone)
            .all(|(g, a)| match (g.as_array(), a.as_array()) {
                (Some(g), Some(a)) => {
                    g.len() == a.len()
                        && g.iter().zip(a).all(|(p, q)| {
                            p["index"] == q["index"]
                                && p["label"] == q["label"]
                                && close(&p["score"], &q["score"])
                        })
                }
                _ => g == a,
            })
}

#[test]
fn concurrent_requests_each_get_their_own_answer_once() {
    batching_on();
    let svc = service(None, Limits::default());
    let requests = requests();
    let alone: Vec<Result<Value, ErrorKind>> = requests
        .iter()
        .map(|(event, _)| {
            events::handle(svc, event.clone(), "alone")
                .reply()
                .map_err(|e| e.kind())
        })
        .collect();
    let mut batched = 0;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|worker| {
                let (requests, alone) = (&requests, &alone);
                s.spawn(move || {
                    let mut shared = 0;
                    for n in 0..40 {
                        let i = (worker * 7 + n) % requests.len();
                        let (event, expected_error) = &requests[i];
                        let reply = events::handle(svc, event.clone(), "c").reply();
                        match (reply, expected_error, &alone[i]) {
                            (Ok(got), None, Ok(want)) => {
                                assert!(same_answer(&got, want), "{got} vs {want}");
                                let size = got["batch_size"].as_u64().expect("batch_size");
                                shared += usize::from(size > got_rows(&got));
                            }
                            (Err(err), Some(kind), _) => assert_eq!(err.kind(), *kind, "{err}"),
                            (other, expected, _) => {
                                panic!("{event}: {other:?}, expected {expected:?}")
                            }
                        }
                    }
                    shared
                })
            })
            .collect();
        batched = workers
            .into_iter()
            .map(|w| w.join().expect("no panic"))
            .sum::<usize>();
    });
    assert!(batched > 0, "no request shared a forward pass in 640");
}

/// Rows a response's request contributed.
fn got_rows(reply: &Value) -> u64 {
    match (
        reply.get("results"),
        reply.get("output"),
        reply.get("embeddings"),
    ) {
        (Some(Value::Array(results)), _, _) => results.len() as u64,
        (_, Some(output), _) => output["shape"][0].as_u64().unwrap_or(1),
        (_, _, Some(Value::Array(rows))) => rows.len() as u64,
        _ => 1,
    }
}

#[test]
fn the_cache_evicts_idle_models_least_recently_used_first() -> lambdatorch::Result<()> {
    let size =
        |name: &str| std::fs::metadata(models().join(name).join("model.pt")).map_or(0, |m| m.len());
    // Room for "tiny" and "gray" together, not for a third model beside them.
    let budget = size("tiny") + size("gray") + size("tensor") / 2;
    let registry = Registry::charging_files(Some(budget));
    let loaded = |registry: &Registry| -> Vec<String> {
        registry
            .loaded()
            .iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    };
    drop(registry.load(&models().join("tiny"))?);
    drop(registry.load(&models().join("gray"))?);
    assert_eq!(loaded(&registry), ["gray", "tiny"]);
    drop(registry.load(&models().join("tiny"))?); // tiny is now the most recently used
    drop(registry.load(&models().join("tensor"))?);
    assert_eq!(loaded(&registry), ["tensor", "tiny"]);
    // A model a request holds is never evicted: the load goes over the budget instead.
    let held = registry.load(&models().join("tensor"))?;
    let tiny = registry.load(&models().join("tiny"))?;
    drop(registry.load(&models().join("gray"))?);
    assert_eq!(loaded(&registry), ["gray", "tensor", "tiny"]);
    drop((held, tiny));
    Ok(())
}

#[test]
fn concurrent_first_requests_load_a_model_once() -> lambdatorch::Result<()> {
    let registry = Registry::with_budget(None);
    let dir = models().join("mobilenet");
    let loaded: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| registry.load(&dir))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    let first = loaded[0]
        .as_ref()
        .map_err(|e| lambdatorch::Error::invalid_input(e.to_string()))?;
    for model in &loaded {
        assert!(Arc::ptr_eq(first, model.as_ref().expect("loaded")));
    }
    Ok(())
}

#[test]
fn a_model_larger_than_the_whole_cache_is_refused_before_loading() {
    let registry = Registry::with_budget(Some(1000));
    let err = registry
        .load(&models().join("tiny"))
        .expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::ManifestError);
    assert!(
        err.to_string().contains("LAMBDATORCH_MODEL_CACHE_MB"),
        "{err}"
    );
    assert!(registry.loaded().is_empty());
}

#[test]
fn concurrent_texts_share_forward_passes_padded_to_the_longest() {
    batching_on();
    let svc: &'static Service = Box::leak(Box::new(Service::new(Config {
        models_root: fixtures().join("text").join("models"),
        default_model: None,
        preload: Vec::new(),
        limits: Limits::default(),
    })));
    let (short, long) = (
        "A great film.",
        "What a long, winding and wonderful story this was!",
    );
    // The long texts are the only requests of their length for each model: they share a pass
    // only with shorter ones, padded.
    let requests = [
        json!({"model": "text-classifier", "text": short}),
        json!({"model": "text-classifier", "texts": [short, "Awful."]}),
        json!({"model": "text-classifier", "text": long}),
        json!({"model": "text-embedder", "text": short}),
        json!({"model": "text-embedder", "texts": ["Awful.", short]}),
        json!({"model": "text-embedder", "texts": [long]}),
        json!({"model": "text-embedder", "text": "\u{7}"}),
    ];
    let long_ones = [2, 5];
    let call = |event: &Value| events::handle(svc, event.clone(), "t").reply();
    let alone: Vec<Option<Value>> = requests.iter().map(|event| call(event).ok()).collect();
    assert!(
        alone.last().is_some_and(Option::is_none),
        "a control character is refused"
    );
    let shared: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..12)
            .map(|worker| {
                let (requests, alone, call) = (&requests, &alone, &call);
                s.spawn(move || {
                    let mut shared = vec![0; requests.len()];
                    for n in 0..30 {
                        let i = (worker * 5 + n) % requests.len();
                        match (call(&requests[i]), &alone[i]) {
                            (Ok(got), Some(want)) => {
                                assert!(same_text_answer(&got, want), "{got} vs {want}");
                                let size = got["batch_size"].as_u64().expect("batch_size");
                                shared[i] += usize::from(size > got_rows(&got));
                            }
                            (Err(err), None) => assert_eq!(err.kind(), ErrorKind::InvalidInput),
                            (got, want) => panic!("{}: {got:?}, alone {want:?}", requests[i]),
                        }
                    }
                    shared
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("no panic"))
            .fold(vec![0; requests.len()], |total, counts| {
                total.iter().zip(counts).map(|(a, b)| a + b).collect()
            })
    });
    for i in long_ones {
        assert!(
            shared[i] > 0,
            "{} never shared a pass: {shared:?}",
            requests[i]
        );
    }
}

/// A text answer as it was alone: predictions as [`same_answer`] has them, embeddings within
/// float rounding of a batched pass.
fn same_text_answer(got: &Value, alone: &Value) -> bool {
    let floats = |v: &Value| -> Vec<f64> {
        v["embeddings"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|row| {
                row.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
            })
            .collect()
    };
    let (g, a) = (floats(got), floats(alone));
    if a.is_empty() {
        return same_answer(got, alone);
    }
    got["dims"] == alone["dims"]
        && g.len() == a.len()
        && g.iter().zip(&a).all(|(x, y)| (x - y).abs() < 1e-5)
}
