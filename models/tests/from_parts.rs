//! `Model::from_parts`: a model built from in-memory tensors behaves exactly as the same
//! tensors loaded from a file, and bad parts are errors that name the tensor.
//! Uses the zoo's llama3 (HF safetensors); skipped with a message when the zoo is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod zoo_util;

use std::sync::Arc;

use kiln_core::{Backend, DType, HostTensor, ReferenceProvider, Shape};
use kiln_models::runtime::{HostTensors, SeqInput};
use kiln_models::{
    LoadOptions, Model, ModelConfig, ModelError, Runtime, RuntimeOptions, SafetensorsFile,
    Tokenizer,
};

fn reference() -> Arc<dyn Backend> {
    use kiln_core::BackendProvider;
    ReferenceProvider::default().open(0).unwrap()
}

struct Zoo {
    dir: std::path::PathBuf,
    file: SafetensorsFile,
    config: ModelConfig,
}

fn llama3() -> Option<Zoo> {
    let dir = zoo_util::zoo()?.join("llama3");
    let file = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let config = ModelConfig::from_hf(&json, "llama3/config.json").unwrap();
    Some(Zoo { dir, file, config })
}

fn tensors(file: &SafetensorsFile) -> HostTensors<'_> {
    HostTensors::from_pairs(
        "memory:llama3",
        file.tensors()
            .iter()
            .map(|t| (t.name.clone(), file.tensor(&t.name).unwrap())),
    )
}

/// Logits of every position of `ids` (one prefill step, f32 KV cache).
fn logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut rt = Runtime::new(
        model,
        RuntimeOptions {
            context: Some(64),
            all_logits: true,
            kv_dtype: DType::F32,
            ..RuntimeOptions::default()
        },
    )
    .unwrap();
    let s = rt.add_sequence();
    rt.step(&[SeqInput {
        seq: s,
        tokens: ids,
    }])
    .unwrap()
    .data
    .to_vec()
}

#[test]
fn from_parts_matches_the_loaded_file() {
    let Some(z) = llama3() else {
        println!("skipped: zoo not found");
        return;
    };
    let be = reference();
    let loaded = Model::load(z.dir.to_str().unwrap(), be.clone(), &LoadOptions::default()).unwrap();
    let parts = tensors(&z.file);
    let tok = Tokenizer::from_hf_dir(&z.dir).unwrap();
    let built = Model::from_parts(z.config.clone(), &parts, tok, be).unwrap();
    assert_eq!(built.vocab_size(), 512, "vocab comes from the embedding");
    assert_eq!(built.config().origin, "memory:llama3");
    assert_eq!(built.weights().bytes, loaded.weights().bytes);
    assert!(built.chat_template().is_none());
    let ids = [1u32, 17, 300, 42, 99, 5, 511, 7];
    let a = logits(&loaded, &ids);
    let b = logits(&built, &ids);
    assert_eq!(a.len(), ids.len() * 512);
    assert!(a.iter().all(|x| x.is_finite()));
    // Same tensors, same backend, same ops: bit-identical.
    assert_eq!(a, b);
}

#[test]
fn from_parts_missing_tensor_is_named() {
    let Some(z) = llama3() else {
        println!("skipped: zoo not found");
        return;
    };
    let mut pairs: Vec<_> = z
        .file
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), z.file.tensor(&t.name).unwrap()))
        .collect();
    pairs.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    let parts = HostTensors::from_pairs("memory:llama3", pairs);
    let tok = Tokenizer::from_hf_dir(&z.dir).unwrap();
    let err = Model::from_parts(z.config.clone(), &parts, tok, reference()).unwrap_err();
    match &err {
        ModelError::NoTensor { file, name } => {
            assert_eq!(file, "memory:llama3");
            assert_eq!(name, "model.layers.1.mlp.up_proj.weight");
        }
        other => panic!("expected NoTensor, got {other}"),
    }
}

#[test]
fn from_parts_wrong_shape_is_named() {
    let Some(z) = llama3() else {
        println!("skipped: zoo not found");
        return;
    };
    let mut parts = tensors(&z.file);
    // q_proj is [4·64, 128]; give it [128, 256] (same byte count, wrong shape).
    let q = *parts.get("model.layers.0.self_attn.q_proj.weight").unwrap();
    let bad = HostTensor::new(q.dtype, Shape::d2(128, 256), q.data).unwrap();
    parts.insert("model.layers.0.self_attn.q_proj.weight", bad);
    let tok = Tokenizer::from_hf_dir(&z.dir).unwrap();
    let err = Model::from_parts(z.config.clone(), &parts, tok, reference())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.weight") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn from_parts_rejects_an_invalid_config() {
    let Some(z) = llama3() else {
        println!("skipped: zoo not found");
        return;
    };
    let parts = tensors(&z.file);
    let cfg = ModelConfig {
        n_kv_heads: 3,
        ..z.config.clone()
    };
    let tok = Tokenizer::from_hf_dir(&z.dir).unwrap();
    let err = Model::from_parts(cfg, &parts, tok, reference())
        .unwrap_err()
        .to_string();
    assert!(err.contains("kv heads"), "{err}");
}
