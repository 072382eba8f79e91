//! Compiles the AOTInductor shim (`src/backend/aoti_shim.cpp`, the crate's only C++) against the
//! same libtorch headers and C++ ABI that crate `tch` (its `torch-sys` build script) compiles its
//! own C++ wrappers with: with `LIBTORCH_USE_PYTORCH` set, what the `python` on `PATH` (the
//! venv's when `VIRTUAL_ENV` is set) reports for its torch; otherwise `LIBTORCH` (a libtorch
//! directory, with `LIBTORCH_INCLUDE`, `LIBTORCH_LIB` and `LIBTORCH_CXX11_ABI` as overrides).

use std::path::PathBuf;
use std::process::Command;

const SHIM: &str = "src/backend/aoti_shim.cpp";

const PRINT_TORCH: &str = r"
import torch
from torch.utils import cpp_extension
print('CXX11_ABI:', int(torch._C._GLIBCXX_USE_CXX11_ABI))
for path in cpp_extension.include_paths():
    print('INCLUDE:', path)
for path in cpp_extension.library_paths():
    print('LIB:', path)
";

struct Torch {
    includes: Vec<PathBuf>,
    lib: PathBuf,
    cxx11_abi: String,
}

fn env(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var(name).ok()
}

fn from_python() -> Torch {
    let python = if env("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let output = Command::new(python)
        .args(["-c", PRINT_TORCH])
        .output()
        .unwrap_or_else(|err| panic!("LIBTORCH_USE_PYTORCH is set but {python} cannot run: {err}"));
    assert!(
        output.status.success(),
        "LIBTORCH_USE_PYTORCH is set but {python} cannot import torch: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (mut includes, mut lib, mut cxx11_abi) = (vec![], None, None);
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if let Some(abi) = line.strip_prefix("CXX11_ABI: ") {
            cxx11_abi = Some(abi.to_owned());
        } else if let Some(path) = line.strip_prefix("INCLUDE: ") {
            includes.push(PathBuf::from(path));
        } else if let Some(path) = line.strip_prefix("LIB: ") {
            lib.get_or_insert_with(|| PathBuf::from(path));
        }
    }
    Torch {
        includes,
        lib: lib.expect("torch reported no library path"),
        cxx11_abi: cxx11_abi.expect("torch reported no C++ ABI"),
    }
}

fn from_libtorch_dir() -> Torch {
    let root = PathBuf::from(
        env("LIBTORCH").expect("set LIBTORCH_USE_PYTORCH=1 (the Makefile does) or LIBTORCH"),
    );
    let include = env("LIBTORCH_INCLUDE").map_or_else(|| root.clone(), PathBuf::from);
    Torch {
        includes: vec![
            include.join("include"),
            include.join("include/torch/csrc/api/include"),
        ],
        lib: env("LIBTORCH_LIB")
            .map_or_else(|| root.clone(), PathBuf::from)
            .join("lib"),
        cxx11_abi: env("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".to_owned()),
    }
}

fn main() {
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-changed=build.rs");
    if env("DOCS_RS").is_some() {
        return;
    }
    let torch = if env("LIBTORCH_USE_PYTORCH").is_some() {
        from_python()
    } else {
        from_libtorch_dir()
    };
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .includes(&torch.includes)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", torch.cxx11_abi))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file(SHIM)
        .compile("lambdatorch_aoti");
    // The shim calls into libtorch_cpu (the loader) and libc10, which `tch` links too; said here
    // so the static shim finds them whatever order the linker sees the crates in.
    println!("cargo:rustc-link-search=native={}", torch.lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-lib=dylib=dl");
}
