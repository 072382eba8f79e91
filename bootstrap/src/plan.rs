//! How to start the handler so that the dynamic loader searches for nothing on EFS.
//!
//! For each library `libtorch_cpu.so` needs, the loader tries every directory of its RPATH
//! first (PyPI's build lists five nvidia package directories before its own), and then
//! `LD_LIBRARY_PATH`: on EFS each failed lookup is a network round trip, 169 of them for a cold
//! start. So the launcher reads the libraries' ELF headers, lists each RPATH directory once, and
//! hands the handler an `LD_PRELOAD` of the libraries from outside the tree (by name, found
//! locally) and of the tree's own (by path, dependencies first), with the system's library
//! directory ahead of libtorch's on `LD_LIBRARY_PATH`. The same libraries are loaded from the same
//! places as the loader would pick; only the searching is gone. The Python extension does the
//! same in `python/lambdatorch/_libtorch.py`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf;
use crate::libtorch::LIBRARIES;
use crate::prefetch::Record;

/// Byte ranges of a file: `(offset, size)`.
pub type Ranges = Vec<(u64, u64)>;

/// libtorch's libraries in an order that leaves the loader nothing to search for.
#[derive(Debug, Default)]
pub struct LoadPlan {
    /// Needed libraries that live in none of the tree's RPATH directories: the system's.
    pub system: Vec<String>,
    /// The tree's libraries, each after the ones it needs.
    pub tree: Vec<PathBuf>,
    /// For each of the tree's libraries, the file ranges of its [`LINKER_SECTIONS`].
    pub linker_ranges: BTreeMap<PathBuf, Ranges>,
}

/// What the dynamic loader reads whole to link and relocate a library: symbol, version and hash
/// tables, relocations and the data it relocates (code is faulted in as it runs, and only a
/// part of it ever is).
pub const LINKER_SECTIONS: [&str; 17] = [
    ".dynsym",
    ".dynstr",
    ".gnu.hash",
    ".hash",
    ".gnu.version",
    ".gnu.version_r",
    ".gnu.version_d",
    ".rela.dyn",
    ".rela.plt",
    ".relr.dyn",
    ".dynamic",
    ".init_array",
    ".data.rel.ro",
    ".got",
    ".got.plt",
    ".data",
    ".tdata",
];

/// Sorted ranges, with those at most `gap` apart joined.
pub fn merged(mut ranges: Ranges, gap: u64) -> Ranges {
    ranges.sort_unstable();
    let mut out: Ranges = Vec::new();
    for (offset, size) in ranges {
        match out.last_mut() {
            Some((start, len)) if offset <= *start + *len + gap => {
                *len = (*start + *len).max(offset + size) - *start;
            }
            _ => out.push((offset, size)),
        }
    }
    out
}

/// The plan for `lib_dir`: the recorded one while it matches the files, else one read from the
/// libraries' ELF headers and directory listings; `None` when the libraries use what it does not
/// model (`DT_RUNPATH`, `glibc-hwcaps` directories) or cannot be read: then the loader searches
/// as before.
pub fn load_plan(lib_dir: &Path, record: Option<&Record>) -> Option<LoadPlan> {
    if let Some(plan) = record.and_then(|r| r.plan(lib_dir)) {
        return Some(plan);
    }
    let mut planner = Planner::default();
    for name in LIBRARIES {
        planner.visit(&lib_dir.join(name))?;
    }
    Some(planner.plan)
}

#[derive(Default)]
struct Planner {
    plan: LoadPlan,
    listings: HashMap<PathBuf, HashSet<String>>,
    visiting: HashSet<PathBuf>,
}

impl Planner {
    fn names_in(&mut self, folder: &Path) -> Option<&HashSet<String>> {
        if !self.listings.contains_key(folder) {
            let names: HashSet<String> = std::fs::read_dir(folder)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            if names.contains("glibc-hwcaps") {
                return None;
            }
            self.listings.insert(folder.to_owned(), names);
        }
        self.listings.get(folder)
    }

    fn visit(&mut self, path: &Path) -> Option<()> {
        if self.plan.tree.iter().any(|p| p == path) || !self.visiting.insert(path.to_owned()) {
            return Some(());
        }
        let info = elf::read(path).ok()?;
        if info.runpath {
            return None; // searched after LD_LIBRARY_PATH: the environment decides
        }
        let linker: Ranges = info
            .sections
            .iter()
            .filter(|(name, _)| LINKER_SECTIONS.contains(&name.as_str()))
            .map(|(_, &range)| range)
            .collect();
        self.plan
            .linker_ranges
            .insert(path.to_owned(), merged(linker, 1 << 20));
        for name in &info.needed {
            let mut found = None;
            for folder in &info.search {
                if self.names_in(folder)?.contains(name) {
                    found = Some(folder.join(name));
                    break;
                }
            }
            match found {
                Some(dependency) => self.visit(&dependency)?,
                None if !self.plan.system.contains(name) => self.plan.system.push(name.clone()),
                None => {}
            }
        }
        self.plan.tree.push(path.to_owned());
        Some(())
    }
}

/// The directory the running C library was loaded from (`/lib64` on Amazon Linux), where the
/// system's other libraries are too; read from `/proc/self/maps`.
pub fn system_lib_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .and_then(|p| p.parent().map(Path::to_owned))
}

impl LoadPlan {
    /// `LD_PRELOAD` for the handler: the system's libraries by name, then the tree's by path;
    /// `None` if a path cannot be written there (it splits on `:` and spaces).
    pub fn ld_preload(&self) -> Option<String> {
        let tree: Vec<String> = self
            .tree
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if tree.iter().any(|p| p.contains([':', ' '])) {
            return None;
        }
        // The dynamic loader itself (a NEEDED entry of every library here) is always loaded.
        let system = self
            .system
            .iter()
            .filter(|name| !name.starts_with("ld-linux"));
        Some(system.cloned().chain(tree).collect::<Vec<_>>().join(":"))
    }
}

/// The handler's command: libtorch's directory in `LAMBDATORCH_LIBTORCH` and on
/// `LD_LIBRARY_PATH` (after the system's directory when there is a plan, so that the system's
/// libraries are not looked for on EFS), and the plan's `LD_PRELOAD`.
pub fn handler_command(handler: &Path, lib_dir: &Path, plan: Option<&LoadPlan>) -> Command {
    let mut command = Command::new(handler);
    command.env("LAMBDATORCH_LIBTORCH", lib_dir);
    let mut library_path = OsString::new();
    if let Some(system) = plan.and(system_lib_dir()) {
        library_path.push(system);
        library_path.push(":");
    }
    library_path.push(lib_dir);
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
        library_path.push(":");
        library_path.push(existing);
    }
    command.env("LD_LIBRARY_PATH", library_path);
    if let Some(preload) = plan.and_then(LoadPlan::ld_preload) {
        let mut value = OsString::from(preload);
        if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
            value.push(":");
            value.push(existing);
        }
        command.env("LD_PRELOAD", value);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_close_ranges() {
        assert_eq!(
            merged(vec![(100, 10), (0, 10), (15, 5), (300, 1)], 10),
            vec![(0, 20), (100, 10), (300, 1)]
        );
        assert_eq!(merged(vec![(0, 100), (10, 5)], 0), vec![(0, 100)]);
    }

    #[test]
    fn finds_the_system_library_directory() {
        let dir = system_lib_dir().expect("libc is mapped");
        assert!(dir.join("libc.so.6").exists(), "{}", dir.display());
    }

    #[test]
    fn plans_nothing_for_a_missing_tree() {
        assert!(load_plan(Path::new("/nonexistent/torch/lib"), None).is_none());
    }
}
