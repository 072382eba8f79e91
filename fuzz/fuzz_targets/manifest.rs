//! Manifest parsing on arbitrary text: a `ManifestError` or a manifest that serializes (as the
//! Python `model.manifest` does), parses back, and builds a preprocessing that runs.
#![no_main]

use std::path::Path;

use lambdatorch::image::{ImageSource, Preprocessor};
use lambdatorch::manifest::Manifest;
use lambdatorch::ErrorKind;
use libfuzzer_sys::fuzz_target;
use ndarray::Array3;

/// Tensors larger than this are not built, so that legal 8192x8192 sizes do not eat the fuzzer.
const MAX_TENSOR: usize = 1 << 18;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/models/fuzz/manifest.json");
    let manifest = match Manifest::parse(text, path) {
        Ok(manifest) => manifest,
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::ManifestError, "{err}");
            return;
        }
    };
    let json = serde_json::to_string(&manifest).expect("a manifest serializes");
    if let Err(err) = Manifest::parse(&json, path) {
        panic!("{json} does not parse back: {err}");
    }
    let Some(spec) = manifest.image_input() else {
        return;
    };
    let pre = Preprocessor::new(spec, 1 << 20);
    if pre.tensor_len() > MAX_TENSOR {
        return;
    }
    let image = Array3::from_shape_fn((5, 7, 3), |(y, x, c)| (y * 50 + x * 30 + c * 7) as u8);
    let pixels = pre
        .pixels(ImageSource::Array(image.view()))
        .expect("a 5x7 RGB array is a valid image");
    let mut out = vec![0f32; pre.tensor_len()];
    pre.tensorize(&pixels, &mut out).expect("tensorize");
});
