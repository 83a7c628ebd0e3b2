//! The built `kiln` binary's `run` and `logits` on zoo models (reference backend): the JSON keys
//! of `run --format json` and its prompt ids, and the size and
//! values of the `logits` file. Skipped with a message when the zoo is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn zoo() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo");
    if d.join("README.md").is_file() {
        Some(d)
    } else {
        println!("skipped: zoo not found");
        None
    }
}

fn reference(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap()
}

#[test]
fn run_json_has_the_contract_keys() {
    let Some(zoo) = zoo() else { return };
    let dir = zoo.join("llama3");
    let r = reference(&dir);
    let case = &r["cases"][0];
    let prompt = case["prompt"].as_str().unwrap();
    for model in [dir.clone(), dir.join("model-f16.gguf")] {
        let o = kiln(&[
            "run",
            model.to_str().unwrap(),
            prompt,
            "--max-tokens",
            "24",
            "--temperature",
            "0",
            "--ignore-eos",
            "--backend",
            "reference",
            "--format",
            "json",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(out.trim().lines().count(), 1, "one JSON object: {out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        for k in [
            "prompt_ids",
            "generated_ids",
            "text",
            "load_s",
            "ttft_s",
            "decode_tok_s",
        ] {
            assert!(v.get(k).is_some(), "key {k} missing: {v}");
        }
        for k in ["load_s", "ttft_s", "decode_tok_s"] {
            assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
        }
        // The zoo GGUF has no add_bos key (no BOS) and the HF tokenizer adds none either;
        // the reference ids start with BOS = 1, then the prompt's tokens.
        let ref_ids = &case["input_ids"].as_array().unwrap()[1..];
        assert_eq!(v["prompt_ids"].as_array().unwrap(), ref_ids, "{model:?}");
        // (Greedy ids equal to the reference's need its BOS, which this prompt text does not
        // produce; the library tests check them.)
        assert_eq!(v["generated_ids"].as_array().unwrap().len(), 24);
        assert!(v["text"].is_string());
    }
}

#[test]
fn logits_file_has_every_position() {
    let Some(zoo) = zoo() else { return };
    let dir = zoo.join("gemma3");
    let r = reference(&dir);
    let case = &r["cases"][0];
    let ids: Vec<String> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-cli-logits.f32");
    let _ = std::fs::remove_file(&out);
    let o = kiln(&[
        "logits",
        dir.join("model-f16.gguf").to_str().unwrap(),
        "--ids",
        &ids.join(","),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "reference",
        "--chunk",
        "7",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(dir.join(case["logits_file"].as_str().unwrap())).unwrap();
    assert_eq!(got.len(), ids.len() * 512 * 4);
    assert_eq!(got.len(), want.len());
    let f = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let d = f(&got)
        .iter()
        .zip(f(&want))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 2e-3, "max |Δ| {d}");
    // a bad id is a one-line error, not a panic
    let o = kiln(&[
        "logits",
        dir.to_str().unwrap(),
        "--ids",
        "1,99999",
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "reference",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("kiln: ") && err.contains("99999"), "{err}");
}

#[test]
fn run_refuses_missing_devices_and_unknown_models() {
    // One reference device unless KILN_VIRTUAL_DEVICES says more: reference:7 does not exist.
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "run",
            "no-such-model",
            "hi",
            "--devices",
            "reference:0,reference:7",
        ])
        .env_remove("KILN_VIRTUAL_DEVICES")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reference:7") && err.contains("no such device"),
        "{err}"
    );
    let o = kiln(&["run", "no-such-model", "hi", "--backend", "reference"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no-such-model") && err.contains("catalog"),
        "{err}"
    );
}

#[test]
fn chat_reads_turns_until_exit() {
    use std::io::Write;
    use std::process::Stdio;
    let Some(zoo) = zoo() else { return };
    let dir = zoo.join("qwen3");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "chat",
            dir.to_str().unwrap(),
            "--backend",
            "reference",
            "--max-tokens",
            "5",
            "--seed",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nand again\n/exit\nnot read\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // two turns answered (one stats line each), the line after /exit ignored
    assert_eq!(
        err.lines().filter(|l| l.contains("tok/s")).count(),
        2,
        "{err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("> ").count(), 3, "{out}");
}
