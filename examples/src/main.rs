//! `kiln`: the cross-vendor runner. Subcommands live in `cli/`, one module each.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
