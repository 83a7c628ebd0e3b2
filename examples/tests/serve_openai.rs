//! `kiln serve` against the official `openai` Python client: the built `kiln` binary serves a
//! zoo model (llama3, reference backend) on a free port of 127.0.0.1, `openai_client.py` runs
//! chat, streaming, stop strings, max_tokens, malformed requests and a mid-stream cancellation
//! (then /health must show the blocks freed), and SIGTERM must stop the server with exit 0.
//!
//! Python: `KILN_PYTHON` (a venv's python) or `python3`. Without the `openai` package the test
//! prints "skipped: openai python package not found", unless `KILN_REQUIRE_OPENAI=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod serve_util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serve_util::{health, python, signal, start, wait_exit, zoo};

#[test]
fn openai_client_against_kiln_serve() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let Some(py) = python() else { return };
    let (mut server, url) = start(&[&z.join("llama3")], "2048", "8", &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(&py).arg(&script).arg(&url).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai_client.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    // Graceful shutdown: SIGTERM, exit 0.
    let pid = server.0.as_ref().unwrap().id();
    signal(pid, "-TERM");
    let st = wait_exit(&mut server, Duration::from_secs(30));
    assert!(st.success(), "kiln serve exited with {st}");
}

/// A bounded queue answers 429 and a SIGINT during a stream still exits 0 (without python:
/// plain HTTP over a TCP socket).
#[test]
fn queue_bound_and_sigint() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    use std::io::{Read, Write};
    let (mut server, url) = start(
        &[&z.join("llama3")],
        "2048",
        "1",
        &["--max-queue", "1", "--grace-s", "1"],
    );
    let addr = url.trim_start_matches("http://").to_string();
    let body =
        r#"{"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": true, "stream": true}"#;
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // One running (max 1 sequence, 2000 tokens: seconds), one queued, then 429. /health says
    // when the engine has taken each request.
    let mut conns = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        statuses.push(String::from_utf8_lossy(&buf[9..12]).to_string());
        conns.push(s);
        let t0 = Instant::now();
        let key = if conns.len() == 1 {
            "running"
        } else {
            "waiting"
        };
        while conns.len() < 3 && health(&addr)[key] != 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{key} never reached 1"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(statuses, ["200", "200", "429"], "{statuses:?}");
    let mut rest = String::new();
    let _ = conns[2].read_to_string(&mut rest);
    assert!(rest.contains("rate_limit_error"), "{rest}");
    // SIGINT with two streams in flight: the grace period lets them finish or be cancelled.
    let pid = server.0.as_ref().unwrap().id();
    signal(pid, "-INT");
    let st = wait_exit(&mut server, Duration::from_secs(60));
    assert!(st.success(), "kiln serve exited with {st}");
}
