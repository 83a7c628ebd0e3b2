//! Helpers for the kiln-wgpu tests: open wgpu:0 (skip loudly when there is no adapter unless
//! KILN_REQUIRE names wgpu), move f32/i32 data, small CPU oracles and the shared quant data.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use kiln_core::{Backend, BackendProvider, Buffer, DType, Probe, Shape};
use kiln_wgpu::{WgpuBackend, WgpuProvider};
use rand::{Rng, SeedableRng};

pub fn open() -> Option<Arc<WgpuBackend>> {
    match WgpuProvider.probe() {
        Probe::Found(_) => Some(Arc::new(WgpuBackend::open(0).unwrap())),
        Probe::NotFound(why) => {
            let req = std::env::var("KILN_REQUIRE").unwrap_or_default();
            assert!(
                !req.split(',').any(|s| s.trim() == "wgpu"),
                "wgpu required but not found: {why}"
            );
            eprintln!("SKIPPED: no wgpu adapter ({why})");
            None
        }
    }
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn randn(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn upload(be: &WgpuBackend, bytes: &[u8]) -> Buffer {
    let b = be.alloc(bytes.len()).unwrap();
    be.write(&b, 0, bytes).unwrap();
    b
}

/// A buffer of `n` f32 filled with NaN (outputs are poisoned so unwritten elements fail).
pub fn poisoned(be: &WgpuBackend, n: usize) -> Buffer {
    upload(be, &f32_bytes(&vec![f32::NAN; n]))
}

pub fn read_f32(be: &WgpuBackend, b: &Buffer, offset: usize, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; n * 4];
    be.read(b, offset, &mut bytes).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// |a − e| ≤ atol + rtol·|e| everywhere (NaN fails).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs();
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Normalized MSE Σ(a−e)² / Σe².
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let mut num = 0f64;
    let mut den = 0f64;
    for (g, w) in got.iter().zip(want) {
        let d = f64::from(*g) - f64::from(*w);
        num += if d.is_nan() { f64::INFINITY } else { d * d };
        den += f64::from(*w) * f64::from(*w);
    }
    num / den.max(1e-30)
}

/// The gguf-py vectors: `$KILN_QUANT_DATA`, else the copy in the repository
/// (core/tests/data/quant, what the CUDA tests and the GPU machine's runs read too).
pub fn quant_dir() -> PathBuf {
    match std::env::var_os("KILN_QUANT_DATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../core/tests/data/quant"),
    }
}

pub fn read_le_f32(path: &PathBuf) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// One test-vector set: (dtype, raw bytes [8, 512], dequantized f32, gemv x, gemv y,
/// row_abs_dot), or None when ../shared is absent.
pub struct QuantCase {
    pub dtype: DType,
    pub bin: Vec<u8>,
    pub deq: Vec<f32>,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub row_abs_dot: Vec<f64>,
}

/// The vectors of `d`; missing data is a failure, not a silent pass.
pub fn quant_case(d: DType) -> Option<QuantCase> {
    let c = quant_case_opt(d);
    assert!(
        c.is_some(),
        "no gguf-py vectors for {d} under {}",
        quant_dir().display()
    );
    c
}

fn quant_case_opt(d: DType) -> Option<QuantCase> {
    let dir = quant_dir();
    let name = d.name();
    let bin = std::fs::read(dir.join(format!("{name}.bin"))).ok();
    let bin = match bin {
        Some(b) => b,
        None if d == DType::F32 => {
            // gguf-py's vectors have no F32 set: use the F16 set's dequantized values.
            let deq = read_le_f32(&dir.join("F16.f32"));
            return Some(QuantCase {
                dtype: d,
                bin: f32_bytes(&deq),
                deq,
                x: read_le_f32(&dir.join("F16.gemv_x.f32")),
                y: read_le_f32(&dir.join("F16.gemv_y.f32")),
                row_abs_dot: row_abs_dot("F16")?,
            });
        }
        None => return None,
    };
    Some(QuantCase {
        dtype: d,
        bin,
        deq: read_le_f32(&dir.join(format!("{name}.f32"))),
        x: read_le_f32(&dir.join(format!("{name}.gemv_x.f32"))),
        y: read_le_f32(&dir.join(format!("{name}.gemv_y.f32"))),
        row_abs_dot: row_abs_dot(name)?,
    })
}

fn row_abs_dot(name: &str) -> Option<Vec<f64>> {
    let text = std::fs::read_to_string(quant_dir().join("manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let entries = v.get("entries")?;
    let e = match entries {
        serde_json::Value::Array(a) => a.iter().find(|e| e["type"] == name)?.clone(),
        serde_json::Value::Object(m) => m.get(name)?.clone(),
        _ => return None,
    };
    e.get("gemv_row_abs_dot")?
        .as_array()?
        .iter()
        .map(|x| x.as_f64())
        .collect()
}

pub fn shape2(a: usize, b: usize) -> Shape {
    Shape::d2(a, b)
}

/// x rounded to int8 per group of 16 as gemv_x8.wgsl does (CUDA's q8_group): d = max|x|/127
/// rounded up to 22 significant bits, q = clamp(round(x/d), ±127). Returns (d·q per element,
/// d per group).
pub fn round_x8(x: &[f32]) -> (Vec<f32>, Vec<f64>) {
    let mut xr = Vec::with_capacity(x.len());
    let mut ds = Vec::new();
    for g in x.chunks(16) {
        let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f32::from_bits(((amax / 127.0).to_bits() + 3) & !3);
        let id = if amax > 0.0 { 1.0 / d } else { 0.0 };
        for v in g {
            xr.push(d * (v * id).round_ties_even().clamp(-127.0, 127.0));
        }
        ds.push(f64::from(d));
    }
    (xr, ds)
}
