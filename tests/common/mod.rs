//! Shared by the integration tests: the fixtures `make fixtures` writes (models traced by Python
//! torch, real photos) and a service configured over them.
#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;

use base64::Engine;
use lambdatorch::service::{Config, Service};
use lambdatorch::Limits;

/// `LAMBDATORCH_FIXTURES` (set by `make test-rust`), else `target/fixtures`.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("LAMBDATORCH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fixtures"));
    assert!(
        dir.join("models").is_dir(),
        "no fixtures in {}: run `make fixtures`",
        dir.display()
    );
    dir
}

/// The models directory of the fixtures.
pub fn models() -> PathBuf {
    fixtures().join("models")
}

/// A fixture image's bytes.
pub fn image(name: &str) -> Vec<u8> {
    let path = fixtures().join("images").join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A fixture image, base64-encoded as events carry it.
pub fn image_base64(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(image(name))
}

/// A service over the fixture models, leaked: handlers hold a `&'static Service`.
pub fn service(default_model: Option<&str>, limits: Limits) -> &'static Service {
    Box::leak(Box::new(Service::new(Config {
        models_root: models(),
        default_model: default_model.map(str::to_owned),
        preload: Vec::new(),
        limits,
    })))
}
