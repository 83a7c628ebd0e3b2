//! The `kiln` command line: one module per subcommand, each with a clap `Args` struct and a
//! `run(args) -> CliResult` function. To add a subcommand: add its module here, a variant to
//! [`Command`], and a line to the dispatch in [`main`].

pub mod bench;
pub mod chat;
pub mod devices;
pub mod error;
pub mod inspect;
pub mod load;
pub mod logits;
pub mod out;
pub mod plan;
pub mod run;
pub mod serve;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use error::{CliError, CliResult};

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "kiln: kernel-first LLM inference across CUDA, wgpu and the reference backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List detected backends and devices (name, vendor, memory, capabilities).
    Devices(devices::Args),
    /// Show a GGUF file, a safetensors file or index, or an HF model directory: metadata and
    /// tensor table.
    Inspect(inspect::Args),
    /// Generate a completion (MODEL defaults to gemma3-270m, fetched on first use).
    Run(run::Args),
    /// Interactive chat with the model's chat template.
    Chat(chat::Args),
    /// Write f32 logits of every position of --ids to a file.
    Logits(logits::Args),
    /// OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, /health.
    Serve(serve::Args),
    /// Benchmarks: `kiln bench serve` (concurrent streams: output tok/s, TTFT, inter-token latency).
    Bench(bench::Args),
    /// Memory plan of a model on devices (weights, KV, activations, workspace, reserve, layer
    /// split) from metadata only; exits 1 with the numbers when it does not fit.
    Plan(plan::Args),
}

/// `--format text|json`, shared by subcommands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Parse the command line, run the subcommand, and map the outcome to an exit code: errors are
/// printed as one `kiln: <message>` line on stderr with exit code 1; usage errors are clap's
/// (exit code 2); a closed stdout pipe ends the program quietly.
pub fn main() -> ExitCode {
    install_panic_hook();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices(a) => devices::run(&a),
        Command::Inspect(a) => inspect::run(&a),
        Command::Run(a) => run::run(&a),
        Command::Chat(a) => chat::run(&a),
        Command::Logits(a) => logits::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Plan(a) => plan::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "kiln: {}", out::one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// A panic is a kiln bug; still, report it as one line without a backtrace dump.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "kiln: internal error: {}{at}",
            out::one_line(&msg)
        );
    }));
}

/// Run `f` with panic messages silenced (for provider probes, whose panics `discover` catches
/// and reports as "not found"), then restore the `kiln` hook.
pub fn with_quiet_panics<T>(f: impl FnOnce() -> T) -> T {
    std::panic::set_hook(Box::new(|_| {}));
    let r = f();
    install_panic_hook();
    r
}
