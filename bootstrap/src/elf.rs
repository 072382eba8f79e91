//! What a shared library asks of the dynamic loader, read from its ELF headers (nothing is
//! loaded): its `DT_NEEDED` names, its `DT_RPATH`/`DT_RUNPATH` directories and where its sections
//! lie in the file. 64-bit little-endian objects only (x86-64, aarch64); anything else is an
//! error, and the launcher then leaves the search to the loader. The same reading as
//! `python/lambdatorch/_elf.py`, for the Python handler.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const DT_NULL: i64 = 0;
const DT_NEEDED: i64 = 1;
const DT_STRTAB: i64 = 5;
const DT_RPATH: i64 = 15;
const DT_RUNPATH: i64 = 29;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const SHT_NOBITS: u32 = 8;

/// The dynamic-linking facts of one library.
#[derive(Debug, Default)]
pub struct Dynamic {
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` if present (searched after `LD_LIBRARY_PATH`), else `DT_RPATH` (before it),
    /// with `$ORIGIN` expanded.
    pub search: Vec<PathBuf>,
    /// Whether `search` is a `DT_RUNPATH`.
    pub runpath: bool,
    /// Section name -> (file offset, size), for sections with bytes in the file.
    pub sections: BTreeMap<String, (u64, u64)>,
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// Reads `path`'s dynamic section and section headers.
pub fn read(path: &Path) -> io::Result<Dynamic> {
    let file = File::open(path)?;
    let header = read_at(&file, 0, 64)?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(invalid(path, "not a 64-bit little-endian ELF object"));
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        usize::from(u16_at(&header, 54)),
        usize::from(u16_at(&header, 56)),
    );
    if phentsize < 56 {
        return Err(invalid(path, "program headers too small"));
    }
    let table = read_at(&file, phoff, phentsize * phnum)?;
    let mut loads = Vec::new(); // (vaddr, offset, filesz)
    let mut dynamic = None;
    for row in table.chunks_exact(phentsize) {
        let (kind, offset, vaddr, filesz) = (
            u32_at(row, 0),
            u64_at(row, 8),
            u64_at(row, 16),
            u64_at(row, 32),
        );
        if kind == PT_LOAD {
            loads.push((vaddr, offset, filesz));
        } else if kind == PT_DYNAMIC {
            dynamic = Some((offset, filesz));
        }
    }
    let (dyn_offset, dyn_size) = dynamic.ok_or_else(|| invalid(path, "no dynamic section"))?;
    let raw = read_at(&file, dyn_offset, usize::try_from(dyn_size).unwrap_or(0))?;
    let entries: Vec<(i64, u64)> = raw
        .chunks_exact(16)
        .map(|e| (u64_at(e, 0) as i64, u64_at(e, 8)))
        .take_while(|&(tag, _)| tag != DT_NULL)
        .collect();
    let strtab = entries
        .iter()
        .find(|&&(tag, _)| tag == DT_STRTAB)
        .map(|&(_, value)| value)
        .ok_or_else(|| invalid(path, "no dynamic string table"))?;
    let strings_at = loads
        .iter()
        .find(|&&(vaddr, _, size)| vaddr <= strtab && strtab < vaddr + size)
        .map(|&(vaddr, offset, _)| offset + strtab - vaddr)
        .ok_or_else(|| invalid(path, "string table outside the segments"))?;
    let string = |index: u64| -> io::Result<String> {
        let mut bytes = Vec::new();
        loop {
            let mut chunk = [0u8; 256];
            let n = file.read_at(&mut chunk, strings_at + index + bytes.len() as u64)?;
            if n == 0 {
                break;
            }
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                bytes.extend_from_slice(&chunk[..end]);
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(bytes).map_err(|_| invalid(path, "a name is not UTF-8"))
    };
    let mut out = Dynamic::default();
    let (mut rpath, mut runpath) = (None, None);
    for &(tag, value) in &entries {
        match tag {
            DT_NEEDED => out.needed.push(string(value)?),
            DT_RPATH => rpath = Some(string(value)?),
            DT_RUNPATH => runpath = Some(string(value)?),
            _ => {}
        }
    }
    out.runpath = runpath.is_some();
    let origin = path.parent().unwrap_or(Path::new("/")).to_string_lossy();
    out.search = runpath
        .or(rpath)
        .unwrap_or_default()
        .split(':')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            PathBuf::from(
                entry
                    .replace("${ORIGIN}", &origin)
                    .replace("$ORIGIN", &origin),
            )
        })
        .collect();
    out.sections = sections(&file, &header)?;
    Ok(out)
}

fn sections(file: &File, header: &[u8]) -> io::Result<BTreeMap<String, (u64, u64)>> {
    let shoff = u64_at(header, 40);
    let (shentsize, shnum, shstrndx) = (
        usize::from(u16_at(header, 58)),
        usize::from(u16_at(header, 60)),
        usize::from(u16_at(header, 62)),
    );
    let mut found = BTreeMap::new();
    if shoff == 0 || shnum == 0 || shstrndx >= shnum || shentsize < 64 {
        return Ok(found);
    }
    let table = read_at(file, shoff, shentsize * shnum)?;
    let rows: Vec<(u32, u32, u64, u64)> = table
        .chunks_exact(shentsize)
        .map(|r| (u32_at(r, 0), u32_at(r, 4), u64_at(r, 24), u64_at(r, 32)))
        .collect();
    let (_, _, names_at, names_size) = rows[shstrndx];
    let names = read_at(file, names_at, usize::try_from(names_size).unwrap_or(0))?;
    for (name, kind, offset, size) in rows {
        if kind == SHT_NOBITS || size == 0 {
            continue;
        }
        let start = name as usize;
        let Some(rest) = names.get(start..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        found.insert(
            String::from_utf8_lossy(&rest[..end]).into_owned(),
            (offset, size),
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_test_binary() -> io::Result<()> {
        let exe = std::env::current_exe()?;
        let info = read(&exe)?;
        assert!(
            info.needed.iter().any(|n| n.starts_with("libc.so")),
            "{:?}",
            info.needed
        );
        assert!(
            info.sections.contains_key(".dynsym"),
            "{:?}",
            info.sections.keys()
        );
        Ok(())
    }

    #[test]
    fn refuses_what_is_not_elf() {
        let path = std::env::temp_dir().join(format!("lt-not-elf-{}", std::process::id()));
        std::fs::write(&path, [0u8; 128]).ok();
        assert!(read(&path).is_err());
        std::fs::remove_file(&path).ok();
    }
}
