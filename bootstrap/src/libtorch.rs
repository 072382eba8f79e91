//! Where the native handler finds libtorch, checked before anything links against it.
//!
//! `lambdatorch-handler` needs `libtorch_cpu.so` and `libc10.so` from the moment it starts, and a
//! missing library would only give the dynamic loader's bare "cannot open shared object file". So
//! the launcher checks the directory and torch's version first, from the files alone (nothing is
//! loaded), and reports a clear init error instead. The Python extension does the same in
//! `python/lambdatorch/_libtorch.py`, searching `sys.path`, before it is imported.

use std::fmt;
use std::path::{Path, PathBuf};

/// The libtorch release the engine is built against (what crate `tch` expects): the workspace's
/// `libtorch-version` file, so the launcher and the engine cannot disagree.
pub const LIBTORCH_VERSION: &str = include_str!("../../libtorch-version").trim_ascii();

/// Where `pip install --target /mnt/efs/python torch` puts libtorch.
pub const DEFAULT_LIBTORCH_DIR: &str = "/mnt/efs/python/torch/lib";

/// The libraries the handler links against, in load order.
pub const LIBRARIES: [&str; 2] = ["libc10.so", "libtorch_cpu.so"];

/// libtorch is missing, unversioned or of the wrong version; the message says what was searched,
/// what was found and how to fix it. Reported to Lambda as `LibTorchError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibTorchError(pub String);

impl LibTorchError {
    /// The Lambda `errorType`, the same the engine gives its `Error::LibTorch`.
    pub const TYPE: &'static str = "LibTorchError";
}

impl fmt::Display for LibTorchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LibTorchError {}

/// `LAMBDATORCH_LIBTORCH`, or the default EFS location.
pub fn configured_dir() -> PathBuf {
    std::env::var_os("LAMBDATORCH_LIBTORCH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LIBTORCH_DIR))
}

/// torch's version for a `torch/lib` directory (`../version.py`), or a standalone libtorch's
/// (`../build-version`), read from the files: nothing is loaded.
pub fn version_of(lib_dir: &Path) -> Option<String> {
    let parent = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(parent.join("version.py")) {
        return text.lines().find_map(|line| {
            let rest = line.trim().strip_prefix("__version__")?.trim_start();
            let value = rest.strip_prefix('=')?.trim();
            Some(value.trim_matches(|c| c == '\'' || c == '"').to_owned())
        });
    }
    let text = std::fs::read_to_string(parent.join("build-version")).ok()?;
    Some(text.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Checks that `lib_dir` holds libtorch of the version the handler needs; returns that version.
pub fn check(lib_dir: &Path) -> Result<String, LibTorchError> {
    let fix = format!(
        "Install torch {LIBTORCH_VERSION} (CPU build) with `pip install --target /mnt/efs/python \
         torch=={LIBTORCH_VERSION} --index-url https://download.pytorch.org/whl/cpu`, or set \
         LAMBDATORCH_LIBTORCH to a libtorch {LIBTORCH_VERSION} lib directory."
    );
    let missing: Vec<&str> = LIBRARIES
        .into_iter()
        .filter(|name| !lib_dir.join(name).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(LibTorchError(format!(
            "libtorch not found: searched {} (LAMBDATORCH_LIBTORCH, default {DEFAULT_LIBTORCH_DIR}) \
             for {}; this build needs libtorch {LIBTORCH_VERSION}. {fix}",
            lib_dir.display(),
            missing.join(", ")
        )));
    }
    let version = version_of(lib_dir).ok_or_else(|| {
        LibTorchError(format!(
            "found libtorch in {} but not its version (no ../version.py or ../build-version); \
             this build needs {LIBTORCH_VERSION}. {fix}",
            lib_dir.display()
        ))
    })?;
    let release = version.split('+').next().unwrap_or_default();
    if release != LIBTORCH_VERSION {
        return Err(LibTorchError(format!(
            "found libtorch {version} in {}, but this build needs {LIBTORCH_VERSION}. {fix}",
            lib_dir.display()
        )));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_a_release_number() {
        assert!(
            LIBTORCH_VERSION.split('.').count() == 3
                && LIBTORCH_VERSION
                    .split('.')
                    .all(|part| part.parse::<u32>().is_ok()),
            "{LIBTORCH_VERSION:?}"
        );
    }

    #[test]
    fn checks_files_and_version() -> std::io::Result<()> {
        let root = std::env::temp_dir().join(format!("lt-libtorch-{}", std::process::id()));
        let lib = root.join("torch").join("lib");
        std::fs::create_dir_all(&lib)?;
        let err = check(&lib).unwrap_err().to_string();
        assert!(
            err.contains("libtorch not found: searched") && err.contains("libc10.so"),
            "{err}"
        );
        for name in LIBRARIES {
            std::fs::write(lib.join(name), b"")?;
        }
        assert!(check(&lib)
            .unwrap_err()
            .to_string()
            .contains("not its version"));
        std::fs::write(
            root.join("torch").join("version.py"),
            "__version__ = '2.12.0+cpu'\n",
        )?;
        assert!(check(&lib)
            .unwrap_err()
            .to_string()
            .contains("found libtorch 2.12.0+cpu"));
        std::fs::write(
            root.join("torch").join("version.py"),
            format!("__version__ = '{LIBTORCH_VERSION}+cpu'\n"),
        )?;
        assert_eq!(
            check(&lib).ok(),
            Some(format!("{LIBTORCH_VERSION}+cpu")),
            "a matching release with a local build tag"
        );
        std::fs::remove_dir_all(&root)
    }

    #[test]
    fn reads_a_standalone_libtorch_version() -> std::io::Result<()> {
        let root = std::env::temp_dir().join(format!("lt-libtorch-bv-{}", std::process::id()));
        let lib = root.join("lib");
        std::fs::create_dir_all(&lib)?;
        std::fs::write(root.join("build-version"), "2.13.0+cpu\n")?;
        assert_eq!(version_of(&lib).as_deref(), Some("2.13.0+cpu"));
        std::fs::remove_dir_all(&root)
    }
}
