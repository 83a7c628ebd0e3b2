//! `kiln run [MODEL] [PROMPT]`: generate a completion. Text mode streams tokens to stdout and
//! prints load time, time to first token, decode speed and the decode step time (captured
//! graph or eager) to stderr; `--format json` prints one JSON object with `prompt_ids`,
//! `generated_ids`, `text`, `load_s`, `ttft_s`, `decode_tok_s` (and a few more keys).
//!
//! The prompt is tokenized like llama.cpp's completion endpoint: BOS as the model's metadata
//! says, special-token text parsed.

use std::io::{IsTerminal, Read, Write};

use kiln_core::DType;
use kiln_models::{GenerateOptions, Generator, LoadOptions, RuntimeOptions, SamplingParams};
use serde_json::json;

use super::load::{DEFAULT_MODEL, DeviceArgs, load_planned};
use super::{CliError, CliResult, Format};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF file, Hugging Face directory or catalog name (gemma3-270m, qwen2.5-coder-0.5b).
    pub model: Option<String>,
    /// The prompt; read from stdin when absent and stdin is not a terminal.
    pub prompt: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Context (tokens) to plan for; default: the model's, at most 4096.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// KV cache type.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv_type: DType,
    /// Run the decode step eagerly instead of replaying a captured graph.
    #[arg(long)]
    pub no_graph: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn parse_kv(s: &str) -> Result<DType, String> {
    match DType::parse(s) {
        Some(d @ (DType::F32 | DType::F16 | DType::BF16)) => Ok(d),
        _ => Err(format!("'{s}' is not a KV cache type (f16, bf16, f32)")),
    }
}

pub fn run(a: &Args) -> CliResult {
    let prompt = match &a.prompt {
        Some(p) => p.clone(),
        None if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        None => "Once upon a time".to_string(),
    };
    let place = a.dev.placement()?;
    let name = a.model.as_deref().unwrap_or(DEFAULT_MODEL);
    let ropts = RuntimeOptions {
        context: a.ctx,
        kv_dtype: a.kv_type,
        graphs: !a.no_graph,
        ..RuntimeOptions::default()
    };
    let model = load_planned(name, place, &LoadOptions::default(), &ropts)?;
    let load_s = model.load_time().as_secs_f64();
    let text_mode = a.format == Format::Text;
    if text_mode {
        let c = model.config();
        eprintln!(
            "kiln: {} ({}, {} layers, vocab {}) on {} in {load_s:.2} s",
            model.path().display(),
            c.arch_name,
            c.n_layers,
            c.vocab,
            model.devices_label()
        );
    }
    let ids = model.tokenizer().encode_prompt(&prompt)?;
    let ctx = ropts
        .context
        .unwrap_or(model.config().context_length.min(4096));
    if ids.len() >= ctx {
        return Err(CliError::Usage(format!(
            "the prompt has {} tokens; the context is {ctx} (use --ctx)",
            ids.len()
        )));
    }
    let mut g = Generator::new(&model, ropts)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repeat_penalty,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            seed: a.seed,
            ..SamplingParams::default()
        },
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let result = g.generate_ids(&ids, &opts, &mut |ev| {
        if text_mode
            && write_err.is_none()
            && let Err(e) = out.write_all(ev.text.as_bytes()).and_then(|()| out.flush())
        {
            write_err = Some(e);
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let stats = g.stats();
    let graph = stats.replayed > 0;
    match a.format {
        Format::Text => {
            writeln!(out)?;
            eprintln!(
                "kiln: load {load_s:.2} s; prompt {} tokens, TTFT {:.1} ms; {} tokens at {:.2} tok/s; decode step {:.2} ms ({}); stop: {}",
                ids.len(),
                result.ttft.as_secs_f64() * 1e3,
                result.generated_ids.len(),
                result.decode_tok_s(),
                stats.decode_ms(),
                if graph { "graph replay" } else { "eager" },
                stop_name(&result.stop_reason),
            );
        }
        Format::Json => {
            let v = json!({
                "prompt_ids": result.prompt_ids,
                "generated_ids": result.generated_ids,
                "text": result.text,
                "load_s": load_s,
                "ttft_s": result.ttft.as_secs_f64(),
                "decode_tok_s": result.decode_tok_s(),
                "decode_step_ms": stats.decode_ms(),
                "graph": graph,
                "stop_reason": stop_name(&result.stop_reason),
                "device": model.devices_label(),
            });
            writeln!(out, "{v}")?;
        }
    }
    out.flush()?;
    Ok(())
}

pub fn stop_name(r: &Option<kiln_models::StopReason>) -> String {
    use kiln_models::StopReason::*;
    match r {
        Some(Eos) => "eos".into(),
        Some(Stop(s)) => format!("stop string {s:?}"),
        Some(MaxTokens) => "max_tokens".into(),
        Some(Context) => "context".into(),
        None => "none".into(),
    }
}
