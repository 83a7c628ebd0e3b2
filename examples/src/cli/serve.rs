//! `kiln serve [MODEL]`: the OpenAI-compatible server (see `src/server`). Binds 127.0.0.1:8080
//! by default; `--port 0` takes a free port. Prints `kiln serve: listening on http://ADDR` on
//! stdout once it accepts connections. Exits 0 after SIGINT/SIGTERM.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use kiln_core::DType;
use kiln_models::engine::{Engine, EngineOptions, ShutdownMode};
use kiln_models::{LoadOptions, RuntimeOptions};

use super::load::{DEFAULT_MODEL, DeviceArgs, load_model};
use super::run::parse_kv;
use super::{CliError, CliResult};
use crate::server::{self, AppState};

/// Engine sizing flags shared by `serve` and `bench serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Most sequences in one step (the batch).
    #[arg(long, default_value_t = 64)]
    pub max_seqs: usize,
    /// Most tokens in one step: decode rows plus prefill chunks.
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Context (tokens per sequence); default: the model's, at most 4096.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// KV blocks in the pool; default: max-seqs sequences of min(context, 1024) tokens each, at
    /// least one full context (longer sequences still run: under full load the engine
    /// preempts and recomputes).
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV cache type.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv_type: DType,
    /// Run decode steps eagerly instead of replaying captured graphs.
    #[arg(long)]
    pub no_graph: bool,
    /// Do not share prompt blocks between requests.
    #[arg(long)]
    pub no_prefix_cache: bool,
}

impl EngineArgs {
    /// Engine options for a model whose own context is `model_ctx` tokens.
    pub fn options(&self, max_queue: usize, model_ctx: usize) -> EngineOptions {
        let ctx = self.ctx.unwrap_or(model_ctx.min(4096)).max(1);
        // At least one full context, so a lone request can always reach it.
        let pool_tokens = (self.max_seqs * ctx.min(1024)).max(ctx);
        EngineOptions {
            runtime: RuntimeOptions {
                max_seqs: self.max_seqs,
                context: self.ctx,
                chunk: self.max_batch_tokens.max(self.max_seqs),
                block_size: self.block_size,
                kv_dtype: self.kv_type,
                kv_blocks: Some(
                    self.kv_blocks
                        .unwrap_or(pool_tokens.div_ceil(self.block_size.max(1))),
                ),
                graphs: !self.no_graph,
                ..RuntimeOptions::default()
            },
            max_batch_tokens: self.max_batch_tokens.max(self.max_seqs),
            max_queue,
            prefix_cache: !self.no_prefix_cache,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF file, Hugging Face directory or catalog name.
    pub model: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests waiting for a slot before new ones get HTTP 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// The model name clients use (default: the file or directory name, or the catalog name).
    #[arg(long)]
    pub served_name: Option<String>,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10.0)]
    pub grace_s: f64,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// The default served name: the last path component without a `.gguf` extension.
fn served_name(model: &str) -> String {
    let p = std::path::Path::new(model.trim_end_matches('/'));
    let name = p
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| model.to_string());
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

pub fn run(a: &Args) -> CliResult {
    let name = a.model.as_deref().unwrap_or(DEFAULT_MODEL);
    let backend = a.dev.open()?;
    let model = Arc::new(load_model(name, backend, &LoadOptions::default())?);
    let engine = Engine::start(
        model.clone(),
        a.engine.options(a.max_queue, model.config().context_length),
    )?;
    let st = engine.stats();
    eprintln!(
        "kiln serve: {} on {}; context {}, {} KV blocks of {} tokens, {} sequences per step",
        model.path().display(),
        model.backend().id(),
        engine.context(),
        st.blocks.total,
        a.engine.block_size,
        a.engine.max_seqs
    );
    let state = Arc::new(AppState {
        engine,
        model,
        served: a.served_name.clone().unwrap_or_else(|| served_name(name)),
        alias: name.to_string(),
        created: crate::server::routes::now(),
        next_id: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    let grace = Duration::from_secs_f64(a.grace_s.max(0.0));
    let addr = format!("{}:{}", a.host, a.port);
    let served = state.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| CliError::Usage(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr()?;
        let mut out = std::io::stdout();
        writeln!(out, "kiln serve: listening on http://{local}")?;
        out.flush()?;
        server::serve(listener, served, grace).await?;
        Ok::<(), CliError>(())
    })?;
    drop(rt);
    // In-flight requests that outlived the grace period are cancelled here.
    match Arc::try_unwrap(state) {
        Ok(s) => s.engine.shutdown(ShutdownMode::Cancel),
        Err(s) => drop(s),
    }
    eprintln!("kiln serve: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_names() {
        assert_eq!(served_name("/a/b/model-q8_0.gguf"), "model-q8_0");
        assert_eq!(served_name("/zoo/llama3/"), "llama3");
        assert_eq!(served_name("gemma3-270m"), "gemma3-270m");
    }
}
