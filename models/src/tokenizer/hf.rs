//! Hugging Face `tokenizer.json` through the `tokenizers` crate, with the special tokens of
//! `tokenizer_config.json` / `generation_config.json`.
//!
//! Semantics follow the GGUF side: `parse_special = false` leaves special added tokens as text
//! (the crate's `encode_special_tokens`), non-special added tokens are always split out, and
//! `add_special` runs the file's post-processor (which is where HF adds BOS/EOS).

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// Token texts that end generation whatever the config says (the llama.cpp list, §6.3).
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

pub(crate) struct HfTokenizer {
    pub origin: String,
    pub tk: tokenizers::Tokenizer,
    /// A copy with `encode_special_tokens` set, for `parse_special = false`.
    raw: OnceLock<tokenizers::Tokenizer>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// Ids with added tokens (the crate builds a whole vocabulary map to answer this).
    pub vocab_size: usize,
}

fn fail(origin: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer {
        origin: origin.to_string(),
        msg: msg.into(),
    }
}

/// Read a JSON file, `None` if it does not exist.
pub(crate) fn read_json(path: &Path) -> Result<Option<Value>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ModelError::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ModelError::format(&path.display().to_string(), format!("invalid JSON: {e}")))
}

/// A special token entry of tokenizer_config.json: a string or an AddedToken object.
pub(crate) fn token_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl HfTokenizer {
    pub(crate) fn load(
        tokenizer_json: &Path,
        config: Option<&Value>,
        generation_config: Option<&Value>,
    ) -> Result<HfTokenizer> {
        let origin = tokenizer_json.display().to_string();
        let bytes = std::fs::read(tokenizer_json).map_err(|e| ModelError::io(tokenizer_json, e))?;
        let tk = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| fail(&origin, format!("cannot load tokenizer.json: {e}")))?;
        let lookup = |name: &str| {
            let text = token_content(config.and_then(|c| c.get(name)))?;
            tk.token_to_id(&text)
        };
        let bos = lookup("bos_token");
        let eos = lookup("eos_token");
        let mut eog: Vec<u32> = eos.into_iter().collect();
        match generation_config.and_then(|g| g.get("eos_token_id")) {
            Some(Value::Number(n)) => eog.extend(n.as_u64().and_then(|x| u32::try_from(x).ok())),
            Some(Value::Array(a)) => eog.extend(
                a.iter()
                    .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok())),
            ),
            _ => {}
        }
        eog.extend(EOG_NAMES.iter().filter_map(|t| tk.token_to_id(t)));
        eog.sort_unstable();
        eog.dedup();
        // What the post-processor adds around an empty input tells whether BOS/EOS are added.
        let empty = tk
            .encode("", true)
            .map_err(|e| fail(&origin, format!("cannot encode an empty text: {e}")))?;
        let ids = empty.get_ids();
        let add_bos = bos.is_some() && ids.first().copied() == bos;
        let add_eos = eos.is_some() && ids.last().copied() == eos;
        let vocab_size = tk.get_vocab_size(true);
        Ok(HfTokenizer {
            vocab_size,
            origin,
            tk,
            raw: OnceLock::new(),
            bos,
            eos,
            eog,
            add_bos,
            add_eos,
        })
    }

    pub(crate) fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        let tk = if parse_special {
            &self.tk
        } else {
            self.raw.get_or_init(|| {
                let mut t = self.tk.clone();
                t.set_encode_special_tokens(true);
                t
            })
        };
        tk.encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| fail(&self.origin, format!("encode failed: {e}")))
    }

    pub(crate) fn decode(&self, ids: &[u32], special: bool) -> Result<String> {
        self.tk
            .decode(ids, !special)
            .map_err(|e| fail(&self.origin, format!("decode failed: {e}")))
    }

    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.tk
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.tk.get_added_vocabulary().is_special_token(&t))
    }
}
