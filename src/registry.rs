//! The per-process model cache, and the only place where a request's model name becomes a path.
//!
//! Models are loaded once and shared (`Arc<Model>`) by every caller in the process: the Python
//! `load`, the service core and both handlers. Loading takes only that model's own lock, so other
//! models keep serving while one loads, and concurrent first requests for a model load it once.
//!
//! The cache keeps loaded models within a memory budget (`LAMBDATORCH_MODEL_CACHE_MB`) by evicting
//! the least recently used model that no request holds. The budget is resident memory, not file
//! sizes: a loaded model costs more than its file (ResNet-18's 45 MB file adds about 100 MB to a
//! fresh process: libtorch's kernels, allocator pools and warmup buffers), and glibc keeps freed
//! memory unless told to give it back. So each model is charged what the process grew by while it
//! loaded (at least its file), and the cache counts the larger of those charges and the process's
//! real growth since its first load. Loads under a budget run one at a time so that each is
//! measured alone. A model whose file is larger than the whole budget is refused before it is
//! loaded. Names are checked against the design's pattern and the resolved directory must stay
//! under the models root, symlinks included. A name, once resolved, stays mapped to its directory
//! for the process: a request for a loaded model touches no file (on EFS, each lookup of the
//! path's components is a round trip once the attribute cache has expired).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::manifest::{ModelDir, MANIFEST_FILE};
use crate::model::Model;

/// Memory a Lambda function keeps outside the model cache: libtorch's code and allocator, the
/// runtime, and requests in flight.
const RESERVED_MB: u64 = 768;

/// Loaded models keyed by their canonical directory.
pub struct Registry {
    slots: Mutex<HashMap<PathBuf, Arc<Slot>>>,
    /// `(root, name)` of the models loaded by name, to their canonical directories.
    names: Mutex<HashMap<(PathBuf, String), PathBuf>>,
    /// Budget for loaded models, in bytes of resident memory; `None`: unbounded.
    budget: Option<u64>,
    /// Held while a model loads under a budget; holds the process's resident bytes before the
    /// first load, from which the cache counts the process's growth.
    loading: Mutex<Option<u64>>,
    /// The process's resident bytes (a constant zero charges models their files only).
    resident: fn() -> u64,
    clock: AtomicU64,
}

/// One model directory's place in the cache; its lock is held while the model loads.
#[derive(Default)]
struct Slot {
    model: Mutex<Option<Arc<Model>>>,
    /// What the loaded model counts against the budget (zero when it is not loaded).
    charge: AtomicU64,
    /// The charge of its last load, kept after eviction: what loading it again will take.
    last_charge: AtomicU64,
    last_used: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value behind these locks is valid between statements; a panic cannot tear one.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

static GLOBAL: OnceLock<Registry> = OnceLock::new();

impl Registry {
    /// A registry that keeps loaded models within `budget` bytes of resident memory (`None`: no
    /// limit).
    pub fn with_budget(budget: Option<u64>) -> Registry {
        Registry {
            slots: Mutex::default(),
            names: Mutex::default(),
            budget,
            loading: Mutex::new(None),
            resident: resident_bytes,
            clock: AtomicU64::new(0),
        }
    }

    /// A registry that charges each model its files only, blind to resident memory: its
    /// evictions depend on nothing else in the process, which tests of the policy need.
    #[doc(hidden)]
    pub fn charging_files(budget: Option<u64>) -> Registry {
        Registry {
            resident: || 0,
            ..Registry::with_budget(budget)
        }
    }

    /// The process-wide registry, with the budget of [`cache_budget`] (a bad
    /// `LAMBDATORCH_MODEL_CACHE_MB` leaves the cache unbounded here; the service's configuration
    /// refuses it at init).
    pub fn global() -> &'static Registry {
        GLOBAL.get_or_init(|| Registry::with_budget(cache_budget().ok().flatten()))
    }

    /// Loads (or returns the cached) model at a directory or manifest path.
    pub fn load(&self, path: &Path) -> Result<Arc<Model>> {
        let key = canonical_dir(path)?;
        let slot = Arc::clone(lock(&self.slots).entry(key.clone()).or_default());
        let mut model = lock(&slot.model);
        if let Some(model) = self.used(&slot, &model) {
            return Ok(model);
        }
        let dir = ModelDir::open(path)?;
        let Some(budget) = self.budget else {
            let loaded = Arc::new(Model::load(dir, Limits::from_env()?)?);
            *model = Some(Arc::clone(&loaded));
            return Ok(loaded);
        };
        let file = footprint(&dir.model_file);
        if file > budget {
            return Err(Error::manifest(
                &dir.manifest_path,
                "file",
                format!(
                    "the model takes {} MB, more than the whole model cache of {} MB: raise \
                     LAMBDATORCH_MODEL_CACHE_MB (and the function's memory)",
                    file.div_ceil(1 << 20),
                    budget >> 20
                ),
            ));
        }
        let mut loading = lock(&self.loading);
        let baseline = *loading.get_or_insert_with(self.resident);
        let expected = file.max(slot.last_charge.load(Ordering::Relaxed));
        self.make_room(expected, &key, baseline);
        let before = (self.resident)();
        let loaded = Arc::new(Model::load(dir, Limits::from_env()?)?);
        let charge = file.max((self.resident)().saturating_sub(before));
        slot.charge.store(charge, Ordering::Relaxed);
        slot.last_charge.store(charge, Ordering::Relaxed);
        *model = Some(Arc::clone(&loaded));
        drop(model);
        // It may have cost more than expected: the others make room for it now.
        self.make_room(0, &key, baseline);
        drop(loading);
        Ok(loaded)
    }

    /// Loads the model called `name` under `root`, refusing names that could leave it.
    pub fn load_named(&self, root: &Path, name: &str) -> Result<Arc<Model>> {
        let named = (root.to_owned(), name.to_owned());
        let known = lock(&self.names).get(&named).cloned();
        if let Some(slot) = known.and_then(|dir| lock(&self.slots).get(&dir).cloned()) {
            if let Some(model) = self.used(&slot, &lock(&slot.model)) {
                return Ok(model);
            }
        }
        let dir = resolve_name(root, name)?;
        let model = self.load(&dir)?;
        lock(&self.names).insert(named, dir);
        Ok(model)
    }

    /// The model in `slot` (whose lock the caller holds), if loaded, marked as used now.
    fn used(&self, slot: &Slot, model: &Option<Arc<Model>>) -> Option<Arc<Model>> {
        slot.last_used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        model.as_ref().map(Arc::clone)
    }

    /// The directories of the models loaded now.
    pub fn loaded(&self) -> Vec<PathBuf> {
        let slots = lock(&self.slots);
        let mut dirs: Vec<PathBuf> = slots
            .iter()
            .filter(|(_, slot)| slot.model.try_lock().map_or(true, |m| m.is_some()))
            .map(|(dir, _)| dir.clone())
            .collect();
        dirs.sort();
        dirs
    }

    /// Evicts least recently used idle models until `bytes` more fit the budget. A model is idle
    /// when only the cache holds it (no request, no Python object) and it is not loading. If the
    /// rest is busy, the load goes ahead over the budget until they are released.
    fn make_room(&self, bytes: u64, loading: &Path, baseline: u64) {
        let Some(budget) = self.budget else { return };
        let slots = lock(&self.slots);
        let used = || {
            let charged: u64 = slots
                .values()
                .map(|slot| slot.charge.load(Ordering::Relaxed))
                .sum();
            charged.max((self.resident)().saturating_sub(baseline))
        };
        let mut candidates: Vec<&Arc<Slot>> = slots
            .iter()
            .filter(|(dir, _)| dir.as_path() != loading)
            .map(|(_, slot)| slot)
            .collect();
        candidates.sort_by_key(|slot| slot.last_used.load(Ordering::Relaxed));
        for slot in candidates {
            if used() + bytes <= budget {
                break;
            }
            let Ok(mut model) = slot.model.try_lock() else {
                continue; // loading right now
            };
            if model.as_ref().is_some_and(|m| Arc::strong_count(m) == 1) {
                let name = model.take().map(|m| m.name().to_owned());
                let charge = slot.charge.swap(0, Ordering::Relaxed);
                drop(model);
                // glibc keeps freed memory in its arenas; without this an evicted model's
                // weights stay resident and the budget bounds nothing.
                // SAFETY: malloc_trim only releases free memory back to the system; it has no
                // preconditions and touches no live allocation.
                unsafe {
                    libc::malloc_trim(0);
                }
                tracing::info!(
                    model = name.as_deref().unwrap_or_default(),
                    charge_mb = charge >> 20,
                    grown_mb = (self.resident)().saturating_sub(baseline) >> 20,
                    budget_mb = budget >> 20,
                    "model cache: evicted the least recently used model"
                );
            }
        }
    }
}

/// The process's resident memory in bytes (`/proc/self/statm`), zero where it cannot be read.
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// What a model counts against the cache: its file, or the files of its directory (an
/// unpacked package). Weights dominate what a loaded model holds.
fn footprint(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| footprint(&entry.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// The model cache's budget in bytes: `LAMBDATORCH_MODEL_CACHE_MB`, else on Lambda the
/// function's memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`) less what libtorch and requests need
/// (768 MB, and at least a quarter of the memory stays out of the cache); elsewhere unbounded.
pub fn cache_budget() -> Result<Option<u64>> {
    let mb = |name: &str| -> Result<Option<u64>> {
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .map(Some)
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "{name} must be a positive number of megabytes, got {value:?}"
                    ))
                }),
            _ => Ok(None),
        }
    };
    if let Some(cache) = mb("LAMBDATORCH_MODEL_CACHE_MB")? {
        return Ok(Some(cache << 20));
    }
    Ok(mb("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")?.map(|memory| {
        let share = memory.saturating_sub(RESERVED_MB).min(memory * 3 / 4);
        share.max(1) << 20
    }))
}

fn canonical_dir(path: &Path) -> Result<PathBuf> {
    let dir = if path.is_file() {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    dir.canonicalize()
        .map_err(|err| Error::ModelNotFound(format!("no model at {}: {err}", path.display())))
}

/// Whether `name` matches `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Maps a model name to its directory under `root`: the name must match the design's pattern and
/// the directory, with symlinks resolved, must lie inside `root`.
pub fn resolve_name(root: &Path, name: &str) -> Result<PathBuf> {
    if !is_valid_name(name) {
        let shown: String = name.chars().take(80).collect();
        return Err(Error::ModelNotFound(format!(
            "{shown:?} is not a valid model name: names are 1 to 64 letters, digits, '.', '_' or \
             '-', starting with a letter or digit"
        )));
    }
    let not_found = || Error::ModelNotFound(format!("no model named {name:?}"));
    let root = root.canonicalize().map_err(|_| not_found())?;
    let dir = root.join(name).canonicalize().map_err(|_| not_found())?;
    if !dir.starts_with(&root) || !dir.join(MANIFEST_FILE).is_file() {
        return Err(not_found());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pattern() {
        for good in ["resnet18", "a", "ResNet-50_v1.5", &"a".repeat(64)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "../x",
            "/etc",
            "a/b",
            ".hidden",
            "-x",
            &"a".repeat(65),
            "é",
            "a\0b",
            "%2e%2e",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn resolution_stays_under_the_root() -> std::io::Result<()> {
        let tmp = std::env::temp_dir().join(format!("lt-registry-{}", std::process::id()));
        let root = tmp.join("models");
        std::fs::create_dir_all(root.join("good"))?;
        std::fs::write(root.join("good").join(MANIFEST_FILE), "{}")?;
        std::fs::create_dir_all(tmp.join("outside"))?;
        std::fs::write(tmp.join("outside").join(MANIFEST_FILE), "{}")?;
        std::os::unix::fs::symlink(tmp.join("outside"), root.join("escape"))?;

        assert!(resolve_name(&root, "good").is_ok());
        assert!(matches!(
            resolve_name(&root, "escape"),
            Err(Error::ModelNotFound(_))
        ));
        assert!(matches!(
            resolve_name(&root, "missing"),
            Err(Error::ModelNotFound(_))
        ));
        assert!(matches!(
            resolve_name(&root, ".."),
            Err(Error::ModelNotFound(_))
        ));
        std::fs::remove_dir_all(&tmp)
    }
}
