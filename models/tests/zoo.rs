//! Every file of the tiny-model zoo reads without error, and a few facts of MODELS.md hold.
//! Skipped (with a message) when ../shared/testdata/zoo is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use half::{bf16, f16};
use kiln_core::DType;
use kiln_models::{GgufFile, HfDir, ModelFormat, SafetensorsFile, detect};

macro_rules! zoo_or_skip {
    () => {
        match zoo() {
            Some(z) => z,
            None => {
                println!("skipped: zoo not found");
                return;
            }
        }
    };
}

#[test]
fn every_zoo_file_reads() {
    let zoo = zoo_or_skip!();
    let mut n_gguf = 0;
    let mut n_st = 0;
    for dir in zoo_models(&zoo) {
        let hf = HfDir::open(&dir).unwrap();
        assert!(hf.config().get("model_type").is_some(), "{dir:?}");
        assert!(hf.tokenizer_json().is_some() && hf.chat_template().unwrap().is_some());
        assert_eq!(detect(&dir).unwrap(), ModelFormat::HfDir);
        for (_, t) in hf.weights().tensors() {
            let h = hf.weights().tensor(&t.name).unwrap();
            assert_eq!(h.shape.dims(), &t.shape[..]);
            assert_eq!(h.dtype, DType::BF16, "zoo safetensors are bf16");
            n_st += 1;
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "gguf") {
                assert_eq!(detect(&p).unwrap(), ModelFormat::Gguf);
                let g = GgufFile::open(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(g.version() == 3 || g.version() == 2);
                g.architecture().unwrap();
                assert!(!g.tensors().is_empty());
                for t in g.tensors() {
                    let h = g.tensor(&t.name).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(Some(h.data.len()), t.size);
                    assert_eq!(t.data_start % g.alignment(), 0);
                    n_gguf += 1;
                }
            }
        }
    }
    println!("read {n_gguf} GGUF tensors and {n_st} safetensors tensors");
    assert!(n_gguf > 100 && n_st > 50);
}

#[test]
fn models_md_facts() {
    let zoo = zoo_or_skip!();
    // §2: attn_q.weight has ne = [128, 256], i.e. row-major [256, 128], like HF q_proj.
    let g = GgufFile::open(zoo.join("llama3/model-f16.gguf")).unwrap();
    let q = g.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.ne, vec![128, 256]);
    assert_eq!(q.shape.dims(), &[256, 128]);
    assert_eq!(q.dtype, Some(DType::F16));
    let st = SafetensorsFile::open(zoo.join("llama3/model.safetensors")).unwrap();
    assert_eq!(
        st.tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .shape
            .dims(),
        &[256, 128]
    );
    // §2: 1-D and norm tensors are F32
    assert_eq!(
        g.tensor_info("output_norm.weight").unwrap().dtype,
        Some(DType::F32)
    );
    // architectures
    for (m, arch) in [
        ("llama3", "llama"),
        ("mistral", "llama"),
        ("mixtral", "llama"),
        ("qwen3", "qwen3"),
        ("qwen3moe", "qwen3moe"),
        ("gemma3", "gemma3"),
    ] {
        let g = GgufFile::open(zoo.join(m).join("model-q8_0.gguf")).unwrap();
        assert_eq!(g.architecture().unwrap(), arch, "{m}");
    }
    // gemma3 is tied: no output.weight; its window pattern reads as [true, false]
    let g = GgufFile::open(zoo.join("gemma3/model-f16.gguf")).unwrap();
    assert!(g.tensor_info("output.weight").is_none());
    assert!(g.tensor("output.weight").is_err());
    let pat = g
        .get_arr("gemma3.attention.sliding_window_pattern")
        .unwrap();
    assert_eq!(pat.as_bools().unwrap(), &[true, false]);
    assert_eq!(
        g.get_f32("gemma3.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-6
    );
    // mistral carries llama.attention.sliding_window = 16
    let g = GgufFile::open(zoo.join("mistral/model-f16.gguf")).unwrap();
    assert_eq!(g.get_u32("llama.attention.sliding_window").unwrap(), 16);
    // §6.2: the zoo GGUFs have no add_bos key
    assert!(
        g.opt_bool("tokenizer.ggml.add_bos_token")
            .unwrap()
            .is_none()
    );
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.get_arr("tokenizer.ggml.tokens").unwrap().len(), 512);
}

/// The f16 GGUF embedding equals the bf16 safetensors one (README: except below f16's normal
/// range), and the q8_0 one dequantizes to within half a quantization step of it (plus the
/// rounding of the f16 scale). This checks
/// data offsets and row-major order end to end.
#[test]
fn gguf_data_matches_safetensors() {
    let zoo = zoo_or_skip!();
    let mut checked = 0;
    for m in [
        "llama3", "mistral", "mixtral", "qwen3", "qwen3moe", "gemma3",
    ] {
        let st = SafetensorsFile::open(zoo.join(m).join("model.safetensors")).unwrap();
        let emb = st.tensor("model.embed_tokens.weight").unwrap();
        let want: Vec<f32> = emb
            .data
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let g = GgufFile::open(zoo.join(m).join("model-f16.gguf")).unwrap();
        let t = g.tensor("token_embd.weight").unwrap();
        assert_eq!(t.shape.dims(), emb.shape.dims(), "{m}");
        let got: Vec<f32> = t
            .data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                a == b || b.abs() < 6.2e-5,
                "{m} token_embd[{i}]: f16 {a} vs bf16 {b}"
            );
        }
        // q8_0: blocks of (f16 scale, 32 × i8)
        let g = GgufFile::open(zoo.join(m).join("model-q8_0.gguf")).unwrap();
        let q = g.tensor("token_embd.weight").unwrap();
        assert_eq!(q.dtype, DType::Q8_0);
        for (bi, block) in q.data.chunks_exact(34).enumerate() {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            for j in 0..32 {
                let v = d * (block[2 + j] as i8) as f32;
                let e = want[bi * 32 + j];
                // half a step, plus 127 × the f16 rounding of the stored scale (2^-11 relative)
                let tol = d * (0.5 + 127.0 / 2048.0) + 1e-6;
                assert!((v - e).abs() <= tol, "{m} q8_0 block {bi}[{j}]: {v} vs {e}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}
