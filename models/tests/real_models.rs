//! Real models through the catalog (gemma3-270m and qwen2.5-coder-0.5b, Q4_K_M GGUF) against
//! llama.cpp's greedy runs in shared/testdata/real, following its README's caveats:
//! - teacher forcing: prompt + llama.cpp's generated ids are prefilled, and at each generated
//!   position kiln's argmax must equal llama.cpp's token up to
//!   `first_pos_top2_margin_below.logprob_0.5` (the whole sequence when null), and be in
//!   llama.cpp's top-5 everywhere;
//! - log-probabilities of llama.cpp's top-5 tokens (those above e^-10): median ≤ 0.25 nats,
//!   ≤ 5% above 0.6, none above 1.0, llama.cpp's chosen token within 0.35 (llama.cpp itself
//!   carries 0.04–0.6 nats of error: Q8 activations, f16 KV cache, an f16 GELU table);
//! - greedy decoding through the generator (decode path) follows the same rule.
//!
//! Where llama.cpp itself is off, an independent f32 forward decides: an entry of llama.cpp's
//! top-5 that the forward in tests/data/real_oracle.json (tests/scripts/real_oracle_gemma3.py:
//! numpy over gguf-py-dequantized weights) puts more than LOOSE nats away is judged against that
//! forward instead (gemma3-270m long_context_2k position 14, token 236771: llama.cpp −6.433,
//! the numpy forward −8.550, kiln −8.550/−8.543 with an f32/f16 KV cache).
//!
//! A model that is not in the catalog cache is skipped with a message (CI runs with an empty
//! cache); `KILN_REQUIRE_MODELS=1` fetches it instead and fails if it cannot. The 2k-token case
//! prefills without logits up to the checked rows (`Runtime::feed`): 40 s (gemma3) and about
//! 2–4 min (qwen2.5) on the reference backend here. CPU Vulkan adapters (lavapipe) are skipped
//! unless KILN_TEST_BACKENDS names wgpu (a decode step takes seconds there).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod zoo_util;

/// Logprob tolerances (nats) for llama.cpp's top-5 entries with logprob ≥ TAIL. llama.cpp is
/// not exact: real/README measured it 0.04–0.60 nats from an independent f32 forward on
/// positions 0..9, and MODELS.md §4.7 reports that forward matching llama.cpp's gemma3 top-5 to
/// a median of 0.13–0.24 nats. So: median ≤ 0.25, at most 5% of entries above 0.6, none above
/// 1.0, llama.cpp's chosen token within 0.35 (measured here: medians 0.03–0.10, worst entry
/// 0.97 at gemma3 fibonacci_code position 17 rank 3, 7 of its 226 entries above 0.6).
const LOOSE: f64 = 0.6;
const LOOSE_SHARE_PERCENT: usize = 5;
const MAX_LOGPROB: f64 = 1.0;
const MEDIAN_LOGPROB: f64 = 0.25;
const MAX_TOP1: f64 = 0.35;
const TAIL: f64 = -10.0;

use std::path::{Path, PathBuf};

use kiln_models::runtime::SeqInput;
use kiln_models::{
    GenerateOptions, Generator, LoadOptions, Model, Runtime, RuntimeOptions, SamplingParams,
    catalog,
};
use zoo_util::*;

fn real_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/real")
}

/// The cached catalog model, fetched only with KILN_REQUIRE_MODELS=1.
fn model_path(name: &str) -> Option<PathBuf> {
    let entry = catalog::find(name)?;
    let cached = catalog::cached_path(entry);
    if cached.is_file() {
        return Some(cached);
    }
    if std::env::var("KILN_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        return Some(
            catalog::resolve(name).unwrap_or_else(|e| panic!("KILN_REQUIRE_MODELS=1: {e}")),
        );
    }
    println!(
        "skipped: {name} is not in the model cache ({}); set KILN_REQUIRE_MODELS=1 to fetch it",
        cached.display()
    );
    None
}

struct Step {
    chosen: u32,
    /// llama.cpp's top-5 (id, logprob).
    top5: Vec<(u32, f64)>,
}

struct Case {
    name: String,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    steps: Vec<Step>,
    /// Exact argmax required before this position (None: everywhere).
    exact_until: Option<usize>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `KILN_REAL_CASES=a,b` runs only those teacher-forced cases (hand runs on slow backends);
/// the greedy decode pass always runs.
fn selected(case: &str) -> bool {
    std::env::var("KILN_REAL_CASES").map_or(true, |v| v.split(',').any(|c| c.trim() == case))
}

fn cases(file: &str) -> Vec<Case> {
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(real_dir().join(file)).unwrap()).unwrap();
    r["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            prompt: ids(&c["prompt_token_ids"]),
            generated: ids(&c["generated_token_ids"]),
            steps: c["per_step_summary"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Step {
                    chosen: s["chosen_id"].as_u64().unwrap() as u32,
                    top5: s["top5_id_logprob_prob"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| (t[0].as_u64().unwrap() as u32, t[1].as_f64().unwrap()))
                        .collect(),
                })
                .collect(),
            exact_until: c["first_pos_top2_margin_below"]["logprob_0.5"]
                .as_u64()
                .map(|v| v as usize),
        })
        .collect()
}

/// The independent forward's log-probability of `id` at generated position `pos` of `case`.
fn oracle(model: &str, case: &str, pos: usize, id: u32) -> Option<f64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/real_oracle.json");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let c = r["cases"]
        .as_array()?
        .iter()
        .find(|c| c["model"] == model && c["case"] == case)?;
    let step = c["steps"].as_array()?.iter().find(|s| s["pos"] == pos)?;
    step["top5"]
        .as_array()?
        .iter()
        .find(|t| t[0] == id)
        .and_then(|t| t[1].as_f64())
}

fn log_softmax_at(row: &[f32], ids: &[u32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    ids.iter()
        .map(|&i| row[i as usize] as f64 - max - z.ln())
        .collect()
}

/// Teacher-forced check of every case; returns a failure list.
fn check_model(name: &str, file: &str) {
    let Some(path) = model_path(name) else { return };
    let mut failures = Vec::new();
    for (bname, backend) in gpu_or_reference_backends() {
        let t0 = std::time::Instant::now();
        let model = Model::load(
            path.to_str().unwrap(),
            backend.clone(),
            &LoadOptions::default(),
        )
        .unwrap();
        println!(
            "{bname} {name}: loaded in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let vocab = model.vocab_size();
        for c in cases(file) {
            if !selected(&c.name) {
                println!("{bname} {name} {}: not in KILN_REAL_CASES", c.name);
                continue;
            }
            let all: Vec<u32> = c.prompt.iter().chain(&c.generated).copied().collect();
            let chunk = 64;
            let mut rt = Runtime::new(
                &model,
                RuntimeOptions {
                    chunk,
                    context: Some(all.len()),
                    all_logits: true,
                    ..RuntimeOptions::default()
                },
            )
            .unwrap();
            let s = rt.add_sequence();
            let t0 = std::time::Instant::now();
            let first = c.prompt.len() - 1; // row predicting generated[0]
            let mut rows: Vec<Vec<f32>> = Vec::new();
            let mut at = 0;
            for part in all.chunks(chunk) {
                if at + part.len() <= first {
                    // No row of this chunk is checked: no LM head (feed).
                    rt.feed(&[SeqInput {
                        seq: s,
                        tokens: part,
                    }])
                    .unwrap();
                    at += part.len();
                    continue;
                }
                let l = rt
                    .step(&[SeqInput {
                        seq: s,
                        tokens: part,
                    }])
                    .unwrap();
                for i in 0..l.rows {
                    if at + i >= first && at + i < first + c.steps.len() {
                        rows.push(l.row(i).to_vec());
                    }
                }
                at += part.len();
            }
            let (mut exact_ok, mut in_top5, mut worst_lp, mut worst_top1) = (0, 0, 0f64, 0f64);
            let mut worst_at = (0, 0, 0f64, 0f64);
            let mut deltas = Vec::new();
            let mut first_miss = None;
            for (i, (step, row)) in c.steps.iter().zip(&rows).enumerate() {
                assert_eq!(row.len(), vocab);
                let am = argmax(row) as u32;
                let ref_ids: Vec<u32> = step.top5.iter().map(|t| t.0).collect();
                let lp = log_softmax_at(row, &ref_ids);
                for (k, (&(id, want), got)) in step.top5.iter().zip(&lp).enumerate() {
                    let want = match oracle(name, &c.name, i, id) {
                        Some(o) if (o - want).abs() > LOOSE => {
                            println!(
                                "{bname} {name} {} pos {i} token {id}: llama.cpp {want:.3} is {:.3} from the independent f32 forward ({o:.3}); kiln {got:.3} is judged against the forward",
                                c.name,
                                (o - want).abs()
                            );
                            o
                        }
                        _ => want,
                    };
                    let d = (want - got).abs();
                    if want < TAIL {
                        continue; // p < e^-10: relative logit noise dominates
                    }
                    deltas.push(d);
                    if d > worst_lp {
                        worst_at = (i, k, want, *got);
                    }
                    worst_lp = worst_lp.max(d);
                    if k == 0 {
                        worst_top1 = worst_top1.max(d);
                    }
                }
                if ref_ids.contains(&am) {
                    in_top5 += 1;
                } else {
                    failures.push(format!("{bname} {name} {} pos {i}: kiln's argmax {am} is not in llama.cpp's top-5 {ref_ids:?}", c.name));
                }
                let must = c.exact_until.is_none_or(|u| i < u);
                if am == step.chosen {
                    exact_ok += 1;
                } else if first_miss.is_none() {
                    first_miss = Some(i);
                    if must {
                        failures.push(format!("{bname} {name} {} pos {i}: argmax {am} != llama.cpp's {} (exact required before {:?})", c.name, step.chosen, c.exact_until));
                    }
                }
            }
            deltas.sort_by(f64::total_cmp);
            let median = deltas.get(deltas.len() / 2).copied().unwrap_or(0.0);
            println!(
                "{bname} {name} {:<28} {:>4}+{:<3} tokens {:>6.1} s: top-1 = llama.cpp {exact_ok}/{n} (first miss {first_miss:?}, exact required before {:?}), in top-5 {in_top5}/{n}, |Δlogprob| top-5 median {median:.3} max {worst_lp:.3} (pos {}, rank {}: llama.cpp {:.3}, kiln {:.3}), top-1 max {worst_top1:.3}",
                c.name,
                c.prompt.len(),
                c.generated.len(),
                t0.elapsed().as_secs_f64(),
                c.exact_until,
                worst_at.0,
                worst_at.1,
                worst_at.2,
                worst_at.3,
                n = c.steps.len(),
            );
            let over = deltas.iter().filter(|&&d| d > LOOSE).count();
            if worst_lp > MAX_LOGPROB
                || over * 100 > deltas.len() * LOOSE_SHARE_PERCENT
                || median > MEDIAN_LOGPROB
                || worst_top1 > MAX_TOP1
            {
                failures.push(format!(
                    "{bname} {name} {}: top-5 logprobs max |Δ| {worst_lp:.3} (≤ {MAX_LOGPROB}), {over} of {} above {LOOSE} (≤ {LOOSE_SHARE_PERCENT}%), median {median:.3} (≤ {MEDIAN_LOGPROB}), llama.cpp's token {worst_top1:.3} (≤ {MAX_TOP1})",
                    c.name,
                    deltas.len()
                ));
            }
        }
        // The decode path: greedy generation of the first case.
        let c = &cases(file)[1];
        let mut g = Generator::new(&model, RuntimeOptions::default()).unwrap();
        let o = GenerateOptions {
            max_tokens: 16,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        };
        let out = g.generate_ids(&c.prompt, &o, &mut |_| {}).unwrap();
        let same = out
            .generated_ids
            .iter()
            .zip(&c.generated)
            .take_while(|(a, b)| a == b)
            .count();
        let st = g.stats();
        println!(
            "{bname} {name} greedy decode {}: {same}/16 tokens equal llama.cpp's; TTFT {:.0} ms, {:.2} tok/s, decode step {:.1} ms",
            c.name,
            out.ttft.as_secs_f64() * 1e3,
            out.decode_tok_s(),
            st.decode_ms()
        );
        let need = c.exact_until.unwrap_or(16).min(16);
        if same < need {
            failures.push(format!(
                "{bname} {name} greedy {}: only {same} tokens equal, {need} required",
                c.name
            ));
        } else if same < 16
            && !c.steps[same]
                .top5
                .iter()
                .any(|t| t.0 == out.generated_ids[same])
        {
            failures.push(format!(
                "{bname} {name} greedy {}: token {same} not in llama.cpp's top-5",
                c.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn real_gemma3_270m_matches_llama_cpp() {
    check_model("gemma3-270m", "gemma3-270m.json");
}

#[test]
fn real_qwen25_coder_05b_matches_llama_cpp() {
    check_model("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b.json");
}
