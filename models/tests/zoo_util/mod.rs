//! Helpers of the runtime tests: the zoo, its reference logits, and the backends to run on
//! (from the providers; `KILN_TEST_BACKENDS=reference,wgpu,cuda` narrows the list, absent
//! backends are reported as skipped by name).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_core::{Backend, BackendProvider, Probe, ReferenceProvider};

pub mod rounded;

pub fn zoo() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_ZOO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo"));
    dir.join("README.md").is_file().then_some(dir)
}

pub const MODELS: [&str; 7] = [
    "llama3", "qwen2", "qwen3", "mistral", "gemma3", "mixtral", "qwen3moe",
];

/// One reference case of a zoo model.
pub struct Case {
    pub ids: Vec<u32>,
    /// `[n, vocab]` row-major.
    pub logits: Vec<f32>,
    pub vocab: usize,
    pub greedy: Vec<u32>,
}

impl Case {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.vocab..(i + 1) * self.vocab]
    }
}

pub fn cases(dir: &Path) -> Vec<Case> {
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids: Vec<u32> = c["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let shape: Vec<usize> = c["logits_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let bytes = std::fs::read(dir.join(c["logits_file"].as_str().unwrap())).unwrap();
            let logits: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(logits.len(), shape[0] * shape[1]);
            assert_eq!(shape[0], ids.len());
            let greedy = c["greedy_continuation"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            Case {
                ids,
                logits,
                vocab: shape[1],
                greedy,
            }
        })
        .collect()
}

/// The formats a zoo model ships: (label, path).
pub fn formats(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut v = vec![("safetensors", dir.to_path_buf())];
    for (label, f) in [
        ("f16 gguf", "model-f16.gguf"),
        ("q8_0 gguf", "model-q8_0.gguf"),
    ] {
        if dir.join(f).is_file() {
            v.push((label, dir.join(f)));
        }
    }
    v
}

fn providers() -> Vec<Box<dyn BackendProvider>> {
    vec![
        Box::new(ReferenceProvider::default()),
        Box::new(kiln_wgpu::WgpuProvider),
        Box::new(kiln_cuda::CudaProvider),
    ]
}

/// (name, backend) for every backend to test; absent ones are printed as skipped.
pub fn backends() -> Vec<(String, Arc<dyn Backend>)> {
    let want: Option<Vec<String>> = std::env::var("KILN_TEST_BACKENDS").ok().map(|s| {
        s.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    });
    let mut out = Vec::new();
    for p in providers() {
        let name = p.kind().name().to_string();
        if want.as_ref().is_some_and(|w| !w.contains(&name)) {
            continue;
        }
        let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.probe()));
        match probe {
            Ok(Probe::Found(d)) if !d.is_empty() => match p.open(d[0].id.index) {
                Ok(b) => out.push((format!("{}", d[0].id), b)),
                Err(e) => println!("skipped: {name}: cannot open: {e}"),
            },
            Ok(Probe::Found(_)) => println!("skipped: {name}: no devices"),
            Ok(Probe::NotFound(why)) => println!("skipped: {name}: not found: {why}"),
            Err(_) => println!("skipped: {name}: the provider panicked while probing"),
        }
    }
    out
}

/// [`backends`] without CPU Vulkan adapters (lavapipe) unless KILN_TEST_BACKENDS names wgpu:
/// real models take minutes per step there.
pub fn gpu_or_reference_backends() -> Vec<(String, Arc<dyn Backend>)> {
    let explicit = std::env::var("KILN_TEST_BACKENDS").is_ok_and(|s| s.contains("wgpu"));
    backends()
        .into_iter()
        .filter(|(name, b)| {
            let keep = explicit
                || b.id().kind != kiln_core::BackendKind::Wgpu
                || kiln_models::runtime::is_gpu_adapter(b.info());
            if !keep {
                println!(
                    "skipped: {name} ({}) is a CPU adapter; set KILN_TEST_BACKENDS=wgpu to run it",
                    b.info().name
                );
            }
            keep
        })
        .collect()
}

/// max |a − b|.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
