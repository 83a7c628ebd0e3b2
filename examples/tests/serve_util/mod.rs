//! What the `kiln serve` tests share: the zoo, the Python with the `openai` package, starting
//! the built binary on a free port, GET/POST over a plain TCP socket, signals and exit waits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test uses a part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn zoo() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_ZOO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo"));
    dir.join("README.md").is_file().then_some(dir)
}

/// `KILN_PYTHON` (a venv's python) or `python3`, if it can import `openai`; else `None` after
/// printing "skipped", or a panic when `KILN_REQUIRE_OPENAI=1`.
pub fn python() -> Option<String> {
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
pub struct Server(pub Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
}

pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// Start `kiln serve MODELS...` on a free port of the reference backend (f32 KV, 64-token
/// steps); returns the server and its base URL.
pub fn start(models: &[&Path], ctx: &str, max_seqs: &str, extra: &[&str]) -> (Server, String) {
    start_env(models, ctx, max_seqs, extra, &[])
}

/// [`start`] with environment variables for the server.
pub fn start_env(
    models: &[&Path],
    ctx: &str,
    max_seqs: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .envs(env.iter().copied())
        .arg("serve")
        .args(models)
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

/// One HTTP/1.1 request; returns the status and the body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let status = r[9..12].parse().unwrap();
    let body = r.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

/// GET /health.
pub fn health(addr: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", "/health", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Wait for exit within `limit`.
pub fn wait_exit(server: &mut Server, limit: Duration) -> std::process::ExitStatus {
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
