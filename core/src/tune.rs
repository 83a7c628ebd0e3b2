//! Persisted tuning results, one JSON file per device under `$KILN_CACHE_DIR/tune/` (default
//! `$XDG_CACHE_HOME/kiln/tune` or `~/.cache/kiln/tune`). Backends store measured decisions here
//! (e.g. the row count where the quantized GEMV/GEMM hands over to dequantize + dense GEMM, per
//! dtype and shape) so a device is measured once, never guessed by a constant.
//!
//! A missing or unreadable file is an empty cache (with a warning for a corrupt one); writes go
//! to a temporary file renamed into place, so a crash never leaves half a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

pub struct TuneCache {
    path: PathBuf,
    entries: BTreeMap<String, Value>,
}

/// The cache root: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("kiln");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("kiln")
}

/// A file-name-safe key from a device description (`NVIDIA H200 sm_90` → `NVIDIA_H200_sm_90`).
pub fn device_key(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("__")
}

impl TuneCache {
    /// Open (or start) the cache of one device.
    pub fn open(device_key: &str) -> TuneCache {
        Self::open_at(&cache_root().join("tune").join(format!("{device_key}.json")))
    }

    pub fn open_at(path: &Path) -> TuneCache {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!(
                    "kiln: ignoring corrupt tuning cache {}: {e}",
                    path.display()
                );
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        TuneCache {
            path: path.to_path_buf(),
            entries,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    pub fn entries(&self) -> &BTreeMap<String, Value> {
        &self.entries
    }

    /// Record a result and persist the whole file.
    pub fn insert(&mut self, key: &str, value: Value) -> Result<()> {
        self.entries.insert(key.to_string(), value);
        self.save()
    }

    fn save(&self) -> Result<()> {
        let io = |e: std::io::Error| Error::Io {
            path: self.path.display().to_string(),
            source: e,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self
            .path
            .with_extension(format!("json.tmp{}", std::process::id()));
        let text = serde_json::to_vec_pretty(&self.entries)
            .map_err(|e| Error::Invalid(format!("tuning cache {}: {e}", self.path.display())))?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_survives_corruption() {
        let dir = std::env::temp_dir().join(format!("kiln-tune-test-{}", std::process::id()));
        let path = dir.join("dev.json");
        let mut c = TuneCache::open_at(&path);
        assert!(c.get("q4_k/4096x4096").is_none());
        c.insert("q4_k/4096x4096", serde_json::json!({"max_fused_rows": 24}))
            .unwrap();
        let c2 = TuneCache::open_at(&path);
        assert_eq!(c2.get("q4_k/4096x4096").unwrap()["max_fused_rows"], 24);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(TuneCache::open_at(&path).entries().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(device_key(&["NVIDIA H200", "sm_90"]), "NVIDIA_H200__sm_90");
    }
}
