//! The model cache's budget is resident memory, not file sizes. A test binary of its own (one
//! process, one test): the process's growth must come from this test alone.

mod common;

use common::models;
use lambdatorch::registry::Registry;

fn model_file_bytes(name: &str) -> u64 {
    std::fs::metadata(models().join(name).join("model.pt")).map_or(0, |m| m.len())
}

fn loaded(registry: &Registry) -> Vec<String> {
    registry
        .loaded()
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn models_are_charged_what_they_add_to_resident_memory() -> lambdatorch::Result<()> {
    // By file sizes both models fit with room to spare; but loading MobileNet (a 10 MB file)
    // into a fresh process adds its weights, libtorch's kernels and warmup buffers: more than the
    // budget leaves beside the tiny model, so loading that one evicts MobileNet. (First, while
    // the process is fresh: freed memory that glibc keeps would hide a second load's growth.)
    let mobilenet = model_file_bytes("mobilenet");
    let tiny = model_file_bytes("tiny");
    let budget = mobilenet * 3 / 2;
    assert!(mobilenet + tiny < budget);

    let resident = Registry::with_budget(Some(budget));
    drop(resident.load(&models().join("mobilenet"))?);
    assert_eq!(loaded(&resident), ["mobilenet"]);
    drop(resident.load(&models().join("tiny"))?);
    assert_eq!(loaded(&resident), ["tiny"]);
    drop(resident);

    // Charged their files only, as the cache did before, both would have stayed.
    let by_files = Registry::charging_files(Some(budget));
    drop(by_files.load(&models().join("mobilenet"))?);
    drop(by_files.load(&models().join("tiny"))?);
    assert_eq!(loaded(&by_files), ["mobilenet", "tiny"]);
    Ok(())
}
