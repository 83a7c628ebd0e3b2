//! Zoo `chat_template_probe`s rendered exactly: from the HF directory (chat_template.jinja, with
//! `bos_token`/`eos_token` from tokenizer_config.json, as transformers passes them) and, where the
//! converter copied it, from the GGUF `tokenizer.chat_template` with the GGUF tokenizer's texts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use kiln_models::chat::{ChatTemplate, RenderOptions};
use kiln_models::{GgufFile, Tokenizer};
use serde_json::Value;

#[test]
fn zoo_chat_template_probes() {
    let zoo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo");
    if !zoo.is_dir() {
        println!("skipped: zoo not found ({})", zoo.display());
        return;
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&zoo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("reference.json").is_file())
        .collect();
    dirs.sort();
    let (mut hf_ok, mut gguf_ok, mut gguf_files) = (0, 0, 0);
    for dir in &dirs {
        let r: Value =
            serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
        let probe = &r["chat_template_probe"];
        let messages = probe["messages"].as_array().unwrap().clone();
        let add_gen = probe["add_generation_prompt"].as_bool().unwrap();
        let want = probe["rendered"].as_str().unwrap();

        let tmpl = ChatTemplate::from_hf_dir(dir)
            .unwrap()
            .expect("zoo has a template");
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).unwrap())
                .unwrap();
        let opts = RenderOptions {
            add_generation_prompt: add_gen,
            bos_token: cfg["bos_token"].as_str().map(String::from),
            eos_token: cfg["eos_token"].as_str().map(String::from),
            ..RenderOptions::default()
        };
        assert_eq!(
            tmpl.render(&messages, &opts).unwrap(),
            want,
            "{}",
            dir.display()
        );
        hf_ok += 1;

        let gguf = dir.join("model-f16.gguf");
        if !gguf.is_file() {
            continue;
        }
        let file = GgufFile::open(&gguf).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        match ChatTemplate::from_gguf(&file).unwrap() {
            Some(t) => {
                gguf_files += 1;
                // The zoo GGUF adds no BOS, so llama.cpp keeps the template's leading <s>.
                let got = t.render_prompt(&tok, &messages, add_gen).unwrap();
                assert_eq!(got, want, "{}", gguf.display());
                gguf_ok += 1;
            }
            None => println!("{}: no tokenizer.chat_template", gguf.display()),
        }
    }
    println!(
        "zoo chat templates: {hf_ok}/{} HF renders match, {gguf_ok}/{gguf_files} GGUF renders match",
        dirs.len()
    );
    assert_eq!(hf_ok, dirs.len());
    assert_eq!(gguf_ok, gguf_files);
}
