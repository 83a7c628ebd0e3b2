//! The tokenizer part of a GGUF file's metadata, as a plain struct (`GgufVocab`), and its
//! extraction from a [`GgufFile`](crate::GgufFile).
//!
//! Every field that a GGUF may omit is an `Option`, so that the per-model-type defaults of
//! llama.cpp apply when the key is absent (MODELS.md §6.2) rather than a value guessed here.

use crate::error::{ModelError, Result};
use crate::format::gguf::{GgufArray, GgufFile};

/// `tokenizer.ggml.token_type` values (gguf-py constants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    /// The type of a raw `token_type` value; unknown values are `Undefined` (as llama.cpp).
    pub fn from_raw(v: i32) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// The tokenizer metadata of a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Clone, Debug, Default)]
pub struct GgufVocab {
    /// Where the vocabulary came from, for error messages (usually the file path).
    pub origin: String,
    /// `tokenizer.ggml.model`: `llama` (SentencePiece-style) or `gpt2` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer (`gpt-2`, `llama-bpe`, `qwen2`, `default`...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, one string per id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priorities); absent means all 0.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (raw gguf values, see [`TokenType`]); absent means all normal.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges` ("left right" strings in rank order; BPE only).
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub sep_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token` / `add_space_prefix` when present.
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template` (the default template) when present.
    pub chat_template: Option<String>,
    /// `general.name` (llama.cpp sets per-token strip flags for Phi-3 by name).
    pub model_name: Option<String>,
}

impl GgufVocab {
    /// Read the tokenizer metadata of an opened GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<GgufVocab> {
        let origin = file.path().to_string();
        let meta = file.metadata();
        let bad = |key: &str, want: &str, arr: &GgufArray| {
            ModelError::metadata(
                &origin,
                key,
                format!(
                    "expected an array of {want}, found an array of {}",
                    arr.elem_type().name()
                ),
            )
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>> {
            match meta.opt_arr(key)? {
                None => Ok(None),
                Some(a) => a
                    .as_strs()
                    .map(|v| Some(v.to_vec()))
                    .ok_or_else(|| bad(key, "strings", a)),
            }
        };
        let model = meta.get_str("tokenizer.ggml.model")?.to_string();
        let tokens = strings("tokenizer.ggml.tokens")?.ok_or_else(|| {
            ModelError::metadata(
                &origin,
                "tokenizer.ggml.tokens",
                "missing: the file has no vocabulary",
            )
        })?;
        let scores_key = "tokenizer.ggml.scores";
        let scores = match meta.opt_arr(scores_key)? {
            None => None,
            Some(GgufArray::F32(v)) => Some(v.clone()),
            Some(GgufArray::I32(v)) => Some(v.iter().map(|&x| x as f32).collect()),
            Some(a) => return Err(bad(scores_key, "f32", a)),
        };
        let types_key = "tokenizer.ggml.token_type";
        let token_types = match meta.opt_arr(types_key)? {
            None => None,
            Some(a) => Some(
                a.as_i32s()
                    .ok_or_else(|| bad(types_key, "i32", a))?
                    .to_vec(),
            ),
        };
        let text =
            |key: &str| -> Result<Option<String>> { Ok(meta.opt_str(key)?.map(String::from)) };
        Ok(GgufVocab {
            origin: origin.clone(),
            model,
            pre: text("tokenizer.ggml.pre")?,
            tokens,
            scores,
            token_types,
            merges: strings("tokenizer.ggml.merges")?,
            bos_id: meta.opt_u32("tokenizer.ggml.bos_token_id")?,
            eos_id: meta.opt_u32("tokenizer.ggml.eos_token_id")?,
            unk_id: meta.opt_u32("tokenizer.ggml.unknown_token_id")?,
            pad_id: meta.opt_u32("tokenizer.ggml.padding_token_id")?,
            sep_id: meta.opt_u32("tokenizer.ggml.seperator_token_id")?,
            eot_id: meta.opt_u32("tokenizer.ggml.eot_token_id")?,
            eom_id: meta.opt_u32("tokenizer.ggml.eom_token_id")?,
            add_bos: meta.opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: meta.opt_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: meta.opt_bool("tokenizer.ggml.add_space_prefix")?,
            chat_template: text("tokenizer.chat_template")?,
            model_name: text("general.name")?,
        })
    }
}
