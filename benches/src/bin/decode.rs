//! End-to-end decode: prefill `--ctx` tokens per sequence, then `--steps` batched greedy decode
//! steps through `Runtime::step`, for each `--batch` size, with and without CUDA graphs.
//! Reports per batch the median decode step (host to logits on the host, sampling excluded),
//! tokens/s, the weight and KV bytes a step must read, the achieved GB/s and its fraction of
//! the device-to-device copy bandwidth measured in the same run (roofline: bytes / copy GB/s).
//!
//! `decode --backend cuda|wgpu|reference [--device N] --model llama3-8b|llama3-8b-rank2|llama3-1b|tiny|PATH
//!  [--wtype TYPE: q4_k|q5_k|q6_k|q2_k|q3_k|iq4_xs|q4_0|q5_0|iq4_nl|bf16|q8_0|f16|f32 ...] [--batch 1,8,32] [--ctx 512] [--steps 64]
//!  [--graph on|off|both] [--seed S] [--kv f16|f32|bf16] [--copy-mib N] [--json FILE] [--tp N]`
//! `--tp N` runs the model tensor-parallel over devices `device .. device+N` (NCCL all-reduce
//! on CUDA, host-staged elsewhere; no graphs: a group's step is not captured); bytes per step
//! are then per device (every device reads its 1/N share at the same time).
//! Synthetic models (the names) get seeded random weights made on this machine (see
//! kiln_benches::synth for exactly how); PATH is a GGUF file or HF directory (`--wtype` unused).

use std::time::Instant;

use kiln_benches::synth::{self, Preset, SynthWeights};
use kiln_benches::{Args, copy_bandwidth, open, run_main};
use kiln_core::{Backend, BackendKind, DType, Error, Result};
use kiln_models::planner::{self, ModelMeta, Parallel as PlanParallel, PlanOptions, Reserve};
use kiln_models::runtime::SeqInput;
use kiln_models::runtime::weights::Ffn;
use kiln_models::runtime::{Parallel, Placement};
use kiln_models::{LoadOptions, Model, Runtime, RuntimeOptions};

struct Opts {
    backend: BackendKind,
    device: u32,
    model: String,
    wtype: DType,
    batches: Vec<usize>,
    /// Prompt tokens per sequence: one value for every batch size, or one per `--batch` entry.
    ctx: Vec<usize>,
    steps: usize,
    graphs: Vec<bool>,
    seed: u64,
    kv: DType,
    copy_mib: Option<usize>,
    json: Option<std::path::PathBuf>,
    /// Tensor-parallel group size: devices `device .. device + tp` (NCCL on CUDA).
    tp: usize,
    /// `--profile on`: one more step per run under the wgpu op profile (`profile_step`).
    profile: bool,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        backend: BackendKind::Cuda,
        device: 0,
        model: "llama3-8b".into(),
        wtype: DType::Q4_K,
        batches: vec![1, 8, 32],
        ctx: vec![512],
        steps: 64,
        graphs: vec![true, false],
        seed: 1,
        kv: DType::F16,
        copy_mib: None,
        json: None,
        tp: 1,
        profile: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let bad = |flag: &str, v: &str| Error::Invalid(format!("{flag}: cannot use '{v}'"));
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        if flag == "--help" || flag == "-h" {
            println!(
                "decode --backend cuda|wgpu|reference [--device N] --model llama3-8b|llama3-8b-rank2|llama3-1b|tiny|PATH [--wtype TYPE: q4_k|q5_k|q6_k|q2_k|q3_k|iq4_xs|q4_0|q5_0|iq4_nl|bf16|q8_0|f16|f32 ...] [--batch 1,8,32] [--ctx 512] [--steps 64] [--graph on|off|both] [--seed S] [--kv f16] [--copy-mib N] [--json FILE] [--profile on]"
            );
            std::process::exit(0);
        }
        let v = argv
            .get(i + 1)
            .ok_or_else(|| Error::Invalid(format!("{flag} needs a value")))?
            .as_str();
        let num = |v: &str| v.parse::<usize>().map_err(|_| bad(flag, v));
        match flag {
            "--backend" => o.backend = v.parse()?,
            "--device" => o.device = v.parse().map_err(|_| bad(flag, v))?,
            "--model" => o.model = v.to_string(),
            "--wtype" => o.wtype = DType::parse(v).ok_or_else(|| bad(flag, v))?,
            "--kv" => o.kv = DType::parse(v).ok_or_else(|| bad(flag, v))?,
            "--batch" => o.batches = v.split(',').map(|s| num(s.trim())).collect::<Result<_>>()?,
            "--ctx" => o.ctx = v.split(',').map(|s| num(s.trim())).collect::<Result<_>>()?,
            "--steps" => o.steps = num(v)?,
            "--seed" => o.seed = num(v)? as u64,
            "--copy-mib" => o.copy_mib = Some(num(v)?),
            "--json" => o.json = Some(v.into()),
            "--tp" => o.tp = num(v)?,
            "--profile" => o.profile = v == "on",
            "--graph" => {
                o.graphs = match v {
                    "on" => vec![true],
                    "off" => vec![false],
                    "both" => vec![true, false],
                    _ => return Err(bad(flag, v)),
                }
            }
            _ => return Err(Error::Invalid(format!("unknown option {flag}"))),
        }
        i += 2;
    }
    if o.batches.contains(&0) || o.ctx.contains(&0) || o.steps == 0 || o.tp == 0 {
        return Err(Error::Invalid(
            "--batch sizes, --ctx and --steps must be ≥ 1".into(),
        ));
    }
    if o.ctx.len() != 1 && o.ctx.len() != o.batches.len() {
        return Err(Error::Invalid(format!(
            "--ctx takes one length or one per batch size ({} given for {} batch sizes)",
            o.ctx.len(),
            o.batches.len()
        )));
    }
    Ok(o)
}

fn merr(e: kiln_models::ModelError) -> Error {
    Error::Invalid(e.to_string())
}

/// Bytes a decode step reads: (weights, KV cache at `avg_len` tokens per sequence).
fn step_bytes(model: &Model, batch: usize, avg_len: f64, kv: DType) -> (f64, f64) {
    let mut wb = 0;
    for w in model.shards().iter().map(|s| &s.weights) {
        wb += w.output.as_ref().map_or(0, |o| o.bytes())
            + batch * w.embed.as_ref().map_or(0, |e| e.bytes()) / model.vocab_size().max(1);
        for l in &w.layers {
            wb += l.q.bytes() + l.k.bytes() + l.v.bytes() + l.o.bytes();
            wb += match &l.ffn {
                Ffn::Dense { gate, up, down } => gate.bytes() + up.bytes() + down.bytes(),
                // Upper bound: every expert (the bench's synthetic models are dense).
                Ffn::Moe {
                    router,
                    gate,
                    up,
                    down,
                } => router.bytes() + gate.bytes() + up.bytes() + down.bytes(),
            };
        }
    }
    let cfg = model.config();
    let per_tok = (2 * cfg.kv_dim() * kv.block_bytes()) as f64;
    let kvb: f64 = cfg
        .layers
        .iter()
        .map(|s| s.window.map_or(avg_len, |win| avg_len.min(win as f64)) * per_tok)
        .sum();
    (wb as f64, kvb * batch as f64)
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

struct RunResult {
    /// Device memory in use on the first device after the run, the runtime still alive (CUDA).
    mem_after: Option<u64>,
    prefill_s: f64,
    step_ms: Vec<f64>,
    replayed: u64,
    /// Mean time per decode step copying logits to the host (part of `step_ms`).
    logits_ms: f64,
    first_tokens: Vec<u32>,
}

fn run_options(o: &Opts, batch: usize, ctx: usize, graphs: bool) -> RuntimeOptions {
    RuntimeOptions {
        max_seqs: batch,
        context: Some(ctx + o.steps + 1),
        chunk: batch.max(ctx.min(512)),
        kv_dtype: o.kv,
        graphs,
        ..RuntimeOptions::default()
    }
}

/// Prefill `ctx` seeded random tokens into each of `batch` sequences, then decode `steps`.
fn run(model: &Model, o: &Opts, batch: usize, ctx: usize, graphs: bool) -> Result<RunResult> {
    let opts = run_options(o, batch, ctx, graphs);
    let chunk = opts.chunk;
    let mut rt = Runtime::new(model, opts).map_err(merr)?;
    let vocab = model.vocab_size();
    let mut rng = kiln_benches::weights::Rng(o.seed ^ 0xDEC0DE);
    let seqs: Vec<_> = (0..batch).map(|_| rt.add_sequence()).collect();
    let mut last = vec![0u32; batch];
    let t0 = Instant::now();
    for (i, &s) in seqs.iter().enumerate() {
        let prompt: Vec<u32> = (0..ctx)
            .map(|_| 3 + (rng.next_u64() % (vocab as u64 - 3)) as u32)
            .collect();
        for part in prompt.chunks(chunk) {
            let l = rt
                .step(&[SeqInput {
                    seq: s,
                    tokens: part,
                }])
                .map_err(merr)?;
            last[i] = argmax(l.row(0));
        }
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    rt.reset_stats();
    let mut step_ms = Vec::with_capacity(o.steps);
    let mut first_tokens = vec![last[0]];
    for step in 0..o.steps {
        let inputs: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
        let batch_in: Vec<SeqInput<'_>> = seqs
            .iter()
            .zip(&inputs)
            .map(|(&seq, t)| SeqInput { seq, tokens: t })
            .collect();
        let t = Instant::now();
        let l = rt.step(&batch_in).map_err(merr)?;
        step_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(bad) = l.data.iter().position(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "decode step {step}: logit {bad} (row {}) is {}",
                bad / vocab,
                l.data[bad]
            )));
        }
        for (i, t) in last.iter_mut().enumerate() {
            *t = argmax(l.row(i));
        }
        first_tokens.push(last[0]);
    }
    if o.profile {
        let inputs: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
        let batch_in: Vec<SeqInput<'_>> = seqs
            .iter()
            .zip(&inputs)
            .map(|(&seq, t)| SeqInput { seq, tokens: t })
            .collect();
        profile_step(&mut rt, &batch_in, batch)?;
    }
    Ok(RunResult {
        mem_after: mem_in_use(),
        prefill_s,
        step_ms,
        replayed: rt.stats().replayed,
        logits_ms: rt.stats().logits_time.as_secs_f64() * 1e3 / o.steps.max(1) as f64,
        first_tokens,
    })
}

/// One more decode step under the wgpu op profile (kiln_wgpu's `gpu_profile_*`): per pipeline
/// the passes, GPU µs and share of the GPU-busy time, then the step's GPU span and how much of
/// it no pass was running (barriers, idle while the CPU records). wgpu only.
fn profile_step(rt: &mut Runtime, batch_in: &[SeqInput<'_>], batch: usize) -> Result<()> {
    #[cfg(feature = "wgpu")]
    if let Some(be) = kiln_benches::opened_wgpu() {
        if !be.gpu_profile_start()? {
            println!("profile: the adapter has no TIMESTAMP_QUERY");
            return Ok(());
        }
        let r = rt.step(batch_in).map(|_| ());
        let passes = be.gpu_profile_stop()?.unwrap_or_default();
        r.map_err(merr)?;
        let mut by: std::collections::BTreeMap<&str, (usize, f64)> = Default::default();
        for p in &passes {
            let e = by.entry(&p.name).or_default();
            e.0 += 1;
            e.1 += p.end - p.start;
        }
        let busy: f64 = by.values().map(|v| v.1).sum();
        let span = passes.iter().map(|p| p.end).fold(0.0, f64::max);
        let mut rows: Vec<_> = by.into_iter().collect();
        rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        println!(
            "profile batch {batch}: {} passes, GPU span {:.1} µs, busy {:.1} µs ({:.1} %), between passes {:.1} µs",
            passes.len(),
            span * 1e6,
            busy * 1e6,
            100.0 * busy / span.max(1e-12),
            (span - busy) * 1e6
        );
        for (name, (n, t)) in rows {
            println!(
                "profile  {name:<48} {n:>5} passes {:>9.1} µs {:>7.2} µs/pass {:>5.1} %",
                t * 1e6,
                t * 1e6 / n as f64,
                100.0 * t / busy.max(1e-12)
            );
        }
        return Ok(());
    }
    let _ = (rt, batch_in);
    println!("profile batch {batch}: --profile times wgpu steps only");
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// Device memory in use on the first CUDA device (`cuMemGetInfo`), `None` elsewhere.
fn mem_in_use() -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Some(b) = kiln_benches::opened_cuda() {
        return b.memory_in_use().ok();
    }
    None
}

/// Peak device memory in use on the first CUDA device (the transient peaks of first-use
/// tuning included), `None` elsewhere.
fn mem_peak() -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Some(b) = kiln_benches::opened_cuda() {
        return b.memory_peak().ok();
    }
    None
}

/// The memory planner's bytes for the first device of a run (what `Runtime::new`, the model
/// and a tensor-parallel group's collective hold there), reserve 0.
fn planned(
    meta: &ModelMeta,
    group: &[std::sync::Arc<dyn Backend>],
    collective: &[u64],
    o: &Opts,
    batch: usize,
    ctx: usize,
    graphs: bool,
) -> Result<u64> {
    let opts = PlanOptions {
        parallel: if group.len() > 1 {
            PlanParallel::Tensor
        } else {
            PlanParallel::Single
        },
        runtime: run_options(o, batch, ctx, graphs),
        reserve: vec![Reserve::Bytes(0)],
        capacity: None,
        collective: collective.to_vec(),
    };
    let plan = planner::plan(meta, group, &opts).map_err(merr)?;
    Ok(plan.devices.first().map_or(0, |d| d.total()))
}

fn build_model(
    group: &[std::sync::Arc<dyn Backend>],
    o: &Opts,
    p: &Preset,
) -> Result<(Model, ModelMeta)> {
    let be = &group[0];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("weights: {}", synth::how_made(o.wtype, o.seed));
    let t = Instant::now();
    let w = SynthWeights::generate(p, o.wtype, o.seed, threads)?;
    println!(
        "generated {:.2} GB of {} weights on {threads} threads in {:.2} s",
        w.bytes() as f64 / 1e9,
        o.wtype.name(),
        t.elapsed().as_secs_f64()
    );
    let origin = format!("synthetic:{}-{}", p.name, o.wtype.name());
    let t = Instant::now();
    let tok = synth::placeholder_tokenizer(p.vocab, &origin)?;
    let host = w.host_tensors(&origin)?;
    let meta = ModelMeta::from_parts(p.config()?, &host).map_err(merr)?;
    let m = Model::from_parts_on(p.config()?, &host, tok, placement(group)?).map_err(merr)?;
    println!(
        "prepared on {} device(s) from {} in {:.2} s ({:.2} GB on the devices)",
        group.len(),
        be.info().id,
        t.elapsed().as_secs_f64(),
        m.weight_bytes() as f64 / 1e9
    );
    Ok((m, meta))
}

/// One device, or a tensor-parallel group (NCCL for CUDA devices).
fn placement(group: &[std::sync::Arc<dyn Backend>]) -> Result<Placement> {
    if group.len() == 1 {
        return Ok(Placement::single(group[0].clone()));
    }
    #[cfg(feature = "cuda")]
    let collective: Option<std::sync::Arc<dyn kiln_core::Collective>> =
        if group.iter().all(|d| d.id().kind == BackendKind::Cuda) {
            Some(std::sync::Arc::new(kiln_cuda::CudaComm::new(
                group.to_vec(),
            )?))
        } else {
            None
        };
    #[cfg(not(feature = "cuda"))]
    let collective = None;
    Ok(Placement {
        devices: group.to_vec(),
        parallel: Some(Parallel::Tensor),
        collective,
    })
}

fn main() {
    run_main(|| {
        let o = parse()?;
        let mut group = Vec::with_capacity(o.tp);
        for i in 0..o.tp as u32 {
            group.push(open(&Args {
                backend: o.backend,
                device: o.device + i,
                quick: false,
                json: None,
                rotate_bytes: 0,
                types: Vec::new(),
            })?);
        }
        let be = group[0].clone();
        let info = be.info();
        println!(
            "device: {} ({}, {})",
            info.name,
            info.driver,
            info.caps_summary()
        );
        let mib = o.copy_mib.unwrap_or(if o.backend == BackendKind::Cuda {
            1024
        } else {
            64
        });
        // Before the copy test: its buffers stay in the allocator's pool for later use.
        let base_mem = mem_in_use();
        let copy = copy_bandwidth(&*be, mib)?;
        println!(
            "copy ceiling: {:.1} GB/s (device-to-device f32 copy op, {mib} MiB, read+write bytes)",
            copy / 1e9
        );
        let mut meta = None;
        let model = match synth::preset(&o.model) {
            Some(p) => {
                let (m, mt) = build_model(&group, &o, &p)?;
                meta = Some(mt);
                m
            }
            None => {
                let t = Instant::now();
                let m = Model::load_on(
                    &o.model,
                    placement(&group)?,
                    &LoadOptions::default(),
                    &mut |_| {},
                )
                .map_err(merr)?;
                println!(
                    "loaded {} in {:.2} s",
                    m.path().display(),
                    t.elapsed().as_secs_f64()
                );
                m
            }
        };
        if let Some(c) = model.collective() {
            let gb: Vec<String> = c
                .device_bytes()
                .iter()
                .map(|b| format!("{:.3}", *b as f64 / 1e9))
                .collect();
            println!(
                "collective: {} GB held per device (measured when the group was created)",
                gb.join(" / ")
            );
        }
        let cfg = model.config();
        println!(
            "model: {} ({} layers, hidden {}, ffn {}, heads {}/{}, head_dim {}, vocab {}), kv {}",
            cfg.origin,
            cfg.n_layers,
            cfg.hidden,
            cfg.ffn,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            cfg.vocab,
            o.kv.name()
        );
        println!(
            "\n{:>5} {:>5} {:>5} {:>9} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>8}  first greedy tokens (seq 0)",
            "batch",
            "ctx",
            "graph",
            "step ms",
            "tok/s",
            "prefill",
            "W GB",
            "KV GB",
            "GB/s",
            "% copy",
            "roof t/s",
            "logits ms",
            "replayed"
        );
        for (bi, &b) in o.batches.iter().enumerate() {
            let ctx = o.ctx.get(bi).or(o.ctx.first()).copied().unwrap_or(1);
            let mut by_graph = Vec::new();
            for &g in &o.graphs {
                let coll = model
                    .collective()
                    .map(|c| c.device_bytes())
                    .unwrap_or_default();
                // The plan as a user gets it before running (shapes not tuned yet include the
                // tuner's transient buffers), and again after the run (every shape tuned).
                let plan_before = match &meta {
                    Some(mt) => Some(planned(mt, &group, &coll, &o, b, ctx, g)?),
                    None => None,
                };
                #[cfg(feature = "cuda")]
                if let Some(cb) = kiln_benches::opened_cuda() {
                    cb.reset_memory_peak();
                }
                let r = run(&model, &o, b, ctx, g)?;
                if let (Some(base), Some(after), Some(peak), Some(mt), Some(pb)) =
                    (base_mem, r.mem_after, mem_peak(), &meta, plan_before)
                {
                    let plan = planned(mt, &group, &coll, &o, b, ctx, g)?;
                    let used = after.saturating_sub(base);
                    let peak = peak.saturating_sub(base);
                    let pct = |m: u64, p: u64| 100.0 * (m as f64 - p as f64) / p.max(1) as f64;
                    println!(
                        "      memory on {}: planned peak {:.3} GB (plan before the run), measured peak {:.3} GB = {:+.2} %; after the run planned {:.3} GB, in use {:.3} GB = {:+.2} % (above the context's)",
                        be.id(),
                        pb as f64 / 1e9,
                        peak as f64 / 1e9,
                        pct(peak, pb),
                        plan as f64 / 1e9,
                        used as f64 / 1e9,
                        pct(used, plan)
                    );
                }
                let ms = median(&r.step_ms);
                let avg_len = ctx as f64 + (o.steps as f64 + 1.0) / 2.0;
                let (wb, kvb) = step_bytes(&model, b, avg_len, o.kv);
                // Per device: a tensor-parallel group reads its shares at the same time.
                let per_dev = (wb + kvb) / o.tp as f64;
                let gbs = per_dev / (ms * 1e-3);
                let roof_tok = b as f64 / (per_dev / copy);
                let shown: Vec<String> =
                    r.first_tokens.iter().take(8).map(u32::to_string).collect();
                println!(
                    "{b:>5} {ctx:>5} {:>5} {ms:>9.3} {:>10.1} {:>7.0}t/s {:>8.3} {:>8.3} {:>8.1} {:>7.1} {roof_tok:>9.1} {:>9.3} {:>4}/{:<3}  {}",
                    if g { "on" } else { "off" },
                    b as f64 / (ms * 1e-3),
                    (b * ctx) as f64 / r.prefill_s,
                    wb / 1e9,
                    kvb / 1e9,
                    gbs / 1e9,
                    100.0 * gbs / copy,
                    r.logits_ms,
                    r.replayed,
                    o.steps,
                    shown.join(",")
                );
                if let Some(p) = &o.json {
                    append_json(
                        p,
                        &serde_json::json!({
                            "bench": "decode", "model": cfg.origin, "backend": info.id.to_string(),
                            "device": info.name, "batch": b, "graph": g, "ctx": ctx,
                            "steps": o.steps, "step_ms_median": ms, "step_ms": r.step_ms,
                            "tok_s": b as f64 / (ms * 1e-3), "prefill_s": r.prefill_s,
                            "weight_bytes": wb, "kv_bytes": kvb, "gbs": gbs / 1e9,
                            "pct_copy": 100.0 * gbs / copy, "copy_gbs": copy / 1e9,
                            "roofline_tok_s": roof_tok, "replayed": r.replayed, "logits_ms": r.logits_ms,
                            "tokens": r.first_tokens, "tp": o.tp,
                        }),
                    )?;
                }
                by_graph.push((g, ms, r.first_tokens, r.replayed));
            }
            if let [(true, on, t_on, rep), (false, off, t_off, _)] = by_graph.as_slice() {
                let same = if t_on == t_off {
                    "same greedy tokens"
                } else {
                    "GREEDY TOKENS DIFFER between graph on and off"
                };
                let note = if *rep == 0 {
                    " (no step replayed: the backend does not capture)"
                } else {
                    ""
                };
                println!(
                    "      batch {b}: graph on {on:.3} ms vs off {off:.3} ms = {:.2}x{note}; {same}",
                    off / on
                );
            }
        }
        Ok(())
    })
}

fn append_json(p: &std::path::Path, v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::Io {
        path: p.display().to_string(),
        source: e,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(io)?;
    writeln!(f, "{v}").map_err(io)
}
