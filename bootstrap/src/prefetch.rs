//! Bring what the handler's cold start reads into the page cache with large parallel reads.
//!
//! On EFS every read is a network round trip, and a library's pages arrive one fault at a time
//! once the kernel stops reading ahead for a mapping that misses often. So before `exec`, the
//! launcher starts a detached process that asks the kernel (`posix_fadvise(WILLNEED)`) for, in
//! this order: each library's linker sections ([`crate::plan::LINKER_SECTIONS`]); the pages a
//! cold start was recorded touching (`.lambdatorch-pages.json` beside libtorch, written by the
//! Python package's `_libtorch.record_pages`, e.g. from `lambdatorch doctor`; ignored when stale);
//! and the model files `LAMBDATORCH_PRELOAD` names (an AOTInductor model's: every file of its
//! unpacked package). The handler starts at once and finds those
//! bytes arriving, or there. The record also holds the load plan ([`crate::plan`]), so that a
//! start with a valid record reads no ELF header and lists no directory. Prefetching only changes
//! when bytes arrive: every failure is ignored. The same steps as
//! `python/lambdatorch/_libtorch.py`, for the Python handler.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::plan::{merged, LoadPlan, Ranges};

/// Beside the libraries: which of their pages a cold start touched.
pub const PAGES_FILE: &str = ".lambdatorch-pages.json";
const FORMAT: u64 = 1;
/// The kernel reads at most one readahead window per `WILLNEED` (128 KiB by default on NFS and
/// FUSE), so ranges are asked for in pieces of this size, each its own asynchronous read.
const CHUNK: u64 = 128 << 10;

/// One file to prefetch: the given ranges, or all of it.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub path: PathBuf,
    pub ranges: Option<Ranges>,
}

/// What to prefetch, in order.
pub fn steps(lib_dir: &Path, plan: Option<&LoadPlan>, record: Option<&Record>) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(plan) = plan {
        for path in &plan.tree {
            let ranges = plan.linker_ranges.get(path).cloned().unwrap_or_default();
            steps.push(Step {
                path: path.clone(),
                ranges: Some(ranges),
            });
        }
        for (path, ranges) in record
            .map(|r| r.ranges(lib_dir, &plan.tree))
            .unwrap_or_default()
        {
            steps.push(Step {
                path,
                ranges: Some(ranges),
            });
        }
    }
    for model in preloaded_model_files() {
        steps.push(Step {
            path: model,
            ranges: None,
        });
    }
    steps
}

fn identity(path: &Path) -> Option<(u64, i128)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.size(),
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    ))
}

/// `path` relative to `lib_dir` as Python's `os.path.relpath` writes it in the record.
fn record_key(lib_dir: &Path, path: &Path) -> Option<String> {
    let rest = path.strip_prefix(lib_dir).ok()?;
    Some(rest.to_string_lossy().into_owned())
}

/// `lambdatorch._libtorch.record_pages()`'s record: the load plan and, per library, its
/// identity (size, mtime), its linker ranges and the ranges a cold start touched.
pub struct Record(Value);

fn ranges_of(value: &Value) -> Option<Ranges> {
    value
        .as_array()?
        .iter()
        .map(|r| Some((r.get(0)?.as_u64()?, r.get(1)?.as_u64()?)))
        .collect()
}

impl Record {
    /// `lib_dir/PAGES_FILE`, if it is there, parses and is of this format.
    pub fn read(lib_dir: &Path) -> Option<Record> {
        let record: Value =
            serde_json::from_slice(&std::fs::read(lib_dir.join(PAGES_FILE)).ok()?).ok()?;
        (record["format"].as_u64() == Some(FORMAT)).then_some(Record(record))
    }

    /// The entry for `path`, if it still describes the file.
    fn entry(&self, lib_dir: &Path, path: &Path) -> Option<&Value> {
        let entry = self.0["libraries"].get(record_key(lib_dir, path)?)?;
        let file = entry["file"].as_array()?;
        let mtime = file.get(1)?;
        let recorded = (
            file.first()?.as_u64()?,
            i128::from(mtime.as_i64().or_else(|| mtime.as_u64()?.try_into().ok())?),
        );
        (Some(recorded) == identity(path)).then_some(entry)
    }

    /// The recorded ranges of each of `libraries` whose record still matches the file.
    pub fn ranges(&self, lib_dir: &Path, libraries: &[PathBuf]) -> Vec<(PathBuf, Ranges)> {
        libraries
            .iter()
            .filter_map(|path| {
                let ranges = ranges_of(&self.entry(lib_dir, path)?["ranges"])?;
                Some((path.clone(), merged(ranges, 0)))
            })
            .collect()
    }

    /// The load plan recorded, if every library in it is still the file recorded: then nothing
    /// has to be read or listed to plan (on EFS, a round trip per library and directory).
    pub fn plan(&self, lib_dir: &Path) -> Option<LoadPlan> {
        let plan = &self.0["plan"];
        let mut out = LoadPlan::default();
        for name in plan["system"].as_array()? {
            out.system.push(name.as_str()?.to_owned());
        }
        for name in plan["tree"].as_array()? {
            let path = lib_dir.join(name.as_str()?);
            let linker = ranges_of(&self.entry(lib_dir, &path)?["linker"])?;
            out.linker_ranges.insert(path.clone(), linker);
            out.tree.push(path);
        }
        (!out.tree.is_empty()).then_some(out)
    }
}

fn valid_model_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The model files `LAMBDATORCH_PRELOAD` names, from `LAMBDATORCH_MODELS`.
pub fn preloaded_model_files() -> Vec<PathBuf> {
    let root = std::env::var_os("LAMBDATORCH_MODELS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/mnt/efs/models"));
    model_files(
        &root,
        &std::env::var("LAMBDATORCH_PRELOAD").unwrap_or_default(),
    )
}

/// The files each model of the comma list `names` loads: its manifest's `file`, or, where that
/// is a directory (an unpacked AOTInductor package), every regular file below it, the model
/// libraries (`.so`) first; symlinks are not followed. Best effort: anything odd is left for the
/// handler's own loading to report.
pub fn model_files(root: &Path, names: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for name in names.split(',').map(str::trim) {
        if !valid_model_name(name) {
            continue;
        }
        let dir = root.join(name);
        let Some(manifest) = std::fs::read(dir.join("manifest.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        else {
            continue;
        };
        let Some(file) = manifest["file"].as_str().map(|f| dir.join(f)) else {
            continue;
        };
        match std::fs::symlink_metadata(&file) {
            Ok(meta) if meta.is_dir() => {
                let mut package = package_files(&file, PACKAGE_FILES_LIMIT);
                package.sort_by_key(|p| (p.extension().is_none_or(|e| e != "so"), p.clone()));
                files.extend(package);
            }
            _ if file.is_file() => files.push(file),
            _ => {}
        }
    }
    files
}

/// More files than any package holds (a few dozen).
const PACKAGE_FILES_LIMIT: usize = 10_000;

/// Regular files below `top`, at most `limit` of them; symlinks are not followed.
fn package_files(top: &Path, limit: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
                if found.len() >= limit {
                    return found;
                }
            }
        }
    }
    found
}

/// Asks the kernel to read `ranges` of `file` (all of it if `None`) into the page cache.
pub fn prefetch(file: &File, ranges: Option<&Ranges>) {
    let whole;
    let ranges = match ranges {
        Some(ranges) => ranges,
        None => {
            whole = vec![(0, file.metadata().map(|m| m.len()).unwrap_or(0))];
            &whole
        }
    };
    for &(offset, size) in ranges {
        let mut start = offset;
        while start < offset + size {
            // SAFETY: `posix_fadvise` only reads its integer arguments; the descriptor is open
            // for as long as `file` lives, which outlasts the call.
            let failed = unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    start as libc::off_t,
                    CHUNK as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            } != 0;
            if failed {
                return;
            }
            start += CHUNK;
        }
    }
}

/// Runs `steps` in a detached process and returns at once: the launcher forks twice, so the
/// worker is nobody's child once the middle process has exited (init reaps it), and waits only
/// for that middle process. Must be called while the launcher has a single thread.
pub fn start_detached(steps: Vec<Step>) {
    if steps.is_empty() {
        return;
    }
    // SAFETY: the launcher is single-threaded here (no threads are ever started before exec),
    // so the forked children may run any code; each leaves only through `_exit`.
    unsafe {
        let middle = libc::fork();
        if middle == 0 {
            if libc::fork() == 0 {
                // Each file opened once: on EFS an open is a round trip too.
                let mut opened: HashMap<&Path, File> = HashMap::new();
                for step in &steps {
                    if !opened.contains_key(step.path.as_path()) {
                        let Ok(file) = File::open(&step.path) else {
                            continue;
                        };
                        opened.insert(&step.path, file);
                    }
                    if let Some(file) = opened.get(step.path.as_path()) {
                        prefetch(file, step.ranges.as_ref());
                    }
                }
            }
            libc::_exit(0);
        }
        if middle > 0 {
            let mut status = 0;
            libc::waitpid(middle, &mut status, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_follow_the_contract() {
        assert!(valid_model_name("resnet18"));
        assert!(valid_model_name("a.b-c_d"));
        assert!(!valid_model_name("../x"));
        assert!(!valid_model_name(".hidden"));
        assert!(!valid_model_name(""));
        assert!(!valid_model_name(&"a".repeat(65)));
    }

    #[test]
    fn model_files_cover_a_torchscript_file_and_an_aoti_package_directory() -> std::io::Result<()> {
        let root = std::env::temp_dir().join(format!("lt-models-{}", std::process::id()));
        let ts = root.join("ts");
        let package = root.join("pkg/model");
        let lib_dir = package.join("data/aotinductor/model");
        std::fs::create_dir_all(&ts)?;
        std::fs::create_dir_all(&lib_dir)?;
        std::fs::write(ts.join("manifest.json"), r#"{"file": "model.pt"}"#)?;
        std::fs::write(ts.join("model.pt"), b"ts")?;
        std::fs::write(root.join("pkg/manifest.json"), r#"{"file": "model"}"#)?;
        std::fs::write(package.join("archive_format"), b"pt2")?;
        std::fs::write(lib_dir.join("m.wrapper.so"), b"elf")?;
        std::fs::write(lib_dir.join("m.wrapper_metadata.json"), b"{}")?;
        std::os::unix::fs::symlink("/etc/passwd", lib_dir.join("outside"))?;
        let files = model_files(&root, "ts, pkg,missing,../x");
        assert_eq!(files[0], ts.join("model.pt"));
        assert_eq!(files[1], lib_dir.join("m.wrapper.so")); // the library first
        let mut rest = files[2..].to_vec();
        rest.sort();
        assert_eq!(
            rest,
            vec![
                package.join("archive_format"),
                lib_dir.join("m.wrapper_metadata.json")
            ]
        );
        std::fs::remove_dir_all(&root)
    }

    #[test]
    fn reads_a_matching_record_and_ignores_a_stale_one() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("lt-pages-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let lib = dir.join("libx.so");
        std::fs::write(&lib, vec![0u8; 8192])?;
        let (size, mtime) = identity(&lib).expect("stat");
        let record = serde_json::json!({"format": 1,
            "plan": {"system": ["libc.so.6"], "tree": ["libx.so"]},
            "libraries": {"libx.so": {"file": [size, mtime as i64],
                "ranges": [[4096, 4096], [0, 4096]], "linker": [[0, 64]]}}});
        std::fs::write(dir.join(PAGES_FILE), record.to_string())?;
        let plan = Record::read(&dir)
            .and_then(|r| r.plan(&dir))
            .expect("a plan");
        assert_eq!(plan.system, vec!["libc.so.6".to_owned()]);
        assert_eq!(plan.tree, vec![lib.clone()]);
        assert_eq!(plan.linker_ranges[&lib], vec![(0, 64)]);
        let record = Record::read(&dir).expect("a record");
        assert_eq!(
            record.ranges(&dir, std::slice::from_ref(&lib)),
            vec![(lib.clone(), vec![(0, 8192)])]
        );
        std::fs::write(&lib, vec![0u8; 100])?; // changed since recorded
        assert!(record.ranges(&dir, &[lib]).is_empty());
        std::fs::remove_dir_all(&dir)
    }
}
