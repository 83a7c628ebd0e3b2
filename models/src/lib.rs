//! kiln-models: model file readers (GGUF, safetensors, Hugging Face directories).
//!
//! Every reader memory-maps its file, validates all of it (sizes, offsets, alignment, types,
//! shapes) before handing anything out, and reports a malformed file as a [`ModelError`] that
//! names the file and the field; no input makes a reader panic or read out of bounds. Each
//! reader also parses from bytes in memory (`from_bytes`), which is what the fuzz targets in
//! `models/fuzz` drive.

pub mod arch;
pub mod catalog;
pub mod chat;
pub mod engine;
pub mod error;
pub mod format;
pub mod planner;
pub mod runtime;
pub mod tokenizer;

pub use arch::{Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use format::gguf::{GgufArray, GgufFile, GgufTensorInfo, GgufType, GgufValue, Metadata};
pub use format::hf_dir::HfDir;
pub use format::safetensors::{
    SafetensorsFile, SafetensorsModel, SafetensorsTensorInfo, ShardIndex, parse_index,
};
pub use format::{ModelFormat, detect};
pub use runtime::{
    BackendChoice, GenerateOptions, Generation, Generator, LoadOptions, Model, Runtime,
    RuntimeOptions, SamplingParams, StopReason, TokenEvent, open_backend,
};
pub use tokenizer::{GgufVocab, StreamDecoder, Tokenizer};
