//! The one error type of the `kiln` command. `main` prints it as a single `kiln: ...` line.

use kiln_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Model(#[from] ModelError),

    #[error(transparent)]
    Core(#[from] kiln_core::Error),

    /// Writing to stdout failed (a closed pipe is handled quietly by `main`).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),

    /// A bad argument combination that clap cannot express.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;
