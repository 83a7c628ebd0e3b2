//! Hugging Face model directories: `config.json`, safetensors weights (single or sharded), and
//! the tokenizer files. The config is loaded as JSON and checked to be an object; what its
//! fields mean is for the model runtime to decide.

use std::path::{Path, PathBuf};

use super::safetensors::SafetensorsModel;
use crate::error::{ModelError, Result};

/// An open HF model directory (weights validated, JSON files parsed).
#[derive(Debug)]
pub struct HfDir {
    dir: PathBuf,
    config: serde_json::Value,
    weights: SafetensorsModel,
    tokenizer_json: Option<PathBuf>,
    tokenizer_config: Option<serde_json::Value>,
    chat_template_jinja: Option<PathBuf>,
    generation_config: Option<serde_json::Value>,
}

/// Read and parse a JSON object file; errors name the file.
pub fn read_json_object(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    parse_json_object(&text, &path.display().to_string())
}

/// Parse JSON that must be an object (config.json, tokenizer_config.json, ...).
pub fn parse_json_object(bytes: &[u8], file: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ModelError::format(file, format!("invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ModelError::format(
            file,
            "the top level is not a JSON object",
        ));
    }
    Ok(v)
}

fn optional(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = dir.join(name);
    p.is_file().then_some(p)
}

impl HfDir {
    /// Open `dir`: `config.json` is required, and the weights (`model.safetensors.index.json`
    /// with its shards, or `model.safetensors`); tokenizer files are optional.
    pub fn open(dir: impl AsRef<Path>) -> Result<HfDir> {
        let dir = dir.as_ref();
        let label = dir.display().to_string();
        if !dir.is_dir() {
            return Err(ModelError::format(&label, "not a directory"));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::format(
                &label,
                "no config.json: not a Hugging Face model directory",
            ));
        }
        let config = read_json_object(&config_path)?;
        let weights = SafetensorsModel::open(dir)?;
        let tokenizer_config = match optional(dir, "tokenizer_config.json") {
            Some(p) => Some(read_json_object(&p)?),
            None => None,
        };
        let generation_config = match optional(dir, "generation_config.json") {
            Some(p) => Some(read_json_object(&p)?),
            None => None,
        };
        Ok(HfDir {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer_json: optional(dir, "tokenizer.json"),
            tokenizer_config,
            chat_template_jinja: optional(dir, "chat_template.jinja"),
            generation_config,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `config.json` (a JSON object).
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }
    pub fn weights(&self) -> &SafetensorsModel {
        &self.weights
    }
    pub fn tokenizer_json(&self) -> Option<&Path> {
        self.tokenizer_json.as_deref()
    }
    pub fn tokenizer_config(&self) -> Option<&serde_json::Value> {
        self.tokenizer_config.as_ref()
    }
    pub fn chat_template_jinja(&self) -> Option<&Path> {
        self.chat_template_jinja.as_deref()
    }
    pub fn generation_config(&self) -> Option<&serde_json::Value> {
        self.generation_config.as_ref()
    }
    /// `config.json`'s `model_type`, if it is a string.
    pub fn model_type(&self) -> Option<&str> {
        self.config.get("model_type").and_then(|v| v.as_str())
    }
    /// The chat template: `chat_template.jinja` if present, else a string
    /// `tokenizer_config.json["chat_template"]` (the default entry if it is a list of
    /// `{name, template}`); `None` if neither.
    pub fn chat_template(&self) -> Result<Option<String>> {
        if let Some(p) = &self.chat_template_jinja {
            return std::fs::read_to_string(p)
                .map(Some)
                .map_err(|e| ModelError::io(p, e));
        }
        let Some(t) = self
            .tokenizer_config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
        else {
            return Ok(None);
        };
        if let Some(s) = t.as_str() {
            return Ok(Some(s.to_string()));
        }
        let named = t.as_array().and_then(|list| {
            let pick = |want: Option<&str>| {
                list.iter().find(|e| {
                    want.is_none_or(|w| e.get("name").and_then(|n| n.as_str()) == Some(w))
                })
            };
            pick(Some("default")).or_else(|| pick(None))
        });
        Ok(named
            .and_then(|e| e.get("template"))
            .and_then(|s| s.as_str())
            .map(str::to_string))
    }
}
