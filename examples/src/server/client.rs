//! A minimal HTTP/1.1 client for `kiln bench serve --url`: N threads each POST one streaming
//! /v1/completions request (token-id prompt, greedy, `ignore_eos`, usage included) and record
//! when each SSE chunk with text arrives. Plain std sockets: no client crate for one request
//! shape.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::bench::{RoundResult, StreamTimes, prompts, summarize};
use crate::cli::{CliError, CliResult};

/// Prompt ids are drawn below this (every vocabulary has more tokens).
const URL_VOCAB: usize = 256;

/// One round of `n` concurrent streams against the server at `url`.
pub fn round(
    url: &str,
    n: usize,
    prompt_len: usize,
    gen_len: usize,
    seed: u64,
) -> CliResult<RoundResult> {
    let addr = url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or_else(|| CliError::Usage(format!("--url {url}: only http://HOST:PORT is supported")))?
        .to_string();
    let started = Instant::now();
    let handles: Vec<_> = prompts(n, prompt_len, URL_VOCAB, seed)
        .into_iter()
        .map(|p| {
            let addr = addr.clone();
            std::thread::spawn(move || one(&addr, &p, gen_len))
        })
        .collect();
    let mut times = Vec::with_capacity(n);
    for h in handles {
        let t = h
            .join()
            .map_err(|_| CliError::Usage("a bench client thread panicked".into()))??;
        times.push(t);
    }
    Ok(summarize(n, &times, started.elapsed()))
}

fn io_err(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("bench client: {what}: {e}"))
}

/// One streaming request.
fn one(addr: &str, prompt: &[u32], gen_len: usize) -> CliResult<StreamTimes> {
    let body = json!({
        "prompt": prompt, "max_tokens": gen_len, "temperature": 0, "stream": true,
        "ignore_eos": true, "stream_options": {"include_usage": true},
    })
    .to_string();
    let mut s = TcpStream::connect(addr).map_err(|e| io_err(&format!("connect {addr}"), e))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(|e| io_err("socket", e))?;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut t = StreamTimes {
        submitted: Some(Instant::now()),
        ..StreamTimes::default()
    };
    s.write_all(req.as_bytes()).map_err(|e| io_err("send", e))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| io_err("status", e))?;
    if !line.starts_with("HTTP/1.1 200") {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        return Err(io_err("request", format!("{} {rest}", line.trim())));
    }
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| io_err("headers", e))?;
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
    }
    let mut pending = String::new();
    let mut body = Vec::new();
    loop {
        // The next piece of body: one chunk, or whatever arrives (not chunked).
        body.clear();
        if chunked {
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| io_err("chunk size", e))?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| io_err("chunk size", e))?;
            if size == 0 {
                break;
            }
            body.resize(size + 2, 0);
            r.read_exact(&mut body).map_err(|e| io_err("chunk", e))?;
            body.truncate(size);
        } else {
            let got = r.fill_buf().map_err(|e| io_err("body", e))?.to_vec();
            if got.is_empty() {
                break;
            }
            r.consume(got.len());
            body = got;
        }
        let now = Instant::now();
        pending.push_str(&String::from_utf8_lossy(&body));
        while let Some(end) = pending.find("\n\n") {
            let ev: String = pending.drain(..end + 2).collect();
            for data in ev.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    return Ok(t);
                }
                let v: Value = serde_json::from_str(data).map_err(|e| io_err("chunk JSON", e))?;
                if let Some(e) = v.get("error") {
                    return Err(io_err("server", e));
                }
                if v["choices"][0]["text"]
                    .as_str()
                    .is_some_and(|x| !x.is_empty())
                {
                    t.tokens.push(now);
                }
                if let Some(u) = v["usage"]["completion_tokens"].as_u64() {
                    t.generated = u as usize;
                }
            }
        }
    }
    Ok(t)
}
