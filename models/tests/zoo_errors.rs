//! Bad models and bad requests are errors that name the file, key or tensor — never panics:
//! an unknown architecture (config.json and GGUF), a missing tensor, a shape that does not
//! match the config, a token id outside the vocabulary, a full context.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod zoo_util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_core::{Backend, ReferenceBackend};
use kiln_models::runtime::SeqInput;
use kiln_models::{LoadOptions, Model, Runtime, RuntimeOptions};
use zoo_util::zoo;

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kiln-runtime")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn backend() -> Arc<dyn Backend> {
    Arc::new(ReferenceBackend::new(0))
}

fn load_err(path: &Path) -> String {
    match Model::load(path.to_str().unwrap(), backend(), &LoadOptions::default()) {
        Ok(m) => panic!("{path:?} loaded: {m:?}"),
        Err(e) => e.to_string(),
    }
}

/// A copy of a zoo HF directory with config.json edited by `f`.
fn hf_copy(zoo: &Path, model: &str, name: &str, f: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = zoo.join(model);
    let dst = scratch(name);
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(file), dst.join(file)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(dst.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    dst
}

/// A copy of a zoo GGUF with the first occurrence of `from` replaced by `to` (same length).
fn gguf_patch(zoo: &Path, model: &str, name: &str, from: &[u8], to: &[u8]) -> PathBuf {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(zoo.join(model).join("model-f16.gguf")).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    bytes[at..at + to.len()].copy_from_slice(to);
    let p = scratch(name).join("model.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_models_are_named_errors() {
    let Some(zoo) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let d = hf_copy(&zoo, "llama3", "unknown-arch", |c| {
        c["model_type"] = "falcon9".into()
    });
    let e = load_err(&d);
    assert!(
        e.contains("config.json") && e.contains("unknown architecture 'falcon9'"),
        "{e}"
    );

    let p = gguf_patch(
        &zoo,
        "qwen3",
        "unknown-arch-gguf",
        b"\x05\x00\x00\x00\x00\x00\x00\x00qwen3",
        b"\x05\x00\x00\x00\x00\x00\x00\x00qwen9",
    );
    let e = load_err(&p);
    assert!(
        e.contains("model.gguf") && e.contains("unknown architecture 'qwen9'"),
        "{e}"
    );

    let p = gguf_patch(
        &zoo,
        "mistral",
        "missing-tensor",
        b"blk.1.ffn_up.weight",
        b"blk.1.ffn_uq.weight",
    );
    let e = load_err(&p);
    assert!(
        e.contains("model.gguf") && e.contains("no tensor named 'blk.1.ffn_up.weight'"),
        "{e}"
    );

    let d = hf_copy(&zoo, "qwen3", "shape-mismatch", |c| {
        c["intermediate_size"] = 200.into()
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors")
            && e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[200, 128]"),
        "{e}"
    );

    let d = hf_copy(&zoo, "gemma3", "bad-heads", |c| {
        c["num_key_value_heads"] = 3.into()
    });
    let e = load_err(&d);
    assert!(
        e.contains("config.json") && e.contains("num_key_value_heads"),
        "{e}"
    );

    let d = hf_copy(&zoo, "llama3", "rope-yarn", |c| {
        c["rope_parameters"]["rope_type"] = "yarn".into()
    });
    let e = load_err(&d);
    assert!(e.contains("rope_type") && e.contains("yarn"), "{e}");
}

#[test]
fn bad_requests_are_errors() {
    let Some(zoo) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let m = Model::load(
        zoo.join("llama3").to_str().unwrap(),
        backend(),
        &LoadOptions::default(),
    )
    .unwrap();
    let mut rt = Runtime::new(
        &m,
        RuntimeOptions {
            context: Some(20),
            chunk: 8,
            ..RuntimeOptions::default()
        },
    )
    .unwrap();
    let s = rt.add_sequence();
    let e = rt
        .step(&[SeqInput {
            seq: s,
            tokens: &[1, 512],
        }])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token id 512") && e.contains("512 tokens"),
        "{e}"
    );
    let e = rt
        .step(&[SeqInput {
            seq: s,
            tokens: &[1; 9],
        }])
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 8 tokens"), "{e}");
    for _ in 0..2 {
        rt.step(&[SeqInput {
            seq: s,
            tokens: &[1; 8],
        }])
        .unwrap();
    }
    let e = rt
        .step(&[SeqInput {
            seq: s,
            tokens: &[1; 5],
        }])
        .unwrap_err()
        .to_string();
    assert!(e.contains("context full"), "{e}");
    // the failed steps left the sequence as it was
    assert_eq!(rt.seq_len(s).unwrap(), 16);
    rt.step(&[SeqInput {
        seq: s,
        tokens: &[1; 4],
    }])
    .unwrap();
    let e = rt
        .step(&[
            SeqInput {
                seq: s,
                tokens: &[1, 2],
            },
            SeqInput {
                seq: s,
                tokens: &[3],
            },
        ])
        .unwrap_err()
        .to_string();
    assert!(e.contains("1..=1 sequences") || e.contains("twice"), "{e}");
}
