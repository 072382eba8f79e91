//! The service core on real models and events: what both handlers answer.

mod common;

use common::{image, image_base64, models, service};
use lambdatorch::events::{self, Source};
use lambdatorch::image::ImageSource;
use lambdatorch::manifest::ModelDir;
use lambdatorch::{ErrorKind, Limits, Model, Registry};
use serde_json::{json, Value};

fn direct(event: Value) -> Result<Value, lambdatorch::Error> {
    events::handle(service(None, Limits::default()), event, "test").reply()
}

fn error_kind(event: Value) -> ErrorKind {
    match direct(event) {
        Err(err) => err.kind(),
        Ok(reply) => panic!("expected an error, got {reply}"),
    }
}

/// An API Gateway HTTP API (v2) event, as AWS sends it, carrying `body`.
fn http_event(body: &str, content_type: &str, base64: bool) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "POST /predict",
        "rawPath": "/predict",
        "rawQueryString": "model=tiny",
        "queryStringParameters": {"model": "tiny"},
        "headers": {"content-type": content_type},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "api.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "api", "requestId": "id", "routeKey": "POST /predict", "stage": "$default",
            "time": "02/Dec/2026:06:00:00 +0000", "timeEpoch": 0,
            "http": {"method": "POST", "path": "/predict", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"}
        },
        "body": body,
        "isBase64Encoded": base64
    })
}

#[test]
fn one_image_gets_predictions_equal_to_the_model_api() -> lambdatorch::Result<()> {
    let reply = direct(json!({"model": "tiny", "image": image_base64("chelsea.jpg"), "top_k": 4}))?;
    let predictions = reply["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 4);
    let model = Registry::global().load(&models().join("tiny"))?;
    let (expected, _) = model.predict(&[ImageSource::Encoded(&image("chelsea.jpg"))], Some(4))?;
    for (got, want) in predictions.iter().zip(&expected[0]) {
        assert_eq!(got["index"], json!(want.index));
        assert_eq!(got["label"], json!(want.label));
        assert!((got["score"].as_f64().unwrap_or(-1.0) - f64::from(want.score)).abs() < 1e-6);
    }
    for stage in ["decode", "preprocess", "inference", "total"] {
        assert!(reply["timings_ms"][stage].as_f64().is_some(), "{stage}");
    }
    let total = reply["timings_ms"]["total"].as_f64().unwrap_or_default();
    let inference = reply["timings_ms"]["inference"]
        .as_f64()
        .unwrap_or_default();
    assert!(inference > 0.0 && inference <= total, "{reply}");
    Ok(())
}

#[test]
fn batches_answer_results_in_order_whatever_their_size() -> lambdatorch::Result<()> {
    let (a, b) = (image_base64("chelsea.jpg"), image_base64("chelsea.png"));
    let one = direct(json!({"model": "tiny", "image": a}))?;
    let batch = direct(json!({"model": "tiny", "images": [a, b]}))?;
    let results = batch["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(
        results[0]["predictions"][0]["index"],
        one["predictions"][0]["index"]
    );
    // One rule: the plural field answers `results`, even for a batch of one.
    let single_batch = direct(json!({"model": "tiny", "images": [a]}))?;
    assert_eq!(single_batch["results"].as_array().map(Vec::len), Some(1));
    assert!(single_batch.get("predictions").is_none());
    Ok(())
}

#[test]
fn tensor_requests_answer_results_per_row() -> lambdatorch::Result<()> {
    let data = json!([0.1, 0.2, 0.3, 0.4, -1.0, 0.0, 1.0, 2.0]);
    let reply =
        direct(json!({"model": "tensor-classifier", "tensor": {"shape": [2, 4], "data": data}}))?;
    let results = reply["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["predictions"].as_array().map(Vec::len), Some(2));
    let one = direct(
        json!({"model": "tensor-classifier", "tensor": {"shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}}),
    )?;
    assert_eq!(
        one["results"][0], results[0],
        "a row answers the same alone"
    );
    assert_eq!(one["timings_ms"]["decode"], json!(0.0));
    Ok(())
}

#[test]
fn raw_outputs_carry_their_dtype_exactly() -> lambdatorch::Result<()> {
    let big = (1i64 << 53) + 1;
    let cases = [
        (
            "dtype-int64",
            json!([big, -3, 0, 7]),
            "int64",
            json!([2 * big + 1, -5, 1, 15]),
        ),
        (
            "dtype-bool",
            json!([true, false, 0, 1]),
            "bool",
            json!([false, true, true, false]),
        ),
        (
            "dtype-uint8",
            json!([0, 1, 255, 7]),
            "int32",
            json!([0, 3, 765, 21]),
        ),
        (
            "dtype-float16",
            json!([0.1, 1, -2, 0.25]),
            "float16",
            json!([0.7, 2.5, -3.5, 1.0]),
        ),
        (
            "dtype-bfloat16",
            json!([0.1, 1, -2, 0.25]),
            "bfloat16",
            json!([0.7, 2.5, -3.5, 1.0]),
        ),
        (
            "dtype-float64",
            json!([0.1, 1, -2, 0.25]),
            "float64",
            json!([0.7, 2.5, -3.5, 1.0]),
        ),
    ];
    for (model, data, dtype, expected) in cases {
        let reply = direct(json!({"model": model, "tensor": {"shape": [1, 4], "data": data}}))?;
        assert_eq!(reply["output"]["dtype"], json!(dtype), "{model}");
        assert_eq!(reply["output"]["shape"], json!([1, 4]), "{model}");
        assert_eq!(reply["output"]["data"], expected, "{model}");
    }
    Ok(())
}

#[test]
fn values_a_model_dtype_cannot_hold_are_invalid_input() {
    for (model, value) in [
        ("dtype-int64", json!(1.5)),
        ("dtype-uint8", json!(256)),
        ("dtype-bool", json!(2)),
        ("dtype-float16", json!(1e6)),
        ("tensor", json!(true)),
    ] {
        let event = json!({"model": model, "tensor": {"shape": [1, 4], "data": [value, 0, 0, 0]}});
        assert_eq!(
            error_kind(event),
            ErrorKind::InvalidInput,
            "{model} {value}"
        );
    }
}

#[test]
fn errors_have_their_types_and_statuses() {
    assert_eq!(
        error_kind(json!({"model": "nope", "image": "AAAA"})),
        ErrorKind::ModelNotFound
    );
    assert_eq!(
        error_kind(json!({"model": "../tiny", "image": "AAAA"})),
        ErrorKind::ModelNotFound
    );
    assert_eq!(
        error_kind(json!({"model": "tiny", "image": "AAAA"})),
        ErrorKind::InvalidImage
    );
    assert_eq!(
        error_kind(json!({"model": "tiny", "image": "!"})),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        error_kind(
            json!({"model": "tensor", "tensor": {"shape": [1, 5], "data": [0, 0, 0, 0, 0]}})
        ),
        ErrorKind::InvalidInput
    );
    let limits = Limits {
        max_tensor_elements: 4,
        max_image_pixels: 1000,
        ..Limits::default()
    };
    let small = service(Some("tiny"), limits);
    let over = json!({"model": "tensor", "tensor": {"shape": [2, 4], "data": vec![0; 8]}});
    let err = events::handle(small, over, "t")
        .result
        .expect_err("over the element limit");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(
        err.to_string().contains("LAMBDATORCH_MAX_TENSOR_ELEMENTS"),
        "{err}"
    );
    // The pixel limit belongs to the model's preprocessing, loaded with the process's limits.
    let dir = ModelDir::open(&models().join("tiny")).expect("fixture");
    let model = Model::load(dir, limits).expect("loads");
    let err = model
        .predict(&[ImageSource::Encoded(&image("chelsea.jpg"))], None)
        .expect_err("over the pixel limit");
    assert_eq!(err.kind(), ErrorKind::ImageTooLarge);
    assert!(err.to_string().contains("451x300"), "{err}");
}

#[test]
fn http_events_get_proxy_responses_with_the_error_status() -> lambdatorch::Result<()> {
    let svc = service(None, Limits::default());
    let jpeg = image_base64("chelsea.jpg");
    let ok = events::handle(svc, http_event(&jpeg, "image/jpeg", true), "h1");
    assert_eq!(ok.source, Source::ApiGatewayV2);
    let reply = ok.reply()?;
    assert_eq!(reply["statusCode"], json!(200));
    let body: Value = serde_json::from_str(reply["body"].as_str().unwrap_or_default())
        .map_err(|e| lambdatorch::Error::invalid_input(e.to_string()))?;
    assert_eq!(body["model"], json!("tiny"));
    assert!(body["predictions"].is_array());

    let bad = events::handle(
        svc,
        http_event("bm90IGFuIGltYWdl", "image/jpeg", true),
        "h2",
    )
    .reply()?;
    assert_eq!(bad["statusCode"], json!(400));
    assert!(bad["body"]
        .as_str()
        .unwrap_or_default()
        .contains("InvalidImage"));
    let text = events::handle(
        svc,
        http_event("{\"image\": 3}", "application/json", false),
        "h3",
    )
    .reply()?;
    assert_eq!(text["statusCode"], json!(400));
    Ok(())
}

#[test]
fn a_model_loads_once_and_serves_threads_alike() -> lambdatorch::Result<()> {
    let dir = models().join("tiny");
    let a = Registry::global().load(&dir)?;
    let b = Registry::global().load(&dir.join("manifest.json"))?;
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let bytes = image("chelsea.jpg");
    let (alone, _) = a.predict(&[ImageSource::Encoded(&bytes)], None)?;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| a.predict(&[ImageSource::Encoded(&bytes)], None)))
            .collect();
        for handle in handles {
            let (answer, _) = handle.join().expect("no panic")?;
            assert_eq!(answer, alone);
        }
        Ok(())
    })
}

#[test]
fn a_loaded_model_is_found_by_name_without_its_files() -> std::io::Result<()> {
    let root = std::env::temp_dir().join(format!("lt-named-{}", std::process::id()));
    std::fs::create_dir_all(root.join("tiny"))?;
    for file in std::fs::read_dir(models().join("tiny"))? {
        let file = file?.path();
        if let Some(name) = file.file_name() {
            std::fs::copy(&file, root.join("tiny").join(name))?;
        }
    }
    let registry = Registry::with_budget(None);
    let first = registry.load_named(&root, "tiny").expect("loads");
    // Gone from the file system, the loaded model still answers its name, and only its name.
    std::fs::rename(root.join("tiny"), root.join("moved"))?;
    let again = registry.load_named(&root, "tiny").expect("from the cache");
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    let kind = |result: lambdatorch::Result<_>| result.map(drop).map_err(|e| e.kind());
    assert_eq!(kind(registry.load_named(&root, "moved")), Ok(()));
    assert_eq!(
        kind(Registry::with_budget(None).load_named(&root, "tiny")),
        Err(ErrorKind::ModelNotFound)
    );
    assert_eq!(
        kind(registry.load_named(&root, "../tiny")),
        Err(ErrorKind::ModelNotFound)
    );
    std::fs::remove_dir_all(&root)
}

#[test]
fn a_corrupt_model_file_is_a_manifest_error_naming_the_field() -> lambdatorch::Result<()> {
    let tmp = std::env::temp_dir().join(format!("lt-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| lambdatorch::Error::invalid_input(e.to_string()))?;
    let io = |e: std::io::Error| lambdatorch::Error::invalid_input(e.to_string());
    std::fs::write(tmp.join("model.pt"), b"not a model").map_err(io)?;
    std::fs::write(
        tmp.join("manifest.json"),
        r#"{"format": "torchscript", "file": "model.pt", "input": {"type": "tensor", "shape": [-1, 4]}}"#,
    )
    .map_err(io)?;
    let err = Model::load(ModelDir::open(&tmp)?, Limits::default()).expect_err("corrupt");
    assert_eq!(err.kind(), ErrorKind::ManifestError);
    assert!(
        err.to_string().contains("not a loadable TorchScript model"),
        "{err}"
    );
    std::fs::remove_dir_all(&tmp).map_err(io)
}
