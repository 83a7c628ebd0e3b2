//! The one error type of kiln-models. Every message starts with the file (or directory) it is
//! about and names the field, key or tensor involved, so a command can print it as one line.

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened, read or mapped.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },

    /// The file is malformed or of an unsupported kind; `msg` names the field and the problem.
    #[error("{file}: {msg}")]
    Format { file: String, msg: String },

    /// A metadata key is missing or holds a value of the wrong type or range.
    #[error("{file}: key '{key}': {msg}")]
    Metadata {
        file: String,
        key: String,
        msg: String,
    },

    /// A tensor's description or data is invalid.
    #[error("{file}: tensor '{name}': {msg}")]
    Tensor {
        file: String,
        name: String,
        msg: String,
    },

    /// The tensor exists but its element type is one kiln cannot use (reported when used).
    #[error("{file}: tensor '{name}' has type {type_name}, which kiln does not support")]
    UnsupportedType {
        file: String,
        name: String,
        type_name: String,
    },

    /// No tensor of that name in the file (or in any shard of the model).
    #[error("{file}: no tensor named '{name}'")]
    NoTensor { file: String, name: String },

    /// A tokenizer could not be built, or could not encode or decode (bad vocabulary data,
    /// an unsupported tokenizer type, an id out of range). `origin` is the file it came from.
    #[error("{origin}: tokenizer: {msg}")]
    Tokenizer { origin: String, msg: String },

    /// A chat template could not be found, parsed or rendered.
    #[error("{origin}: chat template: {msg}")]
    ChatTemplate { origin: String, msg: String },

    /// A model name could not be resolved or fetched into the cache (catalog.rs).
    #[error("model '{name}': {msg}")]
    Fetch { name: String, msg: String },

    /// A backend operation failed (allocation, upload, an op); `what` says what the runtime
    /// was doing (which tensor, layer or step).
    #[error("{what}: {source}")]
    Backend {
        what: String,
        source: kiln_core::Error,
    },

    /// A request the runtime cannot serve (context full, a token id outside the vocabulary,
    /// an option out of range).
    #[error("{0}")]
    Runtime(String),

    /// The engine's request queue is full (engine/): the caller should retry later (HTTP 429).
    #[error("the request queue is full ({max} requests waiting); retry later")]
    QueueFull { max: usize },

    /// A model name the registry does not serve (engine/registry.rs); `known` lists the names.
    #[error("unknown model '{name}' (served: {known})")]
    UnknownModel { name: String, known: String },

    /// A model cannot get its memory under the registry's budget even after evicting every
    /// idle model (engine/registry.rs). Bytes on `device`: the model `needs`, the `budget`,
    /// and what models that cannot be evicted now (in use, loading) hold (`pinned`, by `held_by`).
    #[error(
        "model '{model}' does not fit on {device}: it needs {need} bytes, the budget is {budget} \
         bytes and {pinned} bytes are held by models in use or loading ({held_by}); evicting \
         every idle model frees at most {free_at_most} bytes"
    )]
    NoRoom {
        model: String,
        device: String,
        need: u64,
        budget: u64,
        pinned: u64,
        held_by: String,
        free_at_most: u64,
    },
}

impl ModelError {
    pub(crate) fn format(file: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Format {
            file: file.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn tensor(file: &str, name: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Tensor {
            file: file.to_string(),
            name: name.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn metadata(file: &str, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Metadata {
            file: file.to_string(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn backend(what: impl Into<String>, source: kiln_core::Error) -> ModelError {
        ModelError::Backend {
            what: what.into(),
            source,
        }
    }
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
