//! Where the native handler finds libtorch, checked before anything links against it.
//!
//! `lambdatorch-handler` needs `libtorch_cpu.so` and `libc10.so` from the moment it starts, and a
//! missing library would only give the dynamic loader's bare "cannot open shared object file". So
//! the `bootstrap` launcher, which links no libtorch, checks the directory and torch's version
//! first and reports a clear init error instead. (The Python extension does the same in
//! `python/lambdatorch/_libtorch.py`, searching `sys.path`, before it is imported.)

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::LIBTORCH_VERSION;

/// Where `pip install --target /mnt/efs/python torch` puts libtorch.
pub const DEFAULT_LIBTORCH_DIR: &str = "/mnt/efs/python/torch/lib";

/// The libraries the handler links against, in load order.
pub const LIBRARIES: [&str; 2] = ["libc10.so", "libtorch_cpu.so"];

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

/// Checks that `lib_dir` holds libtorch of the version this build needs.
pub fn check(lib_dir: &Path) -> Result<String> {
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
        return Err(Error::LibTorch(format!(
            "libtorch not found: searched {} (LAMBDATORCH_LIBTORCH, default {DEFAULT_LIBTORCH_DIR}) \
             for {}; this build needs libtorch {LIBTORCH_VERSION}. {fix}",
            lib_dir.display(),
            missing.join(", ")
        )));
    }
    let version = version_of(lib_dir).ok_or_else(|| {
        Error::LibTorch(format!(
            "found libtorch in {} but not its version (no ../version.py or ../build-version); \
             this build needs {LIBTORCH_VERSION}. {fix}",
            lib_dir.display()
        ))
    })?;
    let release = version.split('+').next().unwrap_or_default();
    if release != LIBTORCH_VERSION {
        return Err(Error::LibTorch(format!(
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
            "__version__ = '2.13.0+cpu'\n",
        )?;
        assert_eq!(check(&lib).ok().as_deref(), Some("2.13.0+cpu"));
        std::fs::remove_dir_all(&root)
    }
}
