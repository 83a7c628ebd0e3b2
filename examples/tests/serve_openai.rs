//! `kiln serve` against the official `openai` Python client: the built `kiln` binary serves a
//! zoo model (llama3, reference backend) on a free port of 127.0.0.1, `openai_client.py` runs
//! chat, streaming, stop strings, max_tokens, malformed requests and a mid-stream cancellation
//! (then /health must show the blocks freed), and SIGTERM must stop the server with exit 0.
//!
//! Python: `KILN_PYTHON` (a venv's python) or `python3`. Without the `openai` package the test
//! prints "skipped: openai python package not found", unless `KILN_REQUIRE_OPENAI=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn zoo() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_ZOO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo"));
    dir.join("README.md").is_file().then_some(dir)
}

fn python() -> Option<String> {
    let py = std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import openai"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    if std::env::var("KILN_REQUIRE_OPENAI").is_ok_and(|v| v == "1") {
        panic!("KILN_REQUIRE_OPENAI=1 but {py} cannot import openai");
    }
    println!("skipped: openai python package not found ({py})");
    None
}

/// The server process; killed if the test fails before stopping it.
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// Start `kiln serve` on a free port; returns the server and its base URL.
fn start(model: &Path, ctx: &str, max_seqs: &str, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg(model)
        .args(["--backend", "reference", "--port", "0", "--ctx", ctx])
        .args([
            "--max-seqs",
            max_seqs,
            "--max-batch-tokens",
            "64",
            "--kv-type",
            "f32",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("kiln serve: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Server(Some(child)), url)
}

/// GET /health.
fn health(addr: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(body).unwrap()
}

/// Wait for exit within `limit`.
fn wait_exit(server: &mut Server, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    let c = server.0.as_mut().unwrap();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            server.0 = None;
            return st;
        }
        assert!(
            t0.elapsed() < limit,
            "the server did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn openai_client_against_kiln_serve() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let Some(py) = python() else { return };
    let (mut server, url) = start(&z.join("llama3"), "2048", "8", &[]);
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
        &z.join("llama3"),
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
