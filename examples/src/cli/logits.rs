//! `kiln logits MODEL --ids 1,2,3 --out FILE`: little-endian f32 logits for every position,
//! shape `[n_ids, vocab]`, computed by prefilling the ids in chunks (f32 KV cache by default,
//! so the numbers are the runtime's f32 forward).

use std::io::Write;

use kiln_models::runtime::SeqInput;
use kiln_models::{LoadOptions, Runtime, RuntimeOptions};

use super::load::{DeviceArgs, load_planned};
use super::run::parse_kv;
use super::{CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF file, Hugging Face directory or catalog name.
    pub model: String,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<u32>,
    /// Output file.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Rows per prefill step.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    #[arg(long, default_value = "f32", value_parser = parse_kv)]
    pub kv_type: kiln_core::DType,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: &Args) -> CliResult {
    if a.ids.is_empty() || a.chunk == 0 {
        return Err(CliError::Usage(
            "--ids needs at least one id and --chunk must be > 0".into(),
        ));
    }
    let ropts = RuntimeOptions {
        chunk: a.chunk,
        context: Some(a.ids.len()),
        all_logits: true,
        kv_dtype: a.kv_type,
        ..RuntimeOptions::default()
    };
    let model = load_planned(
        &a.model,
        a.dev.placement()?,
        &LoadOptions::default(),
        &ropts,
    )?;
    let vocab = model.vocab_size();
    if let Some(bad) = a.ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(CliError::Usage(format!(
            "--ids: token {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let mut rt = Runtime::new(&model, ropts)?;
    let seq = rt.add_sequence();
    let file = std::fs::File::create(&a.out)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", a.out.display())))?;
    let mut w = std::io::BufWriter::new(file);
    for part in a.ids.chunks(a.chunk) {
        let l = rt.step(&[SeqInput { seq, tokens: part }])?;
        for x in l.data {
            w.write_all(&x.to_le_bytes())?;
        }
    }
    w.flush()?;
    eprintln!(
        "kiln: wrote {} × {vocab} f32 logits to {}",
        a.ids.len(),
        a.out.display()
    );
    Ok(())
}
