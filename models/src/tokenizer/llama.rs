//! The GGUF tokenizer: llama.cpp's `llama_vocab` rebuilt from a [`GgufVocab`] — token attributes
//! (with the EOG/FIM name rules), per-type defaults, special-token partitioning, SPM or BPE per
//! text fragment, and token pieces for decoding (MODELS.md §6).

use std::collections::{HashMap, HashSet};

use super::bpe;
use super::pretok::{PreConfig, PreTokenizer};
use super::spm;
use super::vocab::{GgufVocab, TokenType};
use crate::error::{ModelError, Result};

// llama_token_attr bits.
const UNKNOWN: u16 = 1 << 0;
const UNUSED: u16 = 1 << 1;
const NORMAL: u16 = 1 << 2;
const CONTROL: u16 = 1 << 3;
const USER_DEFINED: u16 = 1 << 4;
const BYTE: u16 = 1 << 5;
const LSTRIP: u16 = 1 << 7;
const RSTRIP: u16 = 1 << 8;

/// Texts llama.cpp treats as end-of-generation (and therefore CONTROL) whatever their type.
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// EOT candidates (the first found becomes the EOT token).
const EOT_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// Fill-in-the-middle token names by role: (names, is end-of-generation).
const FIM_NAMES: &[(&[&str], bool)] = &[
    (
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
        false,
    ),
    (
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
        false,
    ),
    (
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
        false,
    ),
    (
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
        true,
    ),
    (
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
        true,
    ),
    (&["<|file_sep|>"], true),
];

/// The BPE part of a vocabulary.
pub(crate) struct Bpe {
    pub pre: PreTokenizer,
    pub ignore_merges: bool,
    /// "left right" -> rank.
    ranks: HashMap<String, u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Spm,
    Bpe,
}

pub(crate) struct LlamaVocab {
    origin: String,
    kind: Kind,
    texts: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    ids: HashMap<String, u32>,
    bpe: Option<Bpe>,
    byte_chars: [char; 256],
    /// Special tokens (CONTROL | USER_DEFINED | UNKNOWN), longest text first.
    specials: Vec<u32>,
    /// Decoded bytes of every token (rendered with special = true).
    pieces: Vec<Vec<u8>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

/// A piece of the input after special-token partitioning: text (byte range) or a token.
#[derive(Clone, Copy, Debug)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

fn fail(origin: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer {
        origin: origin.to_string(),
        msg: msg.into(),
    }
}

impl LlamaVocab {
    /// Build the tokenizer the way llama.cpp's `llama_vocab::impl::load` does.
    pub(crate) fn new(v: GgufVocab) -> Result<LlamaVocab> {
        let origin = v.origin.clone();
        let n = v.tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(fail(
                &origin,
                format!("tokenizer.ggml.tokens has {n} entries"),
            ));
        }
        let (kind, mut bos, mut eos, mut unk, mut add_bos, mut add_space_prefix, bpe) = match v
            .model
            .as_str()
        {
            "llama" => (Kind::Spm, Some(1), Some(2), Some(0), true, true, None),
            "gpt2" => {
                let pre_name = v.pre.clone().unwrap_or_default();
                let cfg = PreConfig::for_name(&pre_name).ok_or_else(|| {
                        fail(&origin, format!(
                            "tokenizer.ggml.pre '{pre_name}' is not supported by kiln (supported: default, gpt-2, llama-bpe/llama3, qwen2, dbrx, smaug-bpe, starcoder, falcon and their aliases)"
                        ))
                    })?;
                let merges = v.merges.as_ref().ok_or_else(|| {
                    fail(
                        &origin,
                        "tokenizer.ggml.merges is missing (required for a gpt2 tokenizer)",
                    )
                })?;
                let mut ranks = HashMap::with_capacity(merges.len());
                for (i, m) in merges.iter().enumerate() {
                    // llama.cpp splits "left right" at the first space after the first
                    // byte (a line without one becomes the pair ("", "")); the first
                    // rank of a pair wins.
                    let has_split = m.as_bytes().iter().skip(1).any(|&b| b == b' ');
                    let key = if has_split {
                        m.clone()
                    } else {
                        " ".to_string()
                    };
                    ranks.entry(key).or_insert(i as u32);
                }
                let bpe = Bpe {
                    pre: cfg.pre,
                    ignore_merges: cfg.ignore_merges,
                    ranks,
                };
                (
                    Kind::Bpe,
                    Some(11),
                    Some(11),
                    None,
                    cfg.add_bos,
                    false,
                    Some(bpe),
                )
            }
            other => {
                return Err(fail(
                    &origin,
                    format!(
                        "tokenizer.ggml.model '{other}' is not supported by kiln (supported: llama, gpt2)"
                    ),
                ));
            }
        };
        if let Some(x) = v.add_space_prefix {
            add_space_prefix = x;
        }
        let mut texts = Vec::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            let text = if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.clone()
            };
            if let Some(prev) = ids.insert(text.clone(), i as u32) {
                return Err(fail(
                    &origin,
                    format!(
                        "duplicate token in tokenizer.ggml.tokens: '{text}' has ids {prev} and {i}"
                    ),
                ));
            }
            texts.push(text);
            let ty = match &v.token_types {
                Some(types) => {
                    let raw = *types.get(i).ok_or_else(|| {
                        fail(
                            &origin,
                            format!(
                                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                                types.len()
                            ),
                        )
                    })?;
                    TokenType::from_raw(raw)
                }
                None => TokenType::Normal,
            };
            attrs.push(match ty {
                TokenType::Unknown => UNKNOWN,
                TokenType::Unused => UNUSED,
                TokenType::Normal => NORMAL,
                TokenType::Control => CONTROL,
                TokenType::UserDefined => USER_DEFINED,
                TokenType::Byte => BYTE,
                TokenType::Undefined => 0,
            });
        }
        let scores = match v.scores {
            Some(s) if s.len() >= n => s[..n].to_vec(),
            Some(s) => {
                return Err(fail(
                    &origin,
                    format!(
                        "tokenizer.ggml.scores has {} entries for {n} tokens",
                        s.len()
                    ),
                ));
            }
            None => vec![0.0; n],
        };
        // Metadata ids override the defaults when in range; defaults out of range are dropped.
        let set = |slot: &mut Option<u32>, meta: Option<u32>| {
            if slot.is_some_and(|id| id as usize >= n) {
                *slot = None;
            }
            if let Some(id) = meta.filter(|&id| (id as usize) < n) {
                *slot = Some(id);
            }
        };
        set(&mut bos, v.bos_id);
        set(&mut eos, v.eos_id);
        set(&mut unk, v.unk_id);
        let mut pad = None;
        set(&mut pad, v.pad_id);
        let (mut eot, mut eom) = (None, None);
        set(&mut eot, v.eot_id);
        set(&mut eom, v.eom_id);
        if let Some(x) = v.add_bos {
            add_bos = x;
        }
        let add_eos = v.add_eos.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(fail(
                &origin,
                "tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(fail(
                &origin,
                "tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set",
            ));
        }

        // Name rules, in id order (llama.cpp walks a hash map; the first match wins there).
        let find = |names: &[&str]| names.iter().filter_map(|t| ids.get(*t).copied()).min();
        let mut eog: HashSet<u32> = HashSet::new();
        if eot.is_none() {
            eot = find(EOT_NAMES);
            if let Some(id) = eot {
                attrs[id as usize] |= CONTROL;
            }
        }
        if eom.is_none() {
            eom = find(&["<|eom_id|>"]);
            if let Some(id) = eom {
                attrs[id as usize] |= CONTROL;
            }
        }
        for (names, is_eog) in FIM_NAMES {
            if let Some(id) = find(names) {
                attrs[id as usize] |= CONTROL;
                if *is_eog {
                    eog.insert(id);
                }
            }
        }
        for (i, t) in texts.iter().enumerate() {
            if attrs[i] & CONTROL != 0 && t.contains("unused") {
                attrs[i] |= UNUSED;
            }
        }
        for name in EOG_NAMES {
            if let Some(&id) = ids.get(*name) {
                eog.insert(id);
                attrs[id as usize] |= CONTROL;
            }
        }
        for name in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = ids.get(name) {
                attrs[id as usize] = USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        let has = |eog: &HashSet<u32>, t: &str| eog.iter().any(|&id| texts[id as usize] == t);
        if ((has(&eog, "<|return|>") && has(&eog, "<|call|>") && has(&eog, "<|end|>"))
            || (has(&eog, "<|calls|>") && has(&eog, "<|flush|>") && has(&eog, "<|end|>")))
            && let Some(&id) = ids.get("<|end|>")
        {
            eog.remove(&id);
            attrs[id as usize] = USER_DEFINED;
        }
        if has(&eog, "<|tool_response>")
            && has(&eog, "</s>")
            && let Some(&id) = ids.get("</s>")
        {
            eog.remove(&id);
            attrs[id as usize] = NORMAL;
        }
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| attrs[id as usize] & (CONTROL | USER_DEFINED | UNKNOWN) != 0)
            .collect();
        specials.sort_by(|&a, &b| texts[b as usize].len().cmp(&texts[a as usize].len()));
        // Per-token strip flags by model name (Phi-3), after the cache as in llama.cpp.
        let name = v.model_name.as_deref().unwrap_or("").to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &specials {
                attrs[id as usize] |= RSTRIP;
            }
            if let Some(&id) = ids.get("</s>") {
                attrs[id as usize] |= RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = ids.get(t) {
                    attrs[id as usize] &= !RSTRIP;
                }
            }
        }
        let pre = v.pre.as_deref().unwrap_or("");
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"]
            .iter()
            .any(|p| pre.contains(p))
            && let Some(&id) = ids.get("<mask>")
        {
            attrs[id as usize] |= LSTRIP;
        }
        let mut eog: Vec<u32> = eog.into_iter().collect();
        eog.sort_unstable();
        let mut vocab = LlamaVocab {
            origin,
            kind,
            texts,
            scores,
            attrs,
            ids,
            bpe,
            byte_chars: bpe::byte_to_unicode(),
            specials,
            pieces: Vec::new(),
            bos,
            eos,
            unk,
            pad,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
        };
        vocab.pieces = (0..n as u32).map(|id| vocab.make_piece(id)).collect();
        Ok(vocab)
    }

    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }
    pub(crate) fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }
    pub(crate) fn score(&self, id: u32) -> f32 {
        self.scores.get(id as usize).copied().unwrap_or(0.0)
    }
    pub(crate) fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & (CONTROL | UNKNOWN) != 0)
    }
    pub(crate) fn bpe(&self) -> Option<&Bpe> {
        self.bpe.as_ref()
    }
    pub(crate) fn byte_char(&self, b: u8) -> char {
        self.byte_chars[usize::from(b)]
    }
    pub(crate) fn merge_rank(&self, left: &str, right: &str) -> Option<u32> {
        self.bpe
            .as_ref()?
            .ranks
            .get(&format!("{left} {right}"))
            .copied()
    }

    /// SPM byte fallback: `<0xXX>`, else the byte itself as a token.
    pub(crate) fn byte_token(&self, b: u8) -> Result<u32> {
        self.token_id(&format!("<0x{b:02X}>"))
            .or_else(|| {
                std::str::from_utf8(&[b])
                    .ok()
                    .and_then(|s| self.token_id(s))
            })
            .ok_or_else(|| {
                fail(
                    &self.origin,
                    format!("the vocabulary has no byte token <0x{b:02X}> for byte fallback"),
                )
            })
    }

    /// The decoded bytes of a token; control/unknown tokens are empty unless `special`.
    pub(crate) fn piece(&self, id: u32, special: bool) -> Option<&[u8]> {
        let attr = *self.attrs.get(id as usize)?;
        if !special && attr & (UNKNOWN | CONTROL) != 0 {
            return Some(&[]);
        }
        self.pieces.get(id as usize).map(Vec::as_slice)
    }

    /// llama.cpp's `token_to_piece(special = true)`.
    fn make_piece(&self, id: u32) -> Vec<u8> {
        let attr = self.attrs[id as usize];
        let text = &self.texts[id as usize];
        if attr & (UNKNOWN | CONTROL | USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        if attr & NORMAL != 0 {
            return match self.kind {
                Kind::Spm => text.replace('\u{2581}', " ").into_bytes(),
                Kind::Bpe => self.decode_bytes(text),
            };
        }
        if attr & BYTE != 0
            && let Some(b) = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            return vec![b];
        }
        Vec::new()
    }

    /// GPT-2 byte-level text back to bytes (llama.cpp's `llama_decode_text`).
    fn decode_bytes(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.byte_chars.iter().position(|&x| x == c) {
                Some(b) => out.push(b as u8),
                None => {
                    let mut utf8 = [0u8; 4];
                    let hex: String = c
                        .encode_utf8(&mut utf8)
                        .bytes()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    out.extend_from_slice(format!("[UNK_BYTE_0x{hex}{text}]").as_bytes());
                }
            }
        }
        out
    }

    /// llama.cpp's `tokenize(text, add_special, parse_special)`.
    pub(crate) fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match self.kind {
            Kind::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in fragments {
                    match f {
                        Fragment::Text(s, e) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[s..e]);
                            let escaped = buf.replace(' ', "\u{2581}");
                            spm::tokenize(self, &escaped, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Kind::Bpe => {
                for f in fragments {
                    match f {
                        Fragment::Text(s, e) => bpe::tokenize(self, &text[s..e], &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// Split the text on special-token texts, longest tokens first (`tokenizer_st_partition`).
    /// Without `parse_special`, CONTROL and UNKNOWN tokens stay text; USER_DEFINED always split.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        for &id in &self.specials {
            let attr = self.attrs[id as usize];
            if !parse_special && attr & (CONTROL | UNKNOWN) != 0 {
                continue;
            }
            let tok = self.texts[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(s, e) if text[*s..*e].contains(tok)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut s, e) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(p) = text[s..e].find(tok) {
                    let m = s + p;
                    let mut left_end = m;
                    if attr & LSTRIP != 0 {
                        while left_end > s && is_c_space(text.as_bytes()[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > s {
                        next.push(Fragment::Text(s, left_end));
                    }
                    next.push(Fragment::Token(id));
                    s = m + tok.len();
                    if attr & RSTRIP != 0 {
                        while s < e && is_c_space(text.as_bytes()[s]) {
                            s += 1;
                        }
                    }
                }
                if s < e {
                    next.push(Fragment::Text(s, e));
                }
            }
            frags = next;
        }
        frags
    }
}
