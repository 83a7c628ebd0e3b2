//! `kiln`: the cross-vendor runner. Subcommands live in `cli/`, one module each.

mod cli;
mod server;

fn main() -> std::process::ExitCode {
    cli::main()
}
