//! AOTInductor packages (`format: "aoti"`) through the core: loading in place, batching, and the
//! checks made before any of a package's code runs (ISA, digest, static batch). Parity with
//! `ExportedProgram.module()` is checked from Python (tests/python/test_aoti.py), where the
//! reference runs.

mod common;

use std::path::{Path, PathBuf};

use lambdatorch::image::ImageSource;
use lambdatorch::manifest::ModelDir;
use lambdatorch::tensor::{Elements, TensorData};
use lambdatorch::{Error, ErrorKind, Limits, Model};

fn aoti_models() -> PathBuf {
    common::fixtures().join("aoti/models")
}

fn load(dir: &Path) -> lambdatorch::Result<Model> {
    Model::load(ModelDir::open(dir)?, Limits::default())
}

/// A copy of fixture model `name` in a fresh temporary directory, to break.
fn copy_of(name: &str) -> (PathBuf, PathBuf) {
    let scratch = std::env::temp_dir().join(format!(
        "lambdatorch-aoti-{}-{name}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let dest = scratch.join(name);
    copy_tree(&aoti_models().join(name), &dest);
    (scratch, dest)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn package_file(model: &Path, suffix: &str) -> PathBuf {
    let dir = model.join("package/data/aotinductor/model");
    std::fs::read_dir(&dir)
        .expect("package dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dir.display()))
}

fn manifest_error(result: lambdatorch::Result<Model>) -> (String, String) {
    match result {
        Err(Error::Manifest { field, message, .. }) => (field, message),
        Err(other) => panic!("expected a ManifestError, got {other:?}"),
        Ok(_) => panic!("expected a ManifestError, the model loaded"),
    }
}

fn floats(shape: Vec<usize>, value: f32) -> lambdatorch::Result<TensorData> {
    let n = shape.iter().product();
    TensorData::new(shape, Elements::Float32(vec![value; n]))
}

#[test]
fn a_dynamic_batch_package_serves_every_batch_size_up_to_max_batch() -> lambdatorch::Result<()> {
    let model = load(&aoti_models().join("aoti_mlp"))?;
    for batch in [1, 2, 5, 8] {
        let out = model.forward(&floats(vec![batch, 4], 0.5)?)?;
        assert_eq!(out.shape, vec![batch, 3]);
    }
    // Rows are independent: the same row gives the same answer in any batch.
    let one = model.forward(&floats(vec![1, 4], 0.25)?)?;
    let five = model.forward(&floats(vec![5, 4], 0.25)?)?;
    match (&one.elements, &five.elements) {
        (Elements::Float32(a), Elements::Float32(b)) => {
            for row in b.chunks(3) {
                for (x, y) in row.iter().zip(a) {
                    assert!((x - y).abs() < 1e-5, "{row:?} vs {a:?}");
                }
            }
        }
        other => panic!("float32 expected, got {other:?}"),
    }
    Ok(())
}

#[test]
fn an_image_package_classifies_photos() -> lambdatorch::Result<()> {
    let model = load(&aoti_models().join("aoti_tiny"))?;
    let photo = common::image("chelsea.jpg");
    let (predictions, _) = model.predict(
        &[ImageSource::Encoded(&photo), ImageSource::Encoded(&photo)],
        Some(3),
    )?;
    assert_eq!(predictions.len(), 2);
    assert_eq!(predictions[0], predictions[1]);
    assert_eq!(predictions[0].len(), 3);
    Ok(())
}

#[test]
fn a_static_batch_package_serves_its_batch_size_only() -> lambdatorch::Result<()> {
    let model = load(&aoti_models().join("aoti_static"))?;
    assert_eq!(model.forward(&floats(vec![2, 4], 1.0)?)?.shape, vec![2, 3]);
    let err = model
        .forward(&floats(vec![1, 4], 1.0)?)
        .expect_err("batch 1 on a static batch of 2");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("static batch of 2"), "{err}");

    let (scratch, copy) = copy_of("aoti_static");
    let manifest = copy.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replace("\"max_batch\": 2", "\"max_batch\": 8"),
    )
    .expect("write");
    let (field, message) = manifest_error(load(&copy));
    assert_eq!(field, "max_batch");
    assert!(message.contains("static batch dimension of 2"), "{message}");
    std::fs::remove_dir_all(scratch).ok();
    Ok(())
}

#[test]
fn a_package_for_an_isa_this_cpu_lacks_is_refused_before_loading() {
    let (scratch, copy) = copy_of("aoti_mlp");
    // Both the metadata and the manifest say so (the digest then no longer matches: drop it, so
    // the ISA check is what answers).
    for meta in ["kernel_metadata.json", "wrapper_metadata.json"] {
        let path = package_file(&copy, meta);
        let text = std::fs::read_to_string(&path).expect("metadata");
        std::fs::write(&path, text.replace("\"AVX2\"", "\"AVX512 AMX_IMAGINARY\"")).expect("write");
    }
    let manifest = copy.join("manifest.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).expect("read")).expect("json");
    json["cpu_isa"] = "AVX512 AMX_IMAGINARY".into();
    json.as_object_mut().map(|m| m.remove("sha256"));
    std::fs::write(&manifest, json.to_string()).expect("write");
    // The library itself is the AVX2 one, which this CPU runs: only the check can refuse it.
    let (field, message) = manifest_error(load(&copy));
    assert_eq!(field, "cpu_isa");
    assert!(message.contains("AMX_IMAGINARY"), "{message}");
    assert!(message.contains("this CPU lacks"), "{message}");
    std::fs::remove_dir_all(scratch).ok();
}

#[test]
fn the_manifests_isa_must_match_the_packages() {
    let (scratch, copy) = copy_of("aoti_mlp");
    let manifest = copy.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("read");
    std::fs::write(
        &manifest,
        text.replace("\"cpu_isa\": \"AVX2\"", "\"cpu_isa\": \"AVX512\""),
    )
    .expect("write");
    let (field, message) = manifest_error(load(&copy));
    assert_eq!(field, "cpu_isa");
    assert!(
        message.contains("\"AVX512\"") && message.contains("\"AVX2\""),
        "{message}"
    );
    std::fs::remove_dir_all(scratch).ok();
}

#[test]
fn a_truncated_or_replaced_package_fails_its_digest() {
    let (scratch, copy) = copy_of("aoti_mlp");
    let library = package_file(&copy, ".so");
    let bytes = std::fs::read(&library).expect("read");
    std::fs::write(&library, &bytes[..bytes.len() * 9 / 10]).expect("write");
    let (field, _) = manifest_error(load(&copy));
    assert_eq!(field, "sha256");

    // Without a digest, the truncated library is a ManifestError from the loader, not an abort.
    let manifest = copy.join("manifest.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).expect("read")).expect("json");
    json.as_object_mut().map(|m| m.remove("sha256"));
    std::fs::write(&manifest, json.to_string()).expect("write");
    let (field, message) = manifest_error(load(&copy));
    assert_eq!(field, "file");
    assert!(message.contains("truncated"), "{message}");
    std::fs::remove_dir_all(scratch).ok();
}

#[test]
fn a_package_without_its_library_or_metadata_is_a_manifest_error() {
    let (scratch, copy) = copy_of("aoti_mlp");
    std::fs::remove_file(package_file(&copy, ".so")).expect("rm");
    let manifest = copy.join("manifest.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).expect("read")).expect("json");
    json.as_object_mut().map(|m| m.remove("sha256"));
    std::fs::write(&manifest, json.to_string()).expect("write");
    let (field, message) = manifest_error(load(&copy));
    assert_eq!(field, "file");
    assert!(message.contains("model library"), "{message}");

    // A file where the package directory should be.
    json["file"] = "manifest.json".into();
    std::fs::write(&manifest, json.to_string()).expect("write");
    let (field, message) = manifest_error(load(&copy));
    assert_eq!(field, "file");
    assert!(message.contains("not a directory"), "{message}");
    std::fs::remove_dir_all(scratch).ok();
}

#[test]
fn a_library_that_is_not_a_model_is_a_manifest_error_not_an_abort() {
    // Any valid shared library without the model's entry points: the loader throws, the shim
    // turns the C++ exception into an error.
    let Some(other) = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("libtorch_global_deps.so"))
        .find(|path| path.is_file())
    else {
        eprintln!("skipped: no libtorch_global_deps.so on LD_LIBRARY_PATH");
        return;
    };
    let (scratch, copy) = copy_of("aoti_mlp");
    std::fs::copy(other, package_file(&copy, ".so")).expect("copy");
    let manifest = copy.join("manifest.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).expect("read")).expect("json");
    json.as_object_mut().map(|m| m.remove("sha256"));
    std::fs::write(&manifest, json.to_string()).expect("write");
    let (field, message) = manifest_error(load(&copy));
    assert_eq!(field, "file");
    assert!(
        message.contains("not a loadable AOTInductor package"),
        "{message}"
    );
    std::fs::remove_dir_all(scratch).ok();
}

#[test]
fn a_manifest_input_the_package_does_not_take_is_refused_before_loading() {
    // The kernels index their input by the exported sizes without checking them: a manifest that
    // promised other sizes or another dtype would let requests make them read past the input.
    for (from, to, says) in [
        (
            "\"shape\": [\n      -1,\n      4\n    ]",
            "\"shape\": [-1, 8]",
            "size 4 in dimension 1",
        ),
        (
            "\"shape\": [\n      -1,\n      4\n    ]",
            "\"shape\": [-1, -1]",
            "size 4 in dimension 1",
        ),
        (
            "\"shape\": [\n      -1,\n      4\n    ]",
            "\"shape\": [-1, 4, 1]",
            "2-dimensional",
        ),
        (
            "\"dtype\": \"float32\"",
            "\"dtype\": \"int64\"",
            "kFloat inputs",
        ),
    ] {
        let (scratch, copy) = copy_of("aoti_mlp");
        let manifest = copy.join("manifest.json");
        let text = std::fs::read_to_string(&manifest).expect("read");
        assert!(text.contains(from), "fixture manifest changed: {text}");
        std::fs::write(&manifest, text.replace(from, to)).expect("write");
        let (field, message) = manifest_error(load(&copy));
        assert_eq!(field, "input", "{to}");
        assert!(message.contains(says), "{to}: {message}");
        std::fs::remove_dir_all(scratch).ok();
    }
}
