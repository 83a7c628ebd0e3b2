//! The tokenizer.json path at real scale: the qwen2.5-coder GGUF vocabulary rewritten as a
//! Hugging Face tokenizer.json the way MODELS.md §6.6 describes (BPE with the GGUF merges,
//! Split(qwen2 regex, Isolated) + ByteLevel, control and EOG-named tokens as special added
//! tokens, user-defined ones as non-special), then run through the `tokenizers` crate (built
//! with fancy-regex) against llama.cpp's ids for all 17 probes × 3 variants.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use kiln_models::{GgufFile, GgufVocab, Tokenizer, catalog};
use serde_json::{Value, json};

const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const EOG_NAMES: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
    "<|eot_id|>",
    "<|end|>",
];

#[test]
fn qwen_vocab_as_tokenizer_json_matches_llama_cpp() {
    let require = std::env::var("KILN_REQUIRE_MODELS").is_ok_and(|v| v == "1");
    let path = match catalog::resolve("qwen2.5-coder-0.5b") {
        Ok(p) => p,
        Err(e) if require => panic!("KILN_REQUIRE_MODELS=1 and qwen2.5-coder-0.5b is missing: {e}"),
        Err(e) => {
            println!("skipped: qwen2.5-coder-0.5b not available ({e})");
            return;
        }
    };
    let v = GgufVocab::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let types = v.token_types.clone().unwrap();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in v.tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
        let special = types[i] == 3 || EOG_NAMES.contains(&t.as_str());
        if special || types[i] == 4 {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special,
            }));
        }
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": v.merges.clone().unwrap()},
    });
    let dir = std::env::temp_dir().join(format!("kiln-hf-qwen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokenizer.json");
    std::fs::write(&file, serde_json::to_vec(&tj).unwrap()).unwrap();
    let config = json!({"bos_token": null, "eos_token": "<|im_end|>"});
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_tokenizer_json(&file, Some(&config), None).unwrap();
    println!(
        "tokenizer.json loaded in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);

    let refs = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/real/qwen2.5-coder-0.5b.json");
    let r: Value = serde_json::from_slice(&std::fs::read(refs).unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    let (mut ok, mut total) = (0, 0);
    let mut failures = Vec::new();
    for probe in r["tokenizer_probes"].as_array().unwrap() {
        let text = probe["text"].as_str().unwrap();
        for var in probe["variants"].as_array().unwrap() {
            let req = &var["tokenize_request"];
            let want: Vec<u32> = var["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tok
                .encode(
                    text,
                    req["add_special"].as_bool().unwrap(),
                    req["parse_special"].as_bool().unwrap(),
                )
                .unwrap();
            total += 1;
            if got == want {
                ok += 1;
                assert_eq!(
                    tok.decode(&got).unwrap(),
                    var["detokenized"].as_str().unwrap()
                );
            } else {
                failures.push(format!(
                    "{} / {}: got {got:?}, want {want:?}",
                    probe["name"], var["variant"]
                ));
            }
        }
    }
    println!(
        "qwen2.5-coder-0.5b as tokenizer.json: {ok}/{total} probe variants give llama.cpp's ids ({:.2} s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(tok.eos_id(), Some(151_645));
    assert!(tok.is_eog(151_645) && tok.is_eog(151_643));
}
