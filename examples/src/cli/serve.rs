//! `kiln serve [MODEL...]`: the OpenAI-compatible server (see `src/server`). Each MODEL is
//! served under its name (the file or directory name, the catalog name, or `--name`); a
//! request's `model` picks one (no `model`: the first). The models share one byte budget per
//! device (`--budget`, default `auto`), decided from the memory planner's footprints before
//! loading: a model not loaded is loaded on demand, after evicting idle models least recently
//! used first when it does not fit (src/server/setup.rs). With several `--devices`, every model
//! is spread over all of them (`--parallel layer|tensor`). Binds
//! 127.0.0.1:8080 by default; `--port 0` takes a free port. Prints `kiln serve: listening on
//! http://ADDR` on stdout once it accepts connections. Exits 0 after SIGINT/SIGTERM.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use kiln_core::DType;
use kiln_models::RuntimeOptions;
use kiln_models::engine::EngineOptions;

use super::load::{DEFAULT_MODEL, DeviceArgs};
use super::run::parse_kv;
use super::{CliError, CliResult};
use crate::server::setup::{self, Budget, ModelArg};
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
    /// GGUF files, Hugging Face directories or catalog names (default: gemma3-270m).
    pub models: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests waiting for a slot before new ones get HTTP 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// The name clients use for each MODEL, in order (default: the file or directory name, or
    /// the catalog name). Repeat it for several models.
    #[arg(long = "name", alias = "served-name")]
    pub names: Vec<String>,
    /// Bytes the models may hold together on each device: `auto` (its memory less 5%) or a
    /// size like 8GiB, 500MB, 1000000. A model that does not fit next to the loaded ones
    /// evicts idle ones, least recently used first.
    #[arg(long, default_value = "auto")]
    pub budget: Budget,
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
    let sources: Vec<String> = if a.models.is_empty() {
        vec![DEFAULT_MODEL.to_string()]
    } else {
        a.models.clone()
    };
    if a.names.len() > sources.len() {
        return Err(CliError::Usage(format!(
            "kiln serve: {} --name for {} models",
            a.names.len(),
            sources.len()
        )));
    }
    let models: Vec<ModelArg> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| ModelArg {
            source: s.clone(),
            name: a.names.get(i).cloned().unwrap_or_else(|| served_name(s)),
        })
        .collect();
    let place = a.dev.placement()?;
    let devices: Vec<String> = place.devices.iter().map(|d| d.id().to_string()).collect();
    let fleet = setup::build(&models, &place, a.budget, &|ctx| {
        a.engine.options(a.max_queue, ctx)
    })?;
    let first = fleet.registry.inspect(&fleet.default, |s| {
        (
            s.model.path().display().to_string(),
            s.engine.context(),
            s.engine.stats().blocks.total,
        )
    });
    if let Some((path, ctx, blocks)) = first {
        eprintln!(
            "kiln serve: {path} on {}; context {ctx}, {blocks} KV blocks of {} tokens, {} sequences per step",
            devices.join(","),
            a.engine.block_size,
            a.engine.max_seqs
        );
    }
    if models.len() > 1 {
        let budget: Vec<String> = fleet
            .registry
            .budget()
            .iter()
            .map(|(d, b)| format!("{b} bytes on {d}"))
            .collect();
        eprintln!(
            "kiln serve: {} models ({}) under a budget of {}",
            models.len(),
            fleet.registry.names().join(", "),
            budget.join(", ")
        );
    }
    let state = Arc::new(AppState {
        registry: fleet.registry,
        default: fleet.default,
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
    // Dropping the runtime drops the in-flight requests (and their leases); dropping the
    // registry then stops every engine, cancelling what outlived the grace period.
    drop(rt);
    drop(state);
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
