//! File formats: GGUF, safetensors (single or sharded) and Hugging Face model directories,
//! plus the byte storage they share (a read-only memory map, or bytes owned in memory) and
//! format detection.

pub mod gguf;
pub mod hf_dir;
pub mod safetensors;

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use crate::error::{ModelError, Result};

/// The bytes of a model file: a read-only memory map, or a buffer given by the caller
/// (`from_bytes`, used by tests and fuzz targets).
pub(crate) enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// Map `path` read-only. An empty file gives empty bytes (mmap of length 0 is not allowed).
pub(crate) fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if len == 0 {
        return Ok(Bytes::Owned(Vec::new()));
    }
    if usize::try_from(len).is_err() {
        return Err(ModelError::format(
            &path.display().to_string(),
            format!("file size {len} does not fit this platform's address space"),
        ));
    }
    // SAFETY: the map is read-only and lives inside the reader that owns it. Memory-mapping is
    // only unsound if another process truncates or rewrites the file while it is mapped; like
    // llama.cpp and the safetensors crate, kiln requires that model files are not modified while
    // a model is open. Every offset into the map is validated against its length before use.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    Ok(Bytes::Mapped(map))
}

/// What a path holds, as far as kiln's readers are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// A GGUF file (magic `GGUF`).
    Gguf,
    /// A single `.safetensors` file.
    Safetensors,
    /// A `model.safetensors.index.json` naming shards.
    SafetensorsIndex,
    /// A Hugging Face model directory (`config.json` + safetensors).
    HfDir,
}

impl ModelFormat {
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::SafetensorsIndex => "safetensors-index",
            ModelFormat::HfDir => "hf-dir",
        }
    }
}

/// Detect the format of `path` by its magic bytes, then its name: a directory with a
/// `config.json` is an HF directory; a file starting with `GGUF` or named `*.gguf` is GGUF; a
/// file whose name ends in `.index.json` is a shard index; a file ending in `.safetensors`, or whose first 8
/// bytes are a little-endian header length followed by `{`, is safetensors.
pub fn detect(path: &Path) -> Result<ModelFormat> {
    let label = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if meta.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelFormat::HfDir);
        }
        return Err(ModelError::format(
            &label,
            "a directory without config.json is not a Hugging Face model directory",
        ));
    }
    let mut head = [0u8; 9];
    let n = read_head(path, &mut head)?;
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        return Ok(ModelFormat::Gguf);
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".gguf") {
        // Not GGUF magic, but named like it: let the GGUF reader say what is wrong.
        return Ok(ModelFormat::Gguf);
    }
    if name.ends_with(".index.json") {
        return Ok(ModelFormat::SafetensorsIndex);
    }
    if name.ends_with(".safetensors") || (n == 9 && head[8] == b'{') {
        return Ok(ModelFormat::Safetensors);
    }
    Err(ModelError::format(
        &label,
        format!(
            "unknown format: the file starts with {:02x?}, which is neither GGUF (magic 'GGUF') \
             nor safetensors (8-byte header length then '{{')",
            head
        ),
    ))
}

fn read_head(path: &Path, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ModelError::io(path, e)),
        }
    }
    Ok(got)
}
