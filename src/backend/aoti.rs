//! AOTInductor packages (`torch._inductor.aoti_compile_and_package`), unpacked into the model
//! directory and run in place by libtorch's `AOTIModelPackageLoader` through the C++ shim
//! (`aoti_shim.cpp`, the crate's only C++).
//!
//! Before any of the package's code is loaded, [`Package::inspect`] reads what the package says
//! about itself: the vector ISA its kernels were compiled for (checked against this CPU, so a
//! missing instruction set is an error, never a SIGILL) and the batch sizes its generated input
//! check accepts. Unpacking a `.pt2` archive safely is `lambdatorch add-model`'s job, not this
//! module's: here a package is a directory.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tch::Tensor;

use super::{Backend, BatchSizes};
use crate::error::first_line;
use crate::tensor::DType;

/// Where a package keeps its model library and metadata, under its top directory.
const MODEL_SUBDIR: &str = "data/aotinductor/model";

/// The name `aoti_compile_and_package` gives the one model of a package.
const MODEL_NAME: &str = "model";

mod ffi {
    use std::ffi::{c_char, c_void};

    // Compiled from `aoti_shim.cpp` by `build.rs`. Tensors are `at::Tensor*`, as in tch.
    extern "C" {
        pub fn lt_aoti_load_libtorch(err: *mut *mut c_char) -> *mut c_char;
        pub fn lt_aoti_load(
            path: *const c_char,
            model_name: *const c_char,
            num_runners: usize,
            err: *mut *mut c_char,
        ) -> *mut c_void;
        pub fn lt_aoti_run(
            loader: *mut c_void,
            inputs: *const *mut c_void,
            n_inputs: usize,
            outputs: *mut *mut *mut c_void,
            n_outputs: *mut usize,
            err: *mut *mut c_char,
        ) -> i32;
        pub fn lt_aoti_free_outputs(outputs: *mut *mut c_void);
        pub fn lt_aoti_free(loader: *mut c_void);
        pub fn lt_aoti_free_string(text: *mut c_char);
    }
}

/// Takes a string the shim allocated (an error or a path) and frees it.
fn take_string(text: *mut c_char) -> String {
    if text.is_null() {
        return "unknown error (the shim gave no message)".to_owned();
    }
    // SAFETY: the shim returns NUL-terminated strings from `malloc`, freed exactly once here.
    let owned = unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `text` came from the shim, is not used after this, and is freed only here.
    unsafe { ffi::lt_aoti_free_string(text) };
    owned
}

/// Loads `libtorch.so` from beside the running `libtorch_cpu.so` once per process, so that
/// model libraries that NEED it load with no `LD_LIBRARY_PATH` set. In PyPI's CUDA-enabled
/// build this also loads `libtorch_cuda.so` and the CUDA runtime; in the CPU-only build
/// `libtorch.so` is a small library over `libtorch_cpu.so`.
fn ensure_libtorch() -> Result<(), String> {
    static LOADED: OnceLock<Result<String, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let mut err = std::ptr::null_mut();
            // SAFETY: the shim only reads its own state; `err` is set whenever it returns null.
            let path = unsafe { ffi::lt_aoti_load_libtorch(&mut err) };
            if path.is_null() {
                Err(take_string(err))
            } else {
                Ok(take_string(path))
            }
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

/// What a package directory says about itself, read without loading any of its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package's top directory (the one holding `data/aotinductor/model/`).
    pub dir: PathBuf,
    /// `AOTI_CPU_ISA` of the package's metadata, as written (`"AVX2"`, `"AVX512 AVX512_VNNI"`).
    pub cpu_isa: String,
    /// `AOTI_MACHINE` (`"x86_64"`, `"aarch64"`).
    pub machine: String,
    /// The batch sizes the model accepts: `Static(n)` or `Dynamic { max }` (no `max`: no limit).
    pub batch: Batch,
    /// What the generated code expects of each input beyond its batch size, in order; `None`
    /// when the package carries no generated source to tell.
    pub inputs: Option<Vec<InputCheck>>,
}

/// An input as the package's generated input check describes it. The kernels index their input
/// by these sizes without checking (lambdatorch leaves AOTInductor's runtime check off: it refuses
/// a batch of 1), so a manifest must agree with them before any request reaches the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputCheck {
    /// Number of dimensions, when the check lists every stride.
    pub rank: Option<usize>,
    /// `(dimension, size)` of every dimension after the batch with a fixed size.
    pub dims: Vec<(usize, usize)>,
    /// The element type, as ATen names it (`kFloat`, `kLong`, ...).
    pub dtype: Option<String>,
    /// `(dimension, most)` of every dimension after the batch whose size varies up to `most`
    /// (`torch.export.Dim` with a `max`; a text model's tokens).
    pub bounds: Vec<(usize, usize)>,
}

impl InputCheck {
    /// Reads the checks of every input in a wrapper source, in order.
    fn all_of(source: &str) -> Vec<InputCheck> {
        (0..)
            .take_while(|index| source.contains(&format!("input_handles[{index}]: ")))
            .map(|index| InputCheck::of(source, index))
            .collect()
    }

    /// Reads the checks of `input_handles[index]` in a wrapper source.
    fn of(source: &str, index: usize) -> InputCheck {
        let input = format!("input_handles[{index}]");
        let expected = |marker: &str| -> Option<usize> {
            let rest = &source[source.find(marker)? + marker.len()..];
            let rest = &rest[rest.find("expected: ")? + "expected: ".len()..];
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        };
        let dims = (1..32)
            .filter_map(|i| {
                expected(&format!("{input}: unmatched dim value at {i},")).map(|n| (i, n))
            })
            .collect();
        let bounds = (1..32)
            .filter_map(|i| {
                let marker = format!("{input}: dim value is too large at {i},");
                let rest = &source[source.find(&marker)? + marker.len()..];
                let rest = &rest[rest.find("expected to be <= ")? + "expected to be <= ".len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                Some((i, digits.parse().ok()?))
            })
            .collect();
        let rank = (0..32)
            .filter(|i| source.contains(&format!("{input}: unmatched stride value at {i},")))
            .max()
            .map(|last| last + 1);
        let dtype = source
            .find(&format!("{input}: unmatched dtype,"))
            .and_then(|at| {
                let rest = &source[at..];
                let rest = &rest[rest.find("(at::")? + "(at::".len()..];
                Some(rest[..rest.find(')')?].to_owned())
            });
        InputCheck {
            rank,
            dims,
            dtype,
            bounds,
        }
    }

    /// Checks a manifest's input (`shape` batch first, `-1` where sizes vary, up to `most` in
    /// that dimension when it is `Some`; `dtype`) against the package; the message says what
    /// differs.
    pub fn check(&self, shape: &[i64], most: &[Option<usize>], dtype: DType) -> Result<(), String> {
        let aten = match dtype {
            DType::Float32 => "kFloat",
            DType::Float64 => "kDouble",
            DType::Float16 => "kHalf",
            DType::Bfloat16 => "kBFloat16",
            DType::Int64 => "kLong",
            DType::Int32 => "kInt",
            DType::Uint8 => "kByte",
            DType::Bool => "kBool",
        };
        if let Some(want) = &self.dtype {
            if want != aten {
                return Err(format!(
                    "the package takes {want} inputs, the manifest says {} (at::{aten})",
                    dtype.name()
                ));
            }
        }
        if let Some(rank) = self.rank {
            if rank != shape.len() {
                return Err(format!(
                    "the package takes {rank}-dimensional inputs, the manifest's shape {shape:?} \
                     has {}",
                    shape.len()
                ));
            }
        }
        for &(dim, size) in &self.dims {
            if shape.get(dim) != Some(&(size as i64)) {
                return Err(format!(
                    "the package takes inputs of size {size} in dimension {dim}, the manifest's \
                     shape is {shape:?}"
                ));
            }
        }
        for &(dim, bound) in &self.bounds {
            let largest = match shape.get(dim) {
                Some(&size) if size >= 0 => Some(size as usize),
                _ => most.get(dim).copied().flatten(),
            };
            if largest.is_none_or(|n| n > bound) {
                let asked = largest.map_or("any size".to_owned(), |n| format!("up to {n}"));
                return Err(format!(
                    "the package takes at most {bound} in dimension {dim}, the manifest lets \
                     {asked} through (shape {shape:?})"
                ));
            }
        }
        Ok(())
    }
}

/// The batch dimension of a package's (first) input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Exported with this batch size and no other.
    Static(usize),
    /// Exported with a dynamic batch dimension (`torch.export.Dim`), up to `max` when bounded.
    Dynamic {
        /// The largest batch the export allowed.
        max: Option<usize>,
    },
    /// The package carries no generated source to tell (only its library).
    Unknown,
}

impl Package {
    /// Reads the package at `dir`: its kernel metadata and its generated input check.
    pub fn inspect(dir: &Path) -> Result<Package, String> {
        let model_dir = dir.join(MODEL_SUBDIR);
        let entries = std::fs::read_dir(&model_dir).map_err(|err| {
            format!(
                "not an AOTInductor package directory ({} is missing: {err}); give add-model \
                 the .pt2 file, it unpacks it",
                Path::new(MODEL_SUBDIR).display()
            )
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let libraries: Vec<&String> = names.iter().filter(|n| n.ends_with(".so")).collect();
        let [library] = libraries[..] else {
            return Err(format!(
                "expected one model library (*.so) in {MODEL_SUBDIR}, found {}: the package is \
                 incomplete or not a CPU package",
                libraries.len()
            ));
        };
        check_elf(&model_dir.join(library)).map_err(|why| format!("{library}: {why}"))?;
        let mut isa: Option<String> = None;
        let mut machine: Option<String> = None;
        for name in names.iter().filter(|n| n.ends_with("_metadata.json")) {
            let text = std::fs::read_to_string(model_dir.join(name))
                .map_err(|err| format!("cannot read {name}: {err}"))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|err| format!("{name} is not valid JSON: {err}"))?;
            let field = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
            if let Some(device) = field("AOTI_DEVICE_KEY") {
                if device != "cpu" {
                    return Err(format!(
                        "the package was compiled for device {device:?}; lambdatorch serves CPU \
                         packages (export with the module and example on the CPU)"
                    ));
                }
            }
            for (key, seen) in [("AOTI_CPU_ISA", &mut isa), ("AOTI_MACHINE", &mut machine)] {
                if let Some(value) = field(key) {
                    match seen {
                        Some(earlier) if *earlier != value => {
                            return Err(format!(
                                "its metadata disagrees on {key}: {earlier:?} and {value:?}"
                            ))
                        }
                        _ => *seen = Some(value),
                    }
                }
            }
        }
        let cpu_isa = isa.ok_or_else(|| {
            format!("no AOTI_CPU_ISA in the package's metadata (*_metadata.json in {MODEL_SUBDIR})")
        })?;
        let (batch, inputs) = match names.iter().find(|n| n.ends_with(".wrapper.cpp")) {
            Some(name) => {
                let source = std::fs::read_to_string(model_dir.join(name))
                    .map_err(|err| format!("cannot read {name}: {err}"))?;
                (batch_of(&source), Some(InputCheck::all_of(&source)))
            }
            None => (Batch::Unknown, None),
        };
        Ok(Package {
            dir: dir.to_path_buf(),
            cpu_isa,
            machine: machine.unwrap_or_default(),
            batch,
            inputs,
        })
    }

    /// Checks that this CPU runs the package's code: the architecture, and every vector
    /// extension of its ISA. The error names what the package needs and what the CPU has.
    pub fn check_cpu(&self) -> Result<(), String> {
        if !self.machine.is_empty() && self.machine != std::env::consts::ARCH {
            return Err(format!(
                "the package was compiled for {} and this machine is {}",
                self.machine,
                std::env::consts::ARCH
            ));
        }
        let missing: Vec<&str> = self
            .cpu_isa
            .split_whitespace()
            .filter(|token| !cpu_has(token))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "the package was compiled for the CPU ISA {:?} and this CPU lacks {} (it has {}); \
             export again for this CPU (lambdatorch export --format aoti --cpu avx2, what every \
             Lambda x86_64 host has)",
            self.cpu_isa,
            missing.join(", "),
            host_isa()
        ))
    }
}

/// Checks that a shared library is a whole 64-bit little-endian ELF file: every segment the
/// dynamic linker maps and the section table lie inside the file. A truncated library would
/// otherwise load and fault (SIGBUS) when the missing pages are first touched.
fn check_elf(path: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|err| format!("cannot open: {err}"))?;
    let len = file
        .metadata()
        .map_err(|err| format!("cannot stat: {err}"))?
        .len();
    let mut header = [0u8; 64];
    file.read_exact(&mut header)
        .map_err(|_| "not an ELF library (too short)".to_owned())?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF library".to_owned());
    }
    let u16_at = |b: &[u8], at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let u64_at = |b: &[u8], at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let (phoff, shoff) = (u64_at(&header, 32), u64_at(&header, 40));
    let (phentsize, phnum) = (u16_at(&header, 54), u16_at(&header, 56));
    let (shentsize, shnum) = (u16_at(&header, 58), u16_at(&header, 60));
    let truncated = || format!("truncated: the file is {len} bytes, shorter than its own layout");
    let table_end = |offset: u64, size: u64, count: u64| {
        size.checked_mul(count).and_then(|n| n.checked_add(offset))
    };
    if table_end(shoff, shentsize, shnum).is_none_or(|end| end > len)
        || table_end(phoff, phentsize, phnum).is_none_or(|end| end > len)
        || phentsize < 56
    {
        return Err(truncated());
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|_| truncated())?;
    for entry in table.chunks_exact(phentsize as usize) {
        let (offset, filesz) = (u64_at(entry, 8), u64_at(entry, 32));
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Err(truncated());
        }
    }
    Ok(())
}

/// The batch dimension the generated input check of a wrapper source enforces on input 0.
/// Inductor writes `unmatched dim value at 0, expected: N` for a static batch and
/// `too large at 0, expected to be <= N` for a bounded dynamic one. Its lower bound for a
/// dynamic batch is 2 (size-oblivious reasoning), but the kernels serve a batch of 1 as well,
/// which the tests check, so that bound is not kept.
fn batch_of(source: &str) -> Batch {
    let after = |marker: &str, prefix: &str| -> Option<usize> {
        let rest = &source[source.find(marker)? + marker.len()..];
        let rest = &rest[rest.find(prefix)? + prefix.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    if let Some(n) = after("input_handles[0]: unmatched dim value at 0,", "expected: ") {
        return Batch::Static(n);
    }
    let max = after(
        "input_handles[0]: dim value is too large at 0,",
        "expected to be <= ",
    );
    if max.is_some() || source.contains("input_handles[0]: dim value is too small at 0,") {
        return Batch::Dynamic { max };
    }
    Batch::Dynamic { max: None }
}

/// Whether this CPU has the vector extension an `AOTI_CPU_ISA` token names (ATen's
/// `CPUCapability` names; for AVX-512, the subsets ATen's AVX512 kernels need).
fn cpu_has(token: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        match token {
            // Inductor compiles its AVX2 kernels with `-mavx2 -mfma -mf16c`.
            "AVX2" => has!("avx2") && has!("fma") && has!("f16c"),
            "AVX512" => has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq"),
            "AVX512_VNNI" => has!("avx512vnni"),
            "AVX512_BF16" => has!("avx512bf16"),
            "AVX512_FP16" => has!("avx512fp16"),
            other => cpuinfo_flags()
                .iter()
                .any(|f| f.eq_ignore_ascii_case(other)),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cpuinfo_flags()
            .iter()
            .any(|f| f.eq_ignore_ascii_case(token))
    }
}

/// The flags of the first CPU in `/proc/cpuinfo` (empty when unreadable).
fn cpuinfo_flags() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    text.lines()
        .find(|line| line.starts_with("flags") || line.starts_with("Features"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, flags)| flags.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// This CPU's vector ISA in `AOTI_CPU_ISA` words, for messages and `doctor`.
pub fn host_isa() -> String {
    let known = [
        "AVX2",
        "AVX512",
        "AVX512_VNNI",
        "AVX512_BF16",
        "AVX512_FP16",
    ];
    let found: Vec<&str> = known.into_iter().filter(|t| cpu_has(t)).collect();
    if found.is_empty() {
        "no AVX2".to_owned()
    } else {
        found.join(" ")
    }
}

/// A loaded AOTInductor model.
pub struct Aoti {
    loader: *mut c_void,
    /// What the package said about itself at load.
    pub package: Package,
}

// SAFETY: `AOTIModelPackageLoader::run` is safe to call from several threads at once (its
// model container hands each call a free model instance, waiting when all are busy), and the
// pointer is only freed in `drop`, when no call can be running.
unsafe impl Send for Aoti {}
// SAFETY: as for `Send` above: concurrent `run` calls are safe in the loader itself.
unsafe impl Sync for Aoti {}

impl Aoti {
    /// Checks the package at `dir` against this CPU, then loads it in place.
    pub fn load(dir: &Path) -> Result<Aoti, String> {
        let package = Package::inspect(dir)?;
        package.check_cpu()?;
        let loader = match load_package(dir) {
            // A library linked against libtorch.so (inductor's default; lambdatorch export
            // links none) needs it loaded first: only then is its cost paid.
            Err(message) if message.contains("libtorch.so") => {
                ensure_libtorch()?;
                load_package(dir)
            }
            other => other,
        }
        .map_err(|message| {
            format!(
                "not a loadable AOTInductor package: {}",
                first_line(&message)
            )
        })?;
        Ok(Aoti { loader, package })
    }
}

fn load_package(dir: &Path) -> Result<*mut c_void, String> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| "the package path holds a NUL byte".to_owned())?;
    let name = CString::new(MODEL_NAME).map_err(|err| err.to_string())?;
    let mut err = std::ptr::null_mut();
    // SAFETY: both strings outlive the call; the shim catches every C++ exception.
    let loader = unsafe { ffi::lt_aoti_load(path.as_ptr(), name.as_ptr(), 1, &mut err) };
    if loader.is_null() {
        return Err(take_string(err));
    }
    Ok(loader)
}

impl Drop for Aoti {
    fn drop(&mut self) {
        // SAFETY: the loader came from `lt_aoti_load` and is freed once.
        unsafe { ffi::lt_aoti_free(self.loader) };
    }
}

impl Backend for Aoti {
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        // The generated code reads inputs as dense row-major buffers.
        let inputs: Vec<Tensor> = inputs.iter().map(Tensor::contiguous).collect();
        let pointers: Vec<*mut c_void> = inputs
            .iter()
            .map(|t| t.as_ptr().cast_mut().cast::<c_void>())
            .collect();
        let mut outputs: *mut *mut c_void = std::ptr::null_mut();
        let mut count = 0usize;
        let mut err = std::ptr::null_mut();
        // SAFETY: `pointers` are live `at::Tensor*` borrowed for the call (`inputs` outlives
        // it); the shim catches every C++ exception and returns owned output tensors.
        let status = unsafe {
            ffi::lt_aoti_run(
                self.loader,
                pointers.as_ptr(),
                pointers.len(),
                &mut outputs,
                &mut count,
                &mut err,
            )
        };
        if status != 0 {
            return Err(first_line(&take_string(err)));
        }
        let tensors = (0..count)
            .map(|i| {
                // SAFETY: the shim filled `count` new `at::Tensor*` that we now own; tch frees
                // each with `delete`, as the shim allocated it with `new`.
                unsafe { Tensor::from_ptr((*outputs.add(i)).cast()) }
            })
            .collect();
        // SAFETY: the array (not the tensors, now owned by `tensors`) came from the shim.
        unsafe { ffi::lt_aoti_free_outputs(outputs) };
        Ok(tensors)
    }

    fn batch_sizes(&self) -> BatchSizes {
        match self.package.batch {
            Batch::Static(n) => BatchSizes::Exactly(n),
            Batch::Dynamic { max: Some(max) } => BatchSizes::UpTo(max),
            Batch::Dynamic { max: None } | Batch::Unknown => BatchSizes::Any,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_of_reads_inductors_input_checks() {
        let static_src = "ss << \"input_handles[0]: unmatched dim value at 0, \"\n \
                          << \"expected: 2, \" << \"but got: \"";
        assert_eq!(batch_of(static_src), Batch::Static(2));
        let dynamic = "ss << \"input_handles[0]: dim value is too small at 0, \"\n<< \"expected \
                       it to be >= 2, \"\nss << \"input_handles[0]: dim value is too large at \
                       0, \"\n << \"expected to be <= 64, \"";
        assert_eq!(batch_of(dynamic), Batch::Dynamic { max: Some(64) });
        assert_eq!(batch_of(""), Batch::Dynamic { max: None });
    }

    #[test]
    fn unknown_isa_tokens_are_missing() {
        let package = Package {
            dir: PathBuf::new(),
            cpu_isa: "NO_SUCH_EXTENSION".into(),
            machine: std::env::consts::ARCH.into(),
            batch: Batch::Unknown,
            inputs: None,
        };
        let message = package.check_cpu().err().unwrap_or_default();
        assert!(message.contains("NO_SUCH_EXTENSION"), "{message}");
    }

    #[test]
    fn input_checks_are_read_and_compared_with_the_manifest() {
        let source = r#"
        ss << "input_handles[0]: unmatched dtype, "
           << "expected: " << arg6_1_expected_dtype << "(at::kFloat), "
        ss << "input_handles[0]: unmatched dim value at 1, "
           << "expected: 3, " << "but got: " << arg6_1_size[1]
        ss << "input_handles[0]: unmatched dim value at 2, "
           << "expected: 32, " << "but got: " << arg6_1_size[2]
        ss << "input_handles[0]: unmatched stride value at 0, "
        ss << "input_handles[0]: unmatched stride value at 3, "
        "#;
        let [check] = &InputCheck::all_of(source)[..] else {
            panic!("one input")
        };
        assert_eq!(check.rank, Some(4));
        assert_eq!(check.dims, vec![(1, 3), (2, 32)]);
        assert_eq!(check.dtype.as_deref(), Some("kFloat"));
        assert!(check.check(&[-1, 3, 32, 7], &[], DType::Float32).is_ok());
        let err = |shape: &[i64], dtype| check.check(shape, &[], dtype).unwrap_err();
        assert!(err(&[-1, 3, 32], DType::Float32).contains("4-dimensional"));
        assert!(err(&[-1, 3, -1, 7], DType::Float32).contains("size 32 in dimension 2"));
        assert!(err(&[-1, 3, 32, 7], DType::Int64).contains("kFloat inputs"));
    }

    #[test]
    fn every_input_and_its_bounded_dimensions_are_checked() {
        // A text model's: token ids and mask, any batch, up to 32 tokens.
        let source = r#"
        ss << "input_handles[0]: unmatched dtype, "
           << "expected: " << arg27_1_expected_dtype << "(at::kLong), "
        ss << "input_handles[0]: dim value is too large at 1, "
           << "expected to be <= 32, " << "but got: " << arg27_1_size[1] << "\n";
        ss << "input_handles[0]: unmatched stride value at 1, "
        ss << "input_handles[1]: unmatched dtype, "
           << "expected: " << arg28_1_expected_dtype << "(at::kFloat), "
        ss << "input_handles[1]: dim value is too large at 1, "
           << "expected to be <= 16, " << "but got: " << arg28_1_size[1] << "\n";
        "#;
        let checks = InputCheck::all_of(source);
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].bounds, vec![(1, 32)]);
        assert_eq!(checks[0].rank, Some(2));
        assert!(checks[0]
            .check(&[-1, -1], &[None, Some(32)], DType::Int64)
            .is_ok());
        assert!(checks[0].check(&[-1, 20], &[], DType::Int64).is_ok());
        let err = |check: &InputCheck, most: &[Option<usize>]| {
            check.check(&[-1, -1], most, DType::Int64).unwrap_err()
        };
        assert!(err(&checks[0], &[None, Some(33)]).contains("at most 32 in dimension 1"));
        assert!(err(&checks[0], &[]).contains("any size"));
        assert!(err(&checks[1], &[None, Some(16)]).contains("kFloat"));
    }
}
