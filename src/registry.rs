//! The per-process model cache, and the only place where a request's model name becomes a path.
//!
//! Models are loaded once and shared (`Arc<Model>`) by every caller in the process: the Python
//! `load`, the service core and both handlers. Names are checked against the design's pattern and
//! the resolved directory must stay under the models root, symlinks included.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::manifest::{ModelDir, MANIFEST_FILE};
use crate::model::Model;

/// Loaded models keyed by their canonical directory.
#[derive(Default)]
pub struct Registry {
    models: Mutex<HashMap<PathBuf, Arc<Model>>>,
}

static GLOBAL: OnceLock<Registry> = OnceLock::new();

impl Registry {
    /// The process-wide registry.
    pub fn global() -> &'static Registry {
        GLOBAL.get_or_init(Registry::default)
    }

    /// Loads (or returns the cached) model at a directory or manifest path.
    ///
    /// Loading holds the registry lock: two threads asking for the same model load it once.
    pub fn load(&self, path: &Path) -> Result<Arc<Model>> {
        let key = canonical_dir(path)?;
        let mut models = self
            .models
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(model) = models.get(&key) {
            return Ok(Arc::clone(model));
        }
        let model = Arc::new(Model::load(ModelDir::open(path)?, Limits::from_env()?)?);
        models.insert(key, Arc::clone(&model));
        Ok(model)
    }

    /// Loads the model called `name` under `root`, refusing names that could leave it.
    pub fn load_named(&self, root: &Path, name: &str) -> Result<Arc<Model>> {
        self.load(&resolve_name(root, name)?)
    }
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
