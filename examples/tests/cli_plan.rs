//! `kiln plan` through the built binary on the zoo's llama3 (reference devices): the JSON
//! numbers equal the hand-computed plan (models/tests/planner.rs has the arithmetic), the text
//! table, a layer split and tensor parallelism over two devices, and a model that does not fit
//! exits 1 naming the bytes. Skipped with a message when the zoo is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn llama3() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo/llama3");
    if d.join("config.json").is_file() {
        Some(d)
    } else {
        println!("skipped: zoo not found");
        None
    }
}

/// 2 sequences, 32-row chunks, 64-token context, f16 KV; 1 MiB reserved per device.
const SIZES: [&str; 8] = [
    "--max-seqs",
    "2",
    "--chunk",
    "32",
    "--ctx",
    "64",
    "--reserve",
    "1MiB",
];

// llama3 bf16 on one device: weights 2·131072 (embedding, lm_head) + 2·393216 (layers) + 2560
// (norms) = 1051136; KV 2 layers × K,V [9, 2, 16, 64] f16 = 147456; activations 352256.
const WEIGHTS: u64 = 1_051_136;
const KV: u64 = 147_456;
const ACT: u64 = 352_256;

/// `kiln plan` with [`SIZES`], 64 MiB devices unless `extra` gives `--memory`.
fn plan(dir: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec!["plan", dir.to_str().unwrap()];
    args.extend(SIZES);
    if !extra.contains(&"--memory") {
        args.extend(["--memory", "64MiB"]);
    }
    args.extend(extra);
    let o = kiln(&args);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, v)
}

#[test]
fn plan_json_has_the_hand_computed_numbers() {
    let Some(dir) = llama3() else { return };
    let (o, v) = plan(&dir, &["--devices", "reference:0", "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = &v["devices"][0];
    assert_eq!(d["device"], "reference:0");
    assert_eq!(d["weights"], WEIGHTS);
    assert_eq!(d["kv"], KV);
    assert_eq!(d["activations"], ACT);
    assert_eq!(d["workspace"], 0);
    assert_eq!(d["total"], WEIGHTS + KV + ACT);
    assert_eq!(d["capacity"], 64u64 << 20);
    assert_eq!(d["reserve"], 1u64 << 20);
    assert_eq!(d["kv_bytes_per_token_per_layer"], 512);
    assert_eq!(v["kv_blocks"], 9);
    assert_eq!(v["parallel"], "single");
    assert_eq!(v["fits"], true);
}

#[test]
fn plan_text_is_a_table() {
    let Some(dir) = llama3() else { return };
    let (o, _) = plan(&dir, &["--devices", "reference:0"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for want in [
        "DEVICE",
        "WEIGHTS",
        "KV",
        "ACTIVATIONS",
        "WORKSPACE",
        "RESERVE",
        "CAPACITY",
        "reference:0",
        "embed BF16 128.00 KiB",
        "fits on every device",
    ] {
        assert!(out.contains(want), "'{want}' missing:\n{out}");
    }
    println!("{out}");
}

#[test]
fn plan_splits_over_two_devices() {
    let Some(dir) = llama3() else { return };
    let two = ["--devices", "reference:0,reference:1", "--format", "json"];
    let (o, v) = plan(&dir, &two);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(v["parallel"], "layer");
    assert_eq!(v["devices"][0]["layers"], serde_json::json!([0, 1]));
    assert_eq!(v["devices"][1]["layers"], serde_json::json!([1, 2]));
    let mut args = two.to_vec();
    args.extend(["--parallel", "tensor"]);
    let (o, v) = plan(&dir, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(v["parallel"], "tensor");
    // One KV head per rank: half the KV of one device on each.
    assert_eq!(v["devices"][0]["kv"], KV / 2);
    assert_eq!(v["devices"][1]["kv"], KV / 2);
    let (o, _) = plan(
        &dir,
        &["--devices", "reference:0,reference:1", "--layers", "2,1"],
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_model_that_does_not_fit_exits_1_with_the_numbers() {
    let Some(dir) = llama3() else { return };
    let (o, _) = plan(&dir, &["--devices", "reference:0", "--memory", "1MiB"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let total = (WEIGHTS + KV + ACT).to_string();
    for want in [
        "does not fit",
        "reference:0",
        total.as_str(),
        "capacity 1.00 MiB",
    ] {
        assert!(err.contains(want), "'{want}' missing: {err}");
    }
    // The plan itself is still printed.
    assert!(String::from_utf8_lossy(&o.stdout).contains("DOES NOT FIT"));
    let o = kiln(&["plan", "/no/such/model", "--devices", "reference:0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("kiln: "));
}
