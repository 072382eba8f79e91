//! The native handler's per-event function, called as `lambda_runtime` calls it.
#![cfg(feature = "lambda")]

mod common;

use common::{image_base64, service};
use lambda_runtime::{Context, LambdaEvent};
use lambdatorch::Limits;
use serde_json::json;

#[tokio::test]
async fn direct_invokes_answer_or_fail_with_the_error_type() {
    let svc = service(Some("tiny"), Limits::default());
    let event = json!({"image": image_base64("chelsea.jpg"), "top_k": 2});
    let reply = lambdatorch::lambda::handle(svc, LambdaEvent::new(event, Context::default()))
        .await
        .expect("an answer");
    assert_eq!(reply["model"], json!("tiny"));
    assert_eq!(reply["predictions"].as_array().map(Vec::len), Some(2));

    let bad = json!({"image": "AAAA"});
    let err = lambdatorch::lambda::handle(svc, LambdaEvent::new(bad, Context::default()))
        .await
        .expect_err("a function error");
    assert_eq!(err.error_type, "InvalidImage");
    let missing = json!({"model": "nope", "image": "AAAA"});
    let err = lambdatorch::lambda::handle(svc, LambdaEvent::new(missing, Context::default()))
        .await
        .expect_err("a function error");
    assert_eq!(err.error_type, "ModelNotFound");
}

#[tokio::test]
async fn http_events_always_get_a_proxy_response() {
    let svc = service(Some("tiny"), Limits::default());
    let event = json!({
        "httpMethod": "POST", "path": "/models/nope", "headers": {"content-type": "image/jpeg"},
        "requestContext": {"stage": "prod", "httpMethod": "POST", "path": "/prod/models/nope"},
        "body": image_base64("chelsea.jpg"),
        "isBase64Encoded": true
    });
    let reply = lambdatorch::lambda::handle(svc, LambdaEvent::new(event, Context::default()))
        .await
        .expect("a proxy response");
    assert_eq!(reply["statusCode"], json!(404), "{reply}");
    assert_eq!(reply["headers"]["content-type"], json!("application/json"));
}
