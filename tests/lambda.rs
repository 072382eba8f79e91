//! The native handler's per-event function, called as `lambda_runtime` calls it.
#![cfg(feature = "lambda")]

mod common;

use common::{image_base64, service};
use lambda_runtime::{Context, LambdaEvent};
use lambdatorch::Limits;
use serde_json::{json, Value};

/// The handler's reply as the JSON that `lambda_runtime` posts.
async fn reply(event: Value) -> Result<Value, lambda_runtime::Diagnostic> {
    let svc = service(Some("tiny"), Limits::default());
    let reply =
        lambdatorch::lambda::handle(svc, LambdaEvent::new(event, Context::default())).await?;
    Ok(serde_json::to_value(reply).expect("a reply serializes"))
}

#[tokio::test]
async fn direct_invokes_answer_or_fail_with_the_error_type() {
    let answer = reply(json!({"image": image_base64("chelsea.jpg"), "top_k": 2}))
        .await
        .expect("an answer");
    assert_eq!(answer["model"], json!("tiny"));
    assert_eq!(answer["predictions"].as_array().map(Vec::len), Some(2));

    let err = reply(json!({"image": "AAAA"}))
        .await
        .expect_err("a function error");
    assert_eq!(err.error_type, "InvalidImage");
    let err = reply(json!({"model": "nope", "image": "AAAA"}))
        .await
        .expect_err("a function error");
    assert_eq!(err.error_type, "ModelNotFound");
}

#[tokio::test]
async fn http_events_always_get_a_proxy_response() {
    let event = json!({
        "httpMethod": "POST", "path": "/models/nope", "headers": {"content-type": "image/jpeg"},
        "requestContext": {"stage": "prod", "httpMethod": "POST", "path": "/prod/models/nope"},
        "body": image_base64("chelsea.jpg"),
        "isBase64Encoded": true
    });
    let answer = reply(event).await.expect("a proxy response");
    assert_eq!(answer["statusCode"], json!(404), "{answer}");
    assert_eq!(answer["headers"]["content-type"], json!("application/json"));
    let body: Value = serde_json::from_str(answer["body"].as_str().expect("a body")).expect("JSON");
    assert_eq!(body["error"]["type"], json!("ModelNotFound"));
}
