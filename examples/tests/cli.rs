//! The built `kiln` binary: `devices` and `inspect` on zoo files, and on truncated, garbage and
//! missing files (non-zero exit, one `kiln: ...` line naming the file and the problem, no panic).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kiln-cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A failing run: exit code 1, exactly one stderr line starting `kiln: ` containing `parts`.
#[track_caller]
fn fails_with(o: &Output, parts: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("kiln: "), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    for p in parts {
        assert!(err.contains(p), "{err:?} lacks {p:?}");
    }
}

#[test]
fn devices_lists_reference_and_absent_backends() {
    let o = kiln(&["devices"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("DEVICE") && out.contains("reference:0"),
        "{out}"
    );
    for line in out.lines().filter(|l| l.contains("not found")) {
        assert!(
            line.starts_with("cuda: not found: ") || line.starts_with("wgpu: not found: "),
            "{line}"
        );
    }
    let o = kiln(&["devices", "--format", "json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backends = v["backends"].as_array().unwrap();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cuda", "wgpu", "reference"]);
    let r = &backends[2];
    assert_eq!(r["found"], true);
    assert_eq!(r["devices"][0]["id"], "reference:0");
    assert!(r["devices"][0]["memory_bytes"].as_u64().unwrap() > 0);
    for b in backends.iter().filter(|b| b["found"] == false) {
        assert!(!b["reason"].as_str().unwrap().is_empty());
    }
}

#[test]
fn inspect_zoo_gguf() {
    let Some(z) = zoo() else { return };
    let f = z.join("llama3/model-q8_0.gguf");
    let o = kiln(&["inspect", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("GGUF v3"), "{out}");
    assert!(out.contains("general.architecture") && out.contains("\"llama\""));
    // a long array is summarised: type, length, first items, the rest counted
    let tokens = out
        .lines()
        .find(|l| l.contains("tokenizer.ggml.tokens"))
        .unwrap();
    assert!(
        tokens.contains("[string; 512]") && tokens.contains("… 506 more"),
        "{tokens}"
    );
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("blk.0.attn_q.weight"))
        .unwrap();
    assert!(
        row.contains("Q8_0") && row.contains("[256, 128]") && row.contains("34,816"),
        "{row}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("total: ") && l.contains("tensors"))
    );

    let o = kiln(&["inspect", "--format", "json", f.to_str().unwrap()]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["metadata"]["tokenizer.ggml.tokens"]["len"], 512);
    let q = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q["shape"], serde_json::json!([256, 128]));
    assert_eq!(q["bytes"], 34816);
    let sum: u64 = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(v["totals"]["bytes"], sum);
}

#[test]
fn inspect_zoo_safetensors_and_hf_dir() {
    let Some(z) = zoo() else { return };
    let f = z.join("gemma3/model.safetensors");
    let o = kiln(&["inspect", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("safetensors") && out.contains("model.embed_tokens.weight"),
        "{out}"
    );
    assert!(out.contains("BF16"));
    let o = kiln(&["inspect", z.join("qwen3").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("model_type:") && out.contains("qwen3"),
        "{out}"
    );
    assert!(out.contains("config.json (") && out.contains("num_hidden_layers"));
    assert!(out.contains("chat template:"));
}

#[test]
fn malformed_files_fail_in_one_line() {
    let d = scratch("malformed");
    let missing = d.join("nope.gguf");
    fails_with(
        &kiln(&["inspect", missing.to_str().unwrap()]),
        &["nope.gguf", "No such file"],
    );
    let garbage = d.join("garbage.bin");
    std::fs::write(&garbage, b"hello, this is not a model").unwrap();
    fails_with(
        &kiln(&["inspect", garbage.to_str().unwrap()]),
        &["garbage.bin", "unknown format"],
    );
    let fake = d.join("fake.gguf");
    std::fs::write(&fake, b"GGML\x03\x00\x00\x00").unwrap();
    fails_with(
        &kiln(&["inspect", fake.to_str().unwrap()]),
        &["fake.gguf", "not a GGUF file"],
    );
    let empty = d.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    fails_with(
        &kiln(&["inspect", empty.to_str().unwrap()]),
        &["empty.safetensors", "truncated"],
    );
    let dir = scratch("not_a_model");
    fails_with(
        &kiln(&["inspect", dir.to_str().unwrap()]),
        &["not_a_model", "config.json"],
    );

    let Some(z) = zoo() else { return };
    let full = std::fs::read(z.join("llama3/model-f16.gguf")).unwrap();
    for (i, cut) in [10usize, 100, 5000, full.len() / 2, full.len() - 1]
        .into_iter()
        .enumerate()
    {
        let p = d.join(format!("cut{i}.gguf"));
        std::fs::write(&p, &full[..cut]).unwrap();
        let o = kiln(&["inspect", p.to_str().unwrap()]);
        fails_with(&o, &[p.to_str().unwrap()]);
        let e = stderr(&o);
        assert!(
            e.contains("truncated")
                || e.contains("exceeds file size")
                || e.contains("bytes are left"),
            "{e}"
        );
    }
    // a tensor whose data range runs past the end names the tensor and the numbers
    let p = d.join("last_tensor_cut.gguf");
    std::fs::write(&p, &full[..full.len() - 1]).unwrap();
    fails_with(
        &kiln(&["inspect", p.to_str().unwrap()]),
        &[
            "tensor '",
            "data range",
            &format!("exceeds file size {}", full.len() - 1),
        ],
    );
    let st = std::fs::read(z.join("llama3/model.safetensors")).unwrap();
    let p = d.join("cut.safetensors");
    std::fs::write(&p, &st[..st.len() / 2]).unwrap();
    fails_with(
        &kiln(&["inspect", p.to_str().unwrap()]),
        &["cut.safetensors"],
    );
}

#[test]
fn usage_errors_are_clap_errors() {
    let o = kiln(&["inspect"]);
    assert_eq!(o.status.code(), Some(2));
    let o = kiln(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = kiln(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("devices") && out.contains("inspect"));
}
