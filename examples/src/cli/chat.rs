//! `kiln chat [MODEL]`: interactive multi-turn chat with the model's chat template (or
//! `--template chatml`), streaming replies. `/exit` or end of input ends the session. Each turn
//! renders the whole conversation; the tokens already in the KV cache are reused, so only the
//! new turn is prefilled.

use std::io::{BufRead, Write};

use kiln_models::chat::{ChatMessage, ChatTemplate};
use kiln_models::{GenerateOptions, Generator, LoadOptions, RuntimeOptions, SamplingParams};

use super::load::{DEFAULT_MODEL, DeviceArgs, load_planned};
use super::run::parse_kv;
use super::{CliError, CliResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TemplateArg {
    /// The model's own template (error if it has none).
    Model,
    /// ChatML (`<|im_start|>role ... <|im_end|>`), llama-server's fallback.
    Chatml,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF file, Hugging Face directory or catalog name.
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "model")]
    pub template: TemplateArg,
    /// A system message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub ctx: Option<usize>,
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv_type: kiln_core::DType,
    #[arg(long)]
    pub no_graph: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: &Args) -> CliResult {
    let place = a.dev.placement()?;
    let name = a.model.as_deref().unwrap_or(DEFAULT_MODEL);
    let ropts = RuntimeOptions {
        context: a.ctx,
        kv_dtype: a.kv_type,
        graphs: !a.no_graph,
        ..RuntimeOptions::default()
    };
    let model = load_planned(name, place, &LoadOptions::default(), &ropts)?;
    let chatml;
    let (template, mut stop) = match a.template {
        TemplateArg::Model => match model.chat_template() {
            Some(t) => (t, Vec::new()),
            None => {
                return Err(CliError::Usage(format!(
                    "{} has no chat template (a base model?); pass --template chatml to use ChatML",
                    model.path().display()
                )));
            }
        },
        TemplateArg::Chatml => {
            chatml = ChatTemplate::chatml()?;
            (&chatml, vec!["<|im_end|>".to_string()])
        }
    };
    stop.dedup();
    let mut g = Generator::new(&model, ropts)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            seed: a.seed,
            ..SamplingParams::default()
        },
        stop,
        ignore_eos: false,
    };
    eprintln!(
        "kiln: chatting with {} on {} ({}); /exit or end of input quits",
        model.path().display(),
        model.devices_label(),
        template.origin()
    );
    let mut messages: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        {
            let mut out = stdout.lock();
            write!(out, "> ")?;
            out.flush()?;
        }
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        if input.trim() == "/exit" {
            break;
        }
        if input.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", input));
        let json: Vec<serde_json::Value> = messages.iter().map(ChatMessage::to_json).collect();
        let ids = template.encode_prompt(model.tokenizer(), &json, true)?;
        let mut out = stdout.lock();
        let mut werr = None;
        let r = g.generate_ids(&ids, &opts, &mut |ev| {
            if werr.is_none()
                && let Err(e) = out.write_all(ev.text.as_bytes()).and_then(|()| out.flush())
            {
                werr = Some(e);
            }
        })?;
        if let Some(e) = werr {
            return Err(e.into());
        }
        writeln!(out)?;
        eprintln!(
            "kiln: {} tokens, TTFT {:.0} ms ({} prefilled), {:.1} tok/s",
            r.generated_ids.len(),
            r.ttft.as_secs_f64() * 1e3,
            r.prefilled,
            r.decode_tok_s()
        );
        messages.push(ChatMessage::new("assistant", r.text.trim().to_string()));
    }
    Ok(())
}
