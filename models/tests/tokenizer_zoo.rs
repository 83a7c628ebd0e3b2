//! Zoo tokenizer probes (shared/testdata/zoo/*/reference.json `tokenizer_probes`): every probe
//! through the tokenizer.json path (tokenizers crate) and through the GGUF-metadata path (kiln's
//! own BPE over `model-f16.gguf`), plus decode round trips. The probes are HF
//! `encode(text, add_special_tokens=False)`, which still parses added tokens, so they are
//! compared with `encode(text, add_special = false, parse_special = true)`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kiln_models::{GgufFile, Tokenizer};
use serde_json::Value;

fn zoo() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: zoo not found ({})", dir.display());
        None
    }
}

fn models(zoo: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(zoo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("reference.json").is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no zoo models in {}", zoo.display());
    v
}

fn probes(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    r["tokenizer_probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let ids = p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (p["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

/// Encode and decode every probe; returns the number of matching probes.
fn check(tok: &Tokenizer, probes: &[(String, Vec<u32>)], what: &str) -> usize {
    let mut ok = 0;
    for (text, want) in probes {
        let got = tok.encode(text, false, true).unwrap();
        assert_eq!(&got, want, "{what}: encode({text:?})");
        let back = tok.decode(&got).unwrap();
        assert_eq!(&back, text, "{what}: decode(encode({text:?}))");
        ok += 1;
    }
    ok
}

#[test]
fn zoo_probes_tokenizer_json() {
    let Some(zoo) = zoo() else { return };
    let (mut total, mut ok) = (0, 0);
    for dir in models(&zoo) {
        let tok = Tokenizer::from_hf_dir(&dir).unwrap();
        let p = probes(&dir);
        total += p.len();
        ok += check(&tok, &p, &format!("{} tokenizer.json", dir.display()));
        // tokenizer_config: bos <s>, eos </s>; the post-processor adds nothing.
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.eos_id(), Some(2));
        assert!(!tok.add_bos());
        assert!(tok.is_eog(2) && tok.is_eog(5), "eog = {:?}", tok.eog_ids());
        // parse_special = false keeps special-token text as text.
        let raw = tok.encode("<|user|>hi", false, false).unwrap();
        assert!(!raw.contains(&3), "{raw:?}");
    }
    println!("zoo tokenizer.json probes: {ok}/{total} match");
    assert_eq!(ok, total);
}

#[test]
fn zoo_probes_gguf_metadata() {
    let Some(zoo) = zoo() else { return };
    let (mut total, mut ok, mut files) = (0, 0, 0);
    for dir in models(&zoo) {
        let gguf = dir.join("model-f16.gguf");
        if !gguf.is_file() {
            // zoo qwen2 ships no GGUF (README); its tokenizer.json is the same file as the others.
            continue;
        }
        files += 1;
        let file = GgufFile::open(&gguf).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        assert_eq!(tok.kind_name(), "bpe");
        let p = probes(&dir);
        total += p.len();
        ok += check(&tok, &p, &gguf.display().to_string());
        // MODELS.md §6.2: the zoo GGUFs have no add_bos key, and gpt-2 BPE adds no BOS.
        assert!(!tok.add_bos());
        assert_eq!(
            tok.encode("Hello world", true, true).unwrap(),
            tok.encode("Hello world", false, true).unwrap()
        );
        // §6.3: <|end|> is end-of-generation (and so control) in the zoo vocabulary.
        assert!(tok.is_eog(5), "eog = {:?}", tok.eog_ids());
        let raw = tok.encode("<|user|>hi<|end|>", false, false).unwrap();
        assert!(!raw.contains(&3) && !raw.contains(&5), "{raw:?}");
        // Without the special text rendered, control tokens decode to nothing.
        assert_eq!(tok.decode_with(&[3, 340, 5], false).unwrap(), "hi");
    }
    println!("zoo GGUF-metadata probes: {ok}/{total} match over {files} files");
    assert!(files > 0);
    assert_eq!(ok, total);
}

#[test]
fn zoo_stream_decoder_matches_decode() {
    let Some(zoo) = zoo() else { return };
    let dir = &models(&zoo)[0];
    let hf = Tokenizer::from_hf_dir(dir).unwrap();
    let gguf = dir.join("model-f16.gguf");
    let file = GgufFile::open(&gguf).unwrap();
    let gg = Tokenizer::from_gguf(&file).unwrap();
    for tok in [&hf, &gg] {
        for (text, _) in probes(dir) {
            let ids = tok.encode(&text, false, true).unwrap();
            let mut dec = tok.stream_decoder(true);
            let mut out = String::new();
            for &id in &ids {
                if let Some(piece) = dec.push(id).unwrap() {
                    out.push_str(&piece);
                }
            }
            out.push_str(&dec.finish());
            assert_eq!(out, text, "{}: stream decode", tok.kind_name());
        }
        assert!(tok.decode(&[u32::MAX]).is_err());
    }
}

#[test]
fn types_are_shareable_and_paths_load() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Tokenizer>();
    shareable::<kiln_models::chat::ChatTemplate>();
    let Some(zoo) = zoo() else { return };
    let dir = zoo.join("llama3");
    for path in [
        dir.clone(),
        dir.join("tokenizer.json"),
        dir.join("model-f16.gguf"),
    ] {
        let tok = Tokenizer::from_path(&path).unwrap();
        assert_eq!(
            tok.encode("Hello world", false, true).unwrap(),
            probes(&dir)[0].1
        );
        let t = kiln_models::chat::ChatTemplate::from_path(&path).unwrap();
        assert!(t.is_some(), "{}", path.display());
    }
    let err = Tokenizer::from_path(&dir.join("config.json")).unwrap_err();
    assert!(err.to_string().contains("tokenizer"), "{err}");
}
