//! `kiln bench serve`: N concurrent streams (e.g. 1, 8, 32, 64) of fixed prompt and output
//! lengths through the engine, in process (no HTTP) or against a running `kiln serve` (`--url`).
//! Reports, per N: output tok/s (generated tokens / wall time of the round), time to first
//! token and inter-token latency p50/p90/p99. Prompts are seeded random token ids (distinct per
//! stream, so the prefix cache does not help), EOS is ignored so every stream generates exactly
//! `--gen-len` tokens. Each N runs a short warm-up round first (graph capture, allocations).
//!
//! The model: MODEL (GGUF, HF directory, catalog name) or `--synth PRESET` (a synthetic
//! llama-family model from `kiln_benches::synth`, e.g. llama3-8b with `--synth-type q4_k`).

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_core::DType;
use kiln_models::engine::{Engine, EngineStats, Event, FinishReason, FnSink};
use kiln_models::runtime::Model;
use kiln_models::{GenerateOptions, LoadOptions, SamplingParams};
use serde_json::json;

use super::load::{DEFAULT_MODEL, DeviceArgs, load_model};
use super::serve::EngineArgs;
use super::{CliError, CliResult, Format};
use crate::server::client as bench_http;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// Concurrent streams through the serving engine (or a server with --url).
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// GGUF file, Hugging Face directory or catalog name (ignored with --synth or --url).
    pub model: Option<String>,
    /// A synthetic model preset instead of MODEL: llama3-8b, llama3-1b, tiny.
    #[arg(long)]
    pub synth: Option<String>,
    /// Weight type of the synthetic model (f32, f16, bf16, q8_0, q4_k).
    #[arg(long, default_value = "q4_k")]
    pub synth_type: String,
    /// Concurrent streams, one round per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub streams: Vec<usize>,
    /// Prompt tokens per stream.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Generated tokens per stream.
    #[arg(long, default_value_t = 64)]
    pub gen_len: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Benchmark a running server (e.g. http://127.0.0.1:8080) instead of an in-process engine.
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub dev: DeviceArgs,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(a: &Args) -> CliResult {
    match &a.what {
        What::Serve(s) => serve(s),
    }
}

/// When each token of one stream arrived.
#[derive(Debug, Default, Clone)]
pub struct StreamTimes {
    pub submitted: Option<Instant>,
    pub tokens: Vec<Instant>,
    pub generated: usize,
}

/// One round's numbers.
#[derive(Debug, Clone, Copy)]
pub struct RoundResult {
    pub streams: usize,
    pub generated: usize,
    pub wall_s: f64,
    pub tok_s: f64,
    pub ttft_ms: [f64; 3],
    pub itl_ms: [f64; 3],
}

/// Where the in-process engine's thread spent one round (deltas of [`EngineStats`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineSplit {
    pub steps: u64,
    pub decode_steps: u64,
    pub replayed: u64,
    /// Milliseconds per step: inside `Runtime::step`, sampling, the rest of the scheduler.
    pub runtime_ms: f64,
    /// Of `runtime_ms`: the logits' copy to the host.
    pub logits_ms: f64,
    pub sample_ms: f64,
    pub other_ms: f64,
    /// Seconds the engine thread was busy stepping.
    pub busy_s: f64,
}

impl EngineSplit {
    pub fn between(a: &EngineStats, b: &EngineStats) -> EngineSplit {
        let steps = b.steps.saturating_sub(a.steps);
        let per = |d: Duration| d.as_secs_f64() * 1e3 / steps.max(1) as f64;
        let (rt, sm, busy) = (
            b.runtime_time.saturating_sub(a.runtime_time),
            b.sample_time.saturating_sub(a.sample_time),
            b.busy_time.saturating_sub(a.busy_time),
        );
        EngineSplit {
            steps,
            decode_steps: b.decode_steps.saturating_sub(a.decode_steps),
            replayed: b.replayed_steps.saturating_sub(a.replayed_steps),
            runtime_ms: per(rt),
            logits_ms: per(b.logits_time.saturating_sub(a.logits_time)),
            sample_ms: per(sm),
            other_ms: per(busy.saturating_sub(rt + sm)),
            busy_s: busy.as_secs_f64(),
        }
    }
}

/// p50/p90/p99 (nearest rank) of `v` in milliseconds.
pub fn percentiles(v: &mut [f64]) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    [at(0.50), at(0.90), at(0.99)]
}

/// Summarize a round from its streams' token times.
pub fn summarize(streams: usize, times: &[StreamTimes], wall: Duration) -> RoundResult {
    let mut ttft = Vec::new();
    let mut itl = Vec::new();
    let mut generated = 0;
    for t in times {
        generated += t.generated;
        if let (Some(s), Some(f)) = (t.submitted, t.tokens.first()) {
            ttft.push(f.duration_since(s).as_secs_f64() * 1e3);
        }
        for w in t.tokens.windows(2) {
            itl.push(w[1].duration_since(w[0]).as_secs_f64() * 1e3);
        }
    }
    let wall_s = wall.as_secs_f64();
    RoundResult {
        streams,
        generated,
        wall_s,
        tok_s: if wall_s > 0.0 {
            generated as f64 / wall_s
        } else {
            0.0
        },
        ttft_ms: percentiles(&mut ttft),
        itl_ms: percentiles(&mut itl),
    }
}

/// Seeded random prompts, distinct per stream and round.
pub fn prompts(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    // SplitMix64: dependency-free and the same everywhere.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // Skip the low ids (special tokens in most vocabularies).
    let lo = 3.min(vocab.saturating_sub(1));
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| (lo as u64 + next() % (vocab - lo) as u64) as u32)
                .collect()
        })
        .collect()
}

fn load(a: &ServeArgs) -> CliResult<Model> {
    let backend = a.dev.open()?;
    let Some(name) = &a.synth else {
        let name = a.model.as_deref().unwrap_or(DEFAULT_MODEL);
        return load_model(name, backend, &LoadOptions::default());
    };
    use kiln_benches::synth::{self, SynthWeights};
    let p = synth::preset(name).ok_or_else(|| {
        CliError::Usage(format!(
            "--synth {name}: unknown preset (one of {:?})",
            synth::PRESETS.map(|p| p.name)
        ))
    })?;
    let dt = DType::parse(&a.synth_type)
        .ok_or_else(|| CliError::Usage(format!("--synth-type {}: unknown type", a.synth_type)))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("kiln bench: {}", synth::how_made(dt, a.seed));
    let w = SynthWeights::generate(&p, dt, a.seed, threads)?;
    let origin = format!("synthetic:{}-{}", p.name, dt.name());
    let tok = synth::placeholder_tokenizer(p.vocab, &origin)?;
    let host = w.host_tensors(&origin)?;
    Ok(Model::from_parts(p.config()?, &host, tok, backend)?)
}

/// One round of `n` streams on `engine`.
fn round(
    engine: &Engine,
    n: usize,
    prompt_len: usize,
    gen_len: usize,
    vocab: usize,
    seed: u64,
) -> CliResult<RoundResult> {
    let opts = GenerateOptions {
        max_tokens: gen_len,
        sampling: SamplingParams::greedy(),
        stop: vec![],
        ignore_eos: true,
    };
    let (done_tx, done_rx) = channel::<Result<(), String>>();
    let times: Vec<Arc<Mutex<StreamTimes>>> = (0..n).map(|_| Arc::default()).collect();
    let started = Instant::now();
    for (p, t) in prompts(n, prompt_len, vocab, seed).into_iter().zip(&times) {
        let (t2, done) = (t.clone(), done_tx.clone());
        let sink = FnSink(move |ev: Event| {
            let now = Instant::now();
            let Ok(mut t) = t2.lock() else { return };
            match ev {
                Event::Token(_) => t.tokens.push(now),
                Event::Finished(f) => {
                    t.generated = f.completion_tokens;
                    let r = match f.reason {
                        FinishReason::Stop(_) => Ok(()),
                        FinishReason::Cancelled => Err("cancelled".to_string()),
                        FinishReason::Error(e) => Err(e),
                    };
                    let _ = done.send(r);
                }
            }
        });
        if let Ok(mut g) = t.lock() {
            g.submitted = Some(Instant::now());
        }
        engine.submit_with(p, opts.clone(), Box::new(sink))?;
    }
    for _ in 0..n {
        match done_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CliError::Usage(format!("a bench request failed: {e}"))),
            Err(_) => return Err(CliError::Usage("the engine stopped".into())),
        }
    }
    let wall = started.elapsed();
    let times: Vec<StreamTimes> = times
        .iter()
        .map(|t| t.lock().map(|t| t.clone()).unwrap_or_default())
        .collect();
    Ok(summarize(n, &times, wall))
}

fn serve(a: &ServeArgs) -> CliResult {
    if a.streams.is_empty() || a.streams.contains(&0) || a.prompt_len == 0 || a.gen_len == 0 {
        return Err(CliError::Usage(
            "--streams (each ≥ 1), --prompt-len and --gen-len must be positive".into(),
        ));
    }
    let max_n = a.streams.iter().copied().max().unwrap_or(1);
    let (results, splits, what) = if let Some(url) = &a.url {
        let mut out = Vec::new();
        for &n in &a.streams {
            bench_http::round(url, n, a.prompt_len, 8, a.seed ^ 0xFFFF)?;
            out.push(bench_http::round(
                url,
                n,
                a.prompt_len,
                a.gen_len,
                a.seed + n as u64,
            )?);
        }
        (out, Vec::new(), format!("server {url}"))
    } else {
        let model = Arc::new(load(a)?);
        let vocab = model.config().vocab;
        let mut eargs = a.engine.clone();
        eargs.max_seqs = eargs.max_seqs.max(max_n);
        let ctx = a.prompt_len + a.gen_len + 1;
        eargs.ctx = Some(eargs.ctx.unwrap_or(ctx).max(ctx));
        let engine = Engine::start(
            model.clone(),
            eargs.options(max_n.max(1) * 2, model.config().context_length),
        )?;
        let mut out = Vec::new();
        let mut splits = Vec::new();
        for &n in &a.streams {
            round(
                &engine,
                n,
                a.prompt_len,
                8.min(a.gen_len),
                vocab,
                a.seed ^ 0xFFFF,
            )?;
            let before = engine.stats();
            out.push(round(
                &engine,
                n,
                a.prompt_len,
                a.gen_len,
                vocab,
                a.seed + n as u64,
            )?);
            splits.push(EngineSplit::between(&before, &engine.stats()));
        }
        let what = format!(
            "{} on {}, in-process engine",
            a.synth
                .as_deref()
                .map(|s| format!("synthetic {s} {}", a.synth_type))
                .unwrap_or_else(|| model.path().display().to_string()),
            model.backend().id()
        );
        (out, splits, what)
    };
    match a.format {
        Format::Text => {
            println!(
                "kiln bench serve: {what}; prompt {} tokens, {} generated per stream",
                a.prompt_len, a.gen_len
            );
            println!(
                "| streams | output tok/s | TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) | wall s |"
            );
            println!("|---:|---:|---|---|---:|");
            for r in &results {
                println!(
                    "| {} | {:.1} | {:.1} / {:.1} / {:.1} | {:.2} / {:.2} / {:.2} | {:.2} |",
                    r.streams,
                    r.tok_s,
                    r.ttft_ms[0],
                    r.ttft_ms[1],
                    r.ttft_ms[2],
                    r.itl_ms[0],
                    r.itl_ms[1],
                    r.itl_ms[2],
                    r.wall_s
                );
            }
            if let (Some(first), Some(last)) = (results.first(), results.last())
                && first.tok_s > 0.0
            {
                println!(
                    "output tok/s at {} streams = {:.2}x the {}-stream rate",
                    last.streams,
                    last.tok_s / first.tok_s,
                    first.streams
                );
            }
            for (r, e) in results.iter().zip(&splits) {
                println!(
                    "engine at {} streams: {} steps ({} decode, {} replayed); per step {:.2} ms in the runtime step (of which {:.2} ms copying logits), {:.2} ms sampling, {:.2} ms scheduling; busy {:.2} of {:.2} s",
                    r.streams,
                    e.steps,
                    e.decode_steps,
                    e.replayed,
                    e.runtime_ms,
                    e.logits_ms,
                    e.sample_ms,
                    e.other_ms,
                    e.busy_s,
                    r.wall_s
                );
            }
        }
        Format::Json => {
            let rows: Vec<_> = results
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let e = splits.get(i).map(|e| {
                        json!({"steps": e.steps, "decode_steps": e.decode_steps,
                            "replayed": e.replayed, "runtime_ms": e.runtime_ms, "logits_ms": e.logits_ms,
                            "sample_ms": e.sample_ms, "other_ms": e.other_ms, "busy_s": e.busy_s})
                    });
                    json!({"engine": e,
                        "streams": r.streams, "generated": r.generated, "wall_s": r.wall_s,
                        "output_tok_s": r.tok_s,
                        "ttft_ms": {"p50": r.ttft_ms[0], "p90": r.ttft_ms[1], "p99": r.ttft_ms[2]},
                        "itl_ms": {"p50": r.itl_ms[0], "p90": r.itl_ms[1], "p99": r.itl_ms[2]},
                    })
                })
                .collect();
            println!(
                "{}",
                json!({"what": what, "prompt_len": a.prompt_len, "gen_len": a.gen_len, "rounds": rows})
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&mut v), [50.0, 90.0, 99.0]);
        assert_eq!(percentiles(&mut []), [0.0; 3]);
        let mut one = vec![7.0];
        assert_eq!(percentiles(&mut one), [7.0; 3]);
    }

    #[test]
    fn prompts_are_seeded_and_in_range() {
        let a = prompts(4, 10, 50, 1);
        assert_eq!(a, prompts(4, 10, 50, 1));
        assert_ne!(a, prompts(4, 10, 50, 2));
        assert_ne!(a[0], a[1]);
        assert!(a.iter().flatten().all(|&t| (3..50).contains(&t)));
    }

    #[test]
    fn engine_split_is_per_step_deltas() {
        let ms = Duration::from_millis;
        let a = EngineStats {
            steps: 10,
            decode_steps: 4,
            replayed_steps: 2,
            runtime_time: ms(100),
            sample_time: ms(10),
            busy_time: ms(200),
            ..EngineStats::default()
        };
        let b = EngineStats {
            steps: 14,
            decode_steps: 8,
            replayed_steps: 5,
            runtime_time: ms(140),
            sample_time: ms(18),
            busy_time: ms(260),
            ..a
        };
        let e = EngineSplit::between(&a, &b);
        assert_eq!((e.steps, e.decode_steps, e.replayed), (4, 4, 3));
        assert!((e.runtime_ms - 10.0).abs() < 1e-9);
        assert!((e.sample_ms - 2.0).abs() < 1e-9);
        assert!((e.other_ms - 3.0).abs() < 1e-9);
        assert!((e.busy_s - 0.06).abs() < 1e-9);
    }

    #[test]
    fn summary_counts_gaps() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = StreamTimes {
            submitted: Some(t0),
            tokens: vec![t0 + ms(10), t0 + ms(12), t0 + ms(14)],
            generated: 3,
        };
        let r = summarize(1, &[s], ms(20));
        assert_eq!(r.generated, 3);
        assert!((r.tok_s - 150.0).abs() < 1e-6);
        assert!((r.ttft_ms[0] - 10.0).abs() < 0.01);
        assert!((r.itl_ms[2] - 2.0).abs() < 0.01);
    }
}
