//! Tokenizers: one [`Tokenizer`] type with two sources.
//!
//! - **GGUF metadata** ([`GgufVocab`]): kiln's own re-implementation of llama.cpp's tokenizer —
//!   SentencePiece-style `llama` vocabularies (score-driven merges, byte fallback,
//!   `add_space_prefix`) and byte-level BPE `gpt2` vocabularies (merge ranks, the pre-tokenizer
//!   named by `tokenizer.ggml.pre`), special-token partitioning, BOS/EOS as the file says.
//!   It reproduces llama.cpp's ids (MODELS.md §6; tests in models/tests/tokenizer_*.rs).
//! - **Hugging Face `tokenizer.json`** through the `tokenizers` crate.
//!
//! `encode(text, add_special, parse_special)` has llama.cpp's `/tokenize` semantics: with
//! `add_special` the BOS (and EOS) the model asks for are added — never deduplicated — and with
//! `parse_special` the text of control tokens (`<|im_start|>`, `<bos>`) becomes those tokens.
//! User-defined tokens are always split out. A prompt for completion is
//! `encode(text, true, true)` ([`Tokenizer::encode_prompt`]).

mod bpe;
mod hf;
mod llama;
mod pretok;
mod spm;
mod vocab;

use std::path::Path;

pub use vocab::{GgufVocab, TokenType};

use crate::error::{ModelError, Result};
use crate::format::gguf::GgufFile;
use hf::HfTokenizer;
pub(crate) use hf::read_json;
use llama::LlamaVocab;

/// A tokenizer from GGUF metadata or from a Hugging Face tokenizer.json.
pub struct Tokenizer {
    inner: Inner,
}

enum Inner {
    Gguf(Box<LlamaVocab>),
    Hf(Box<HfTokenizer>),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin())
            .field("kind", &self.kind_name())
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer described by GGUF tokenizer metadata.
    pub fn from_gguf_vocab(vocab: GgufVocab) -> Result<Tokenizer> {
        Ok(Tokenizer {
            inner: Inner::Gguf(Box::new(LlamaVocab::new(vocab)?)),
        })
    }

    /// The tokenizer of an opened GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        Tokenizer::from_gguf_vocab(GgufVocab::from_gguf(file)?)
    }

    /// A tokenizer.json, with the special tokens named by the (parsed) tokenizer_config.json
    /// and the end-of-generation ids of generation_config.json when given.
    pub fn from_tokenizer_json(
        path: &Path,
        tokenizer_config: Option<&serde_json::Value>,
        generation_config: Option<&serde_json::Value>,
    ) -> Result<Tokenizer> {
        Ok(Tokenizer {
            inner: Inner::Hf(Box::new(HfTokenizer::load(
                path,
                tokenizer_config,
                generation_config,
            )?)),
        })
    }

    /// The tokenizer of a Hugging Face model directory: tokenizer.json plus, when present,
    /// tokenizer_config.json and generation_config.json.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let json = dir.join("tokenizer.json");
        if !json.is_file() {
            return Err(ModelError::Tokenizer {
                origin: dir.display().to_string(),
                msg: "no tokenizer.json in this directory".into(),
            });
        }
        let config = hf::read_json(&dir.join("tokenizer_config.json"))?;
        let generation = hf::read_json(&dir.join("generation_config.json"))?;
        Tokenizer::from_tokenizer_json(&json, config.as_ref(), generation.as_ref())
    }

    /// The tokenizer of a model path: a GGUF file, a Hugging Face model directory, or a
    /// tokenizer.json (with tokenizer_config.json / generation_config.json beside it).
    pub fn from_path(path: &Path) -> Result<Tokenizer> {
        if path.is_dir() {
            return Tokenizer::from_hf_dir(path);
        }
        if path.extension().is_some_and(|e| e == "json") {
            let dir = path.parent().unwrap_or(Path::new("."));
            let config = hf::read_json(&dir.join("tokenizer_config.json"))?;
            let generation = hf::read_json(&dir.join("generation_config.json"))?;
            return Tokenizer::from_tokenizer_json(path, config.as_ref(), generation.as_ref());
        }
        Tokenizer::from_gguf(&GgufFile::open(path)?)
    }

    /// Token ids of `text` (llama.cpp `/tokenize` semantics, see the module docs).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Gguf(v) => v.encode(text, add_special, parse_special),
            Inner::Hf(h) => h.encode(text, add_special, parse_special),
        }
    }

    /// A completion prompt, as llama.cpp's completion endpoint tokenizes a string: BOS as the
    /// model's metadata says, special-token text parsed.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, true, true)
    }

    /// The text of `ids`, control tokens rendered as their text (llama-server `/detokenize`).
    /// Invalid UTF-8 (a cut multi-byte character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    /// The text of `ids`; with `special = false` control tokens produce no text (as in
    /// generated output).
    pub fn decode_with(&self, ids: &[u32], special: bool) -> Result<String> {
        match &self.inner {
            Inner::Gguf(v) => {
                let mut bytes = Vec::new();
                for &id in ids {
                    bytes.extend_from_slice(self.gguf_piece(v, id, special)?);
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Inner::Hf(h) => {
                self.check_id_all(ids)?;
                h.decode(ids, special)
            }
        }
    }

    /// The bytes one token decodes to (GGUF); HF tokenizers decode the token alone.
    pub fn token_bytes(&self, id: u32, special: bool) -> Result<Vec<u8>> {
        match &self.inner {
            Inner::Gguf(v) => Ok(self.gguf_piece(v, id, special)?.to_vec()),
            Inner::Hf(_) => Ok(self.decode_with(&[id], special)?.into_bytes()),
        }
    }

    fn gguf_piece<'a>(&self, v: &'a LlamaVocab, id: u32, special: bool) -> Result<&'a [u8]> {
        v.piece(id, special).ok_or_else(|| self.bad_id(id))
    }

    fn bad_id(&self, id: u32) -> ModelError {
        ModelError::Tokenizer {
            origin: self.origin().to_string(),
            msg: format!(
                "token id {id} is out of range (vocabulary size {})",
                self.vocab_size()
            ),
        }
    }

    fn check_id_all(&self, ids: &[u32]) -> Result<()> {
        let n = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= n) {
            Some(&id) => Err(self.bad_id(id)),
            None => Ok(()),
        }
    }

    /// A decoder for generated tokens that yields text only once its UTF-8 is complete.
    pub fn stream_decoder(&self, special: bool) -> StreamDecoder<'_> {
        let state = match &self.inner {
            Inner::Gguf(_) => StreamState::Bytes(Vec::new()),
            Inner::Hf(h) => StreamState::Hf(Box::new(h.tk.decode_stream(!special))),
        };
        StreamDecoder {
            tok: self,
            special,
            state,
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.bos,
            Inner::Hf(h) => h.bos,
        }
    }
    pub fn eos_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.eos,
            Inner::Hf(h) => h.eos,
        }
    }
    /// Unknown-token id (GGUF only).
    pub fn unk_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.unk,
            Inner::Hf(_) => None,
        }
    }
    /// Padding id (GGUF only).
    pub fn pad_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.pad,
            Inner::Hf(_) => None,
        }
    }
    /// Every id that ends generation (EOS, EOT, `<|im_end|>`, `<end_of_turn>`, ...), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        match &self.inner {
            Inner::Gguf(v) => &v.eog,
            Inner::Hf(h) => &h.eog,
        }
    }
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids().binary_search(&id).is_ok()
    }
    /// Whether `encode(_, add_special = true, _)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.add_bos,
            Inner::Hf(h) => h.add_bos,
        }
    }
    /// Whether `encode(_, add_special = true, _)` appends EOS.
    pub fn add_eos(&self) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.add_eos,
            Inner::Hf(h) => h.add_eos,
        }
    }
    /// Number of token ids (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Gguf(v) => v.len(),
            Inner::Hf(h) => h.vocab_size,
        }
    }
    /// The vocabulary text of a token (not decoded: `▁`/`Ġ` as stored).
    pub fn token_text(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Gguf(v) => v.text(id).map(String::from),
            Inner::Hf(h) => h.tk.id_to_token(id),
        }
    }
    /// The id of a vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.token_id(text),
            Inner::Hf(h) => h.tk.token_to_id(text),
        }
    }
    /// Whether the token is a control (special) token.
    pub fn is_special(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.is_control(id),
            Inner::Hf(h) => h.is_special(id),
        }
    }
    /// The BOS text given to chat templates (`bos_token`), if the model has a BOS.
    pub fn bos_text(&self) -> Option<String> {
        self.special_text(self.bos_id()?)
    }
    /// The EOS text given to chat templates (`eos_token`).
    pub fn eos_text(&self) -> Option<String> {
        self.special_text(self.eos_id()?)
    }
    fn special_text(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Gguf(v) => v
                .piece(id, true)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            Inner::Hf(h) => h.tk.id_to_token(id),
        }
    }
    /// Where the tokenizer came from (file path).
    pub fn origin(&self) -> &str {
        match &self.inner {
            Inner::Gguf(v) => v.origin(),
            Inner::Hf(h) => &h.origin,
        }
    }
    /// `spm`, `bpe` (GGUF) or `tokenizer.json`.
    pub fn kind_name(&self) -> &'static str {
        match &self.inner {
            Inner::Gguf(v) => match v.kind() {
                llama::Kind::Spm => "spm",
                llama::Kind::Bpe => "bpe",
            },
            Inner::Hf(_) => "tokenizer.json",
        }
    }
}

/// Incremental detokenizer for streaming generation: [`push`](StreamDecoder::push) returns
/// text only when it ends in complete UTF-8 (an emoji split over byte tokens comes out whole).
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    special: bool,
    state: StreamState<'a>,
}

type HfStream<'a> = tokenizers::DecodeStream<
    'a,
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    tokenizers::PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

enum StreamState<'a> {
    /// Bytes not yet returned (an incomplete UTF-8 sequence at most).
    Bytes(Vec<u8>),
    Hf(Box<HfStream<'a>>),
}

impl std::fmt::Debug for StreamDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("special", &self.special)
            .finish()
    }
}

impl StreamDecoder<'_> {
    /// Add one generated token; the text completed by it, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        match &mut self.state {
            StreamState::Bytes(buf) => {
                let Inner::Gguf(v) = &self.tok.inner else {
                    return Ok(None);
                };
                buf.extend_from_slice(self.tok.gguf_piece(v, id, self.special)?);
                let text = take_complete_utf8(buf);
                Ok((!text.is_empty()).then_some(text))
            }
            StreamState::Hf(s) => {
                if id as usize >= self.tok.vocab_size() {
                    return Err(self.tok.bad_id(id));
                }
                s.step(id).map_err(|e| ModelError::Tokenizer {
                    origin: self.tok.origin().to_string(),
                    msg: format!("stream decode failed at token {id}: {e}"),
                })
            }
        }
    }

    /// The bytes still held back (an unfinished character), as U+FFFD.
    pub fn finish(self) -> String {
        match self.state {
            StreamState::Bytes(buf) => String::from_utf8_lossy(&buf).into_owned(),
            StreamState::Hf(_) => String::new(),
        }
    }
}

/// Remove and return the longest prefix of `buf` that is complete UTF-8; invalid sequences
/// become U+FFFD, an incomplete one at the end stays in `buf`.
fn take_complete_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = buf.len();
                break;
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                // The bytes up to `valid` were just checked to be UTF-8.
                out.push_str(&String::from_utf8_lossy(&buf[start..valid]));
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start = valid + n;
                    }
                    None => {
                        start = valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::take_complete_utf8;

    #[test]
    fn utf8_is_held_until_complete() {
        let rocket = "🚀".as_bytes();
        let mut buf = rocket[..2].to_vec();
        assert_eq!(take_complete_utf8(&mut buf), "");
        buf.extend_from_slice(&rocket[2..]);
        buf.push(b'x');
        assert_eq!(take_complete_utf8(&mut buf), "🚀x");
        assert!(buf.is_empty());
        let mut bad = vec![0xFF, b'a', 0xE2];
        assert_eq!(take_complete_utf8(&mut bad), "\u{FFFD}a");
        assert_eq!(bad, [0xE2]);
    }
}
