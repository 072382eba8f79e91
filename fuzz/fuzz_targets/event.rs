//! Lambda event parsing on arbitrary JSON: every event becomes a request or a typed error, and
//! errors shape into proxy responses (or function errors), never a panic.
#![no_main]

use lambdatorch::events::{self, Outcome};
use lambdatorch::{Error, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let limits = Limits {
        max_payload_bytes: 1 << 16,
        max_tensor_elements: 1 << 12,
        ..Limits::default()
    };
    let (source, request) = events::parse(event, &limits);
    let result = match request {
        Ok(_) => Err(Error::inference("fuzz", "stand-in for the model's answer")),
        Err(err) => Err(err),
    };
    let reply = Outcome { source, result }.reply();
    if source.is_http() {
        let reply = reply.expect("HTTP events always get a proxy response");
        assert!(reply.get("statusCode").is_some(), "{reply}");
    } else {
        assert!(reply.is_err());
    }
});
