//! `kiln serve` with several models (the registry): two zoo models (llama3 and qwen3, HF
//! directories, reference backend) served by name.
//!
//! - With the official `openai` client (`openai_registry.py`): /v1/models lists both; each
//!   name (and its path, an alias) answers with its own model's greedy text, equal to what
//!   `kiln run` of that model prints; unknown names get 404 listing both names.
//! - Under a budget that fits one model but not both (plain HTTP): a request for the unloaded
//!   model evicts the idle one and loads it (same greedy text as before), and back; while a
//!   stream runs on one model the other is refused with 503 and the byte numbers, and is
//!   served once the stream is gone. /health's accounting (used = bytes of the loaded model,
//!   within the budget) is checked after every step.
//! - Over two devices (`KILN_VIRTUAL_DEVICES=2`, reference:0,reference:1), layer split and
//!   tensor parallel: both models answer (the layer split with the one-device greedy text),
//!   each device has its own budget and accounting.
//! - A budget smaller than the first model stops `kiln serve` at start with the numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod serve_util;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serve_util::{health, http, python, signal, start, start_env, wait_exit, zoo};

const PROMPT: &str = "Once upon a time";
const N: usize = 12;

/// Greedy text of `kiln run` on `model` (same backend, KV type and context as the servers).
fn kiln_run(model: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("run")
        .arg(model)
        .arg(PROMPT)
        .args(["--max-tokens", &N.to_string(), "--temperature", "0"])
        .args(["--ignore-eos", "--backend", "reference", "--kv-type", "f32"])
        .args(["--ctx", "2048", "--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

/// A greedy completion of `model` over plain HTTP: status and body.
fn complete(addr: &str, model: &str) -> (u16, Value) {
    let body = json!({"model": model, "prompt": PROMPT, "max_tokens": N, "temperature": 0,
                      "ignore_eos": true})
    .to_string();
    let (status, body) = http(addr, "POST", "/v1/completions", &body);
    (status, serde_json::from_str(&body).unwrap())
}

/// `/health`'s entry for `name`.
fn model_health(h: &Value, name: &str) -> Value {
    h["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap()
        .clone()
}

/// Used bytes (summed over the devices) = bytes of the models that are loaded; every device
/// within its budget.
fn check_accounting(h: &Value) -> u64 {
    let mut used = 0;
    for b in h["budget"].as_object().unwrap().values() {
        let u = b["used"].as_u64().unwrap();
        assert!(u <= b["budget"].as_u64().unwrap(), "{h}");
        used += u;
    }
    let loaded: u64 = h["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] != "unloaded")
        .map(|m| m["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(used, loaded, "{h}");
    used
}

fn wait_for(addr: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let h = health(addr);
        if cond(&h) {
            return h;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{what}: {h}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_models_by_name_with_the_openai_client() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let Some(py) = python() else { return };
    let (llama, qwen) = (z.join("llama3"), z.join("qwen3"));
    let expect = json!({
        "prompt": PROMPT,
        "max_tokens": N,
        "models": {
            "llama3": {"text": kiln_run(&llama), "alias": llama.to_str().unwrap()},
            "qwen3": {"text": kiln_run(&qwen), "alias": qwen.to_str().unwrap()},
        },
    });
    let file = std::env::temp_dir().join(format!("kiln-registry-{}.json", std::process::id()));
    std::fs::write(&file, expect.to_string()).unwrap();
    let (mut server, url) = start(&[&llama, &qwen], "2048", "4", &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_registry.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&url)
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai_registry.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    signal(server.pid(), "-TERM");
    let st = wait_exit(&mut server, Duration::from_secs(30));
    assert!(st.success(), "kiln serve exited with {st}");
}

#[test]
fn eviction_under_a_budget_for_one_model() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let (llama, qwen) = (z.join("llama3"), z.join("qwen3"));
    // 1. Both models under the default budget: their bytes and greedy texts.
    let (mut server, url) = start(&[&llama, &qwen], "2048", "2", &[]);
    let addr = url.trim_start_matches("http://").to_string();
    let mut text = std::collections::HashMap::new();
    for name in ["llama3", "qwen3"] {
        let (status, v) = complete(&addr, name);
        assert_eq!(status, 200, "{v}");
        text.insert(name, v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let h = health(&addr);
    check_accounting(&h);
    let bytes = |n: &str| model_health(&h, n)["bytes"].as_u64().unwrap();
    let (bl, bq) = (bytes("llama3"), bytes("qwen3"));
    signal(server.pid(), "-TERM");
    assert!(wait_exit(&mut server, Duration::from_secs(30)).success());
    assert_ne!(text["llama3"], text["qwen3"]);

    // 2. A budget for the larger model, not for both.
    let budget = bl.max(bq) + bl.min(bq) / 2;
    println!("llama3 {bl} bytes, qwen3 {bq} bytes, budget {budget}");
    let (mut server, url) = start(
        &[&llama, &qwen],
        "2048",
        "2",
        &["--budget", &budget.to_string()],
    );
    let addr = url.trim_start_matches("http://").to_string();
    let h = health(&addr);
    assert_eq!(model_health(&h, "llama3")["state"], "ready", "{h}");
    assert_eq!(model_health(&h, "qwen3")["state"], "unloaded", "{h}");
    assert_eq!(check_accounting(&h), bl);

    // qwen3 evicts the idle llama3, and back.
    for (name, other, used, loads) in [
        ("qwen3", "llama3", bq, 1),
        ("llama3", "qwen3", bl, 2),
        ("qwen3", "llama3", bq, 2),
    ] {
        let (status, v) = complete(&addr, name);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], name);
        assert_eq!(
            v["choices"][0]["text"].as_str().unwrap(),
            text[name],
            "{name}"
        );
        let h = health(&addr);
        assert_eq!(check_accounting(&h), used, "{h}");
        let (m, o) = (model_health(&h, name), model_health(&h, other));
        assert_eq!(
            (m["state"].as_str(), o["state"].as_str()),
            (Some("ready"), Some("unloaded")),
            "{h}"
        );
        assert_eq!(m["loads"], loads, "{h}");
    }

    // A stream on qwen3 keeps it busy: llama3 cannot get its bytes (503 with the numbers).
    let body = json!({"model": "qwen3", "prompt": PROMPT, "max_tokens": 2000,
                      "ignore_eos": true, "stream": true})
    .to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"200");
    wait_for(&addr, "qwen3 running", |h| {
        model_health(h, "qwen3")["running"] == 1
    });
    let (status, v) = complete(&addr, "llama3");
    assert_eq!(status, 503, "{v}");
    let e = &v["error"];
    assert_eq!(e["code"], "model_does_not_fit", "{v}");
    assert_eq!(e["type"], "server_error", "{v}");
    let msg = e["message"].as_str().unwrap();
    for want in [
        "model 'llama3' does not fit on reference:0".to_string(),
        format!("needs {bl} bytes"),
        format!("the budget is {budget} bytes"),
        format!("{bq} bytes are held"),
        format!("'qwen3' {bq} bytes, 1 in flight"),
    ] {
        assert!(msg.contains(&want), "{want:?} not in {msg}");
    }
    let h = health(&addr);
    assert_eq!(model_health(&h, "llama3")["state"], "unloaded", "{h}");
    assert_eq!(model_health(&h, "qwen3")["busy"], 1, "{h}");
    check_accounting(&h);
    // The client goes away: the lease ends, and llama3 loads (evicting qwen3).
    drop(stream);
    wait_for(&addr, "qwen3 idle", |h| {
        model_health(h, "qwen3")["busy"] == 0
    });
    let (status, v) = complete(&addr, "llama3");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), text["llama3"]);
    let h = health(&addr);
    assert_eq!(check_accounting(&h), bl);
    assert_eq!(model_health(&h, "qwen3")["evictions"], 2, "{h}");
    signal(server.pid(), "-TERM");
    let st = wait_exit(&mut server, Duration::from_secs(30));
    assert!(st.success(), "kiln serve exited with {st}");
}

#[test]
fn two_models_over_two_devices() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let (llama, qwen) = (z.join("llama3"), z.join("qwen3"));
    let want: Vec<String> = [&llama, &qwen].map(|m| kiln_run(m)).to_vec();
    for parallel in ["layer", "tensor"] {
        let (mut server, url) = start_env(
            &[&llama, &qwen],
            "2048",
            "2",
            &[
                "--devices",
                "reference:0,reference:1",
                "--parallel",
                parallel,
            ],
            &[("KILN_VIRTUAL_DEVICES", "2")],
        );
        let addr = url.trim_start_matches("http://").to_string();
        for (name, want) in ["llama3", "qwen3"].iter().zip(&want) {
            let (status, v) = complete(&addr, name);
            assert_eq!(status, 200, "{parallel}: {v}");
            assert_eq!(v["usage"]["completion_tokens"], N, "{v}");
            let text = v["choices"][0]["text"].as_str().unwrap();
            // The layer split runs every op as on one device; tensor parallelism sums
            // partial products in another order (its greedy text is checked elsewhere).
            if parallel == "layer" {
                assert_eq!(text, want, "{name} over two devices");
            }
        }
        let h = health(&addr);
        let budget = h["budget"].as_object().unwrap();
        assert_eq!(budget.len(), 2, "{h}");
        for d in ["reference:0", "reference:1"] {
            assert!(
                budget[d]["used"].as_u64().unwrap() > 0,
                "{parallel} {d}: {h}"
            );
        }
        check_accounting(&h);
        signal(server.pid(), "-TERM");
        assert!(wait_exit(&mut server, Duration::from_secs(30)).success());
    }
}

#[test]
fn a_budget_below_the_first_model_stops_at_start() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg(z.join("llama3"))
        .args(["--backend", "reference", "--port", "0", "--budget", "1000"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "it must not listen");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("model 'llama3' does not fit on reference:0")
            && err.contains("the budget is 1000 bytes")
            && err.contains("0 bytes are held"),
        "{err}"
    );
    // Two models under one name.
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg(z.join("llama3"))
        .arg(z.join("qwen3"))
        .args(["--name", "m", "--name", "m", "--backend", "reference"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("two models are named 'm'"), "{err}");
}
