//! Helpers shared by the reader tests: the zoo location, hand-built GGUF and safetensors bytes,
//! and scratch directories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The tiny-model zoo, or `None` (the caller prints "skipped: zoo not found").
pub fn zoo() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_ZOO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo"));
    dir.join("README.md").is_file().then_some(dir)
}

/// Model directories of the zoo, sorted.
pub fn zoo_models(zoo: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(zoo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kiln-models")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---- GGUF encoding -------------------------------------------------------------------------

pub fn s(out: &mut Vec<u8>, v: &str) {
    out.extend((v.len() as u64).to_le_bytes());
    out.extend(v.as_bytes());
}

/// A kv pair: key, value type id, encoded value.
pub fn kv(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    s(&mut o, key);
    o.extend(ty.to_le_bytes());
    o.extend(value);
    o
}

pub fn kv_u32(key: &str, v: u32) -> Vec<u8> {
    kv(key, 4, &v.to_le_bytes())
}

pub fn kv_str(key: &str, v: &str) -> Vec<u8> {
    let mut val = Vec::new();
    s(&mut val, v);
    kv(key, 8, &val)
}

/// An encoded array value (without the outer kv type id): element type, count, payload.
pub fn arr(elem_ty: u32, n: u64, payload: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    o.extend(elem_ty.to_le_bytes());
    o.extend(n.to_le_bytes());
    o.extend(payload);
    o
}

/// A tensor info: name, ne (innermost first), ggml type, offset.
pub fn tinfo(name: &str, ne: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut o = Vec::new();
    s(&mut o, name);
    o.extend((ne.len() as u32).to_le_bytes());
    for d in ne {
        o.extend(d.to_le_bytes());
    }
    o.extend(ty.to_le_bytes());
    o.extend(offset.to_le_bytes());
    o
}

/// A whole GGUF file: header, kvs, tensor infos, padding to `align`, data.
pub fn gguf(
    version: u32,
    kvs: &[Vec<u8>],
    infos: &[Vec<u8>],
    align: usize,
    data: &[u8],
) -> Vec<u8> {
    gguf_counts(
        version,
        kvs.len() as u64,
        infos.len() as u64,
        kvs,
        infos,
        align,
        data,
    )
}

pub fn gguf_counts(
    version: u32,
    n_kv: u64,
    n_tensors: u64,
    kvs: &[Vec<u8>],
    infos: &[Vec<u8>],
    align: usize,
    data: &[u8],
) -> Vec<u8> {
    let mut o = b"GGUF".to_vec();
    o.extend(version.to_le_bytes());
    o.extend(n_tensors.to_le_bytes());
    o.extend(n_kv.to_le_bytes());
    for k in kvs {
        o.extend(k);
    }
    for t in infos {
        o.extend(t);
    }
    while !o.len().is_multiple_of(align) {
        o.push(0);
    }
    o.extend(data);
    o
}

/// f32 values as little-endian bytes.
pub fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---- safetensors encoding ------------------------------------------------------------------

/// A safetensors file from a JSON header and the data section.
pub fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut o = (header.len() as u64).to_le_bytes().to_vec();
    o.extend(header.as_bytes());
    o.extend(data);
    o
}

/// Assert `r` is an error whose message contains every one of `parts`; returns the message.
#[track_caller]
pub fn err_has<T: std::fmt::Debug>(
    r: Result<T, kiln_models::ModelError>,
    parts: &[&str],
) -> String {
    let msg = match r {
        Ok(v) => panic!("expected an error containing {parts:?}, got Ok({v:?})"),
        Err(e) => e.to_string(),
    };
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not contain {p:?}");
    }
    msg
}
