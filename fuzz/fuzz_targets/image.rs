//! Image decoding and preprocessing on arbitrary bytes: any input must give pixels and a finite
//! tensor, or a typed refusal (`InvalidImage`, `ImageTooLarge`, ...), never a panic, a hang or
//! an allocation beyond the pixel limit. Three preprocessing setups (picked by the input's length,
//! so real image files work as seeds unchanged) cover colour modes, crops, filters and the
//! DCT-scaled JPEG decode.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use lambdatorch::image::{ImageSource, Preprocessor};
use lambdatorch::manifest::Manifest;
use lambdatorch::ErrorKind;
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer's memory limit is never the first thing a bomb hits.
const MAX_PIXELS: u64 = 4_000_000;

const INPUTS: [&str; 3] = [
    r#"{"type": "image", "size": [224, 224], "resize_shorter": 256, "crop": "center",
        "interpolation": "bilinear", "color": "rgb",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}"#,
    r#"{"type": "image", "size": [32, 32], "crop": "none", "interpolation": "bicubic",
        "color": "gray", "mean": [0.5], "std": [0.5], "decode": "fast"}"#,
    r#"{"type": "image", "size": [17, 300], "crop": "center", "interpolation": "lanczos3",
        "color": "bgr"}"#,
];

static PREPROCESSORS: LazyLock<Vec<Preprocessor>> = LazyLock::new(|| {
    INPUTS
        .iter()
        .map(|input| {
            let text = format!(r#"{{"format": "torchscript", "file": "m.pt", "input": {input}}}"#);
            let manifest = Manifest::parse(&text, Path::new("fuzz.json")).expect("valid manifest");
            let spec = manifest.image_input().expect("image input");
            Preprocessor::new(spec, MAX_PIXELS)
        })
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let pre = &PREPROCESSORS[data.len() % PREPROCESSORS.len()];
    let Ok(pixels) = pre.pixels(ImageSource::Encoded(data)) else {
        return;
    };
    let mut out = vec![0f32; pre.tensor_len()];
    match pre.tensorize(&pixels, &mut out) {
        Ok(()) => assert!(out.iter().all(|v| v.is_finite()), "non-finite tensor"),
        Err(err) => assert_ne!(err.kind(), ErrorKind::InternalError, "{err}"),
    }
});
