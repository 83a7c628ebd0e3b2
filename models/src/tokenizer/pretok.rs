//! BPE pre-tokenizers: split a text fragment into words before the merges run, exactly as
//! llama.cpp does for each `tokenizer.ggml.pre` type (MODELS.md §6.4).
//!
//! llama.cpp runs a sequence of regexes; each one splits every piece the previous one produced
//! into its matches and the gaps between them. The gpt-2 and llama-3 regexes are run by
//! hand-written matchers in llama.cpp (`unicode_regex_split_custom_*`), and the others by
//! `std::regex` over a text whose non-ASCII code points are collapsed to their category. Both
//! behave like a backtracking regex with Unicode categories, which is what the matchers below
//! implement, over code points (not bytes):
//! - gpt-2:  `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! - llama3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//!   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`; qwen2 is the same with `\p{N}` (one digit).
//! - plain runs (`X+`), single code points (`\p{N}`) and `[0-9][0-9][0-9]` for the sequences.

use unicode_general_category::{GeneralCategory as Gc, get_general_category};

/// Per-code-point classes the matchers need (llama.cpp's `unicode_cpt_flags`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Flags {
    /// Inside the fragment (llama.cpp returns all-zero flags past the end).
    in_range: bool,
    letter: bool,
    number: bool,
    whitespace: bool,
    punct: bool,
}

fn flags(c: char) -> Flags {
    if c.is_ascii() {
        return Flags {
            in_range: true,
            letter: c.is_ascii_alphabetic(),
            number: c.is_ascii_digit(),
            // ASCII White_Space: \t \n \v \f \r and space.
            whitespace: matches!(c, '\t' | '\n' | '\x0B' | '\x0C' | '\r' | ' '),
            punct: c.is_ascii_punctuation()
                && !matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~'),
        };
    }
    let cat = get_general_category(c);
    Flags {
        in_range: true,
        letter: matches!(
            cat,
            Gc::UppercaseLetter
                | Gc::LowercaseLetter
                | Gc::TitlecaseLetter
                | Gc::ModifierLetter
                | Gc::OtherLetter
        ),
        number: matches!(cat, Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber),
        // llama.cpp's whitespace set is Unicode White_Space, as is `char::is_whitespace`.
        whitespace: c.is_whitespace(),
        punct: matches!(
            cat,
            Gc::ConnectorPunctuation
                | Gc::DashPunctuation
                | Gc::OpenPunctuation
                | Gc::ClosePunctuation
                | Gc::InitialPunctuation
                | Gc::FinalPunctuation
                | Gc::OtherPunctuation
        ),
    }
}

/// One step of a pre-tokenizer sequence (one regex of llama.cpp's `regex_exprs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The gpt-2 regex (llama.cpp's custom matcher).
    Gpt2,
    /// The llama-3 regex with `\p{N}{1,max_digits}` (3: llama3, 1: qwen2).
    Llama3 { max_digits: usize },
    /// `[\p{P}\$\+<=>\^~\|]+` (default) or with a backtick as well (falcon).
    PunctRuns { backtick: bool },
    /// `\p{N}+`
    NumberRuns,
    /// `\p{N}`: every number code point alone.
    SingleNumbers,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
}

/// The pre-tokenizer of one `tokenizer.ggml.pre` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    stages: Vec<Stage>,
}

/// What a `tokenizer.ggml.pre` value sets besides the regexes (llama-vocab.cpp `load`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PreConfig {
    pub pre: PreTokenizer,
    /// A whole word found in the vocabulary is emitted without running the merges.
    pub ignore_merges: bool,
    /// Default of `add_bos_token` when the GGUF has no such key.
    pub add_bos: bool,
}

impl PreConfig {
    /// The configuration of a BPE pre-tokenizer name, or `None` if kiln does not implement it.
    pub(crate) fn for_name(name: &str) -> Option<PreConfig> {
        use Stage::*;
        let gpt2 = vec![Gpt2];
        let llama3 = vec![Llama3 { max_digits: 3 }];
        let qwen2 = vec![Llama3 { max_digits: 1 }];
        let (stages, ignore_merges, add_bos) = match name {
            "" | "default" => (
                vec![
                    PunctRuns { backtick: false },
                    Gpt2,
                    NumberRuns,
                    AsciiDigitTriples,
                ],
                false,
                false,
            ),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => (llama3, true, true),
            "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => (llama3, false, false),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
            | "jina-v2-code" | "roberta-bpe" | "exaone4" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" => (gpt2, false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" | "solar-open" => (qwen2, false, false),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => (vec![SingleNumbers, Gpt2], false, false),
            "falcon" => (
                vec![PunctRuns { backtick: true }, Gpt2, AsciiDigitTriples],
                false,
                false,
            ),
            _ => return None,
        };
        Some(PreConfig {
            pre: PreTokenizer { stages },
            ignore_merges,
            add_bos,
        })
    }
}

/// A piece `[start, end)` in code-point indices.
type Span = (usize, usize);

impl PreTokenizer {
    /// Split `text` into words (sub-slices of `text`, in order, covering all of it).
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        // cpts[i] and its byte offset; offsets has one extra entry for the end.
        let cpts: Vec<char> = text.chars().collect();
        let mut offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        offsets.push(text.len());
        let mut spans: Vec<Span> = vec![(0, cpts.len())];
        for stage in &self.stages {
            let mut next = Vec::with_capacity(spans.len() * 2);
            for &(s, e) in &spans {
                if s < e {
                    split_stage(*stage, &cpts, s, e, &mut next);
                }
            }
            spans = next;
        }
        spans
            .into_iter()
            .filter(|(s, e)| s < e)
            .map(|(s, e)| &text[offsets[s]..offsets[e]])
            .collect()
    }
}

fn split_stage(stage: Stage, cpts: &[char], start: usize, end: usize, out: &mut Vec<Span>) {
    match stage {
        Stage::Gpt2 => gpt2(cpts, start, end, out),
        Stage::Llama3 { max_digits } => llama3(cpts, start, end, max_digits, out),
        Stage::PunctRuns { backtick } => runs(cpts, start, end, out, |c| {
            let f = flags(c);
            f.punct
                || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
                || (backtick && c == '`')
        }),
        Stage::NumberRuns => runs(cpts, start, end, out, |c| flags(c).number),
        Stage::SingleNumbers => {
            let mut gap = start;
            for (i, &c) in cpts.iter().enumerate().take(end).skip(start) {
                if flags(c).number {
                    if gap < i {
                        out.push((gap, i));
                    }
                    out.push((i, i + 1));
                    gap = i + 1;
                }
            }
            if gap < end {
                out.push((gap, end));
            }
        }
        Stage::AsciiDigitTriples => {
            let mut gap = start;
            let mut i = start;
            while i < end {
                if i + 3 <= end && cpts[i..i + 3].iter().all(|c| c.is_ascii_digit()) {
                    if gap < i {
                        out.push((gap, i));
                    }
                    out.push((i, i + 3));
                    i += 3;
                    gap = i;
                } else {
                    i += 1;
                }
            }
            if gap < end {
                out.push((gap, end));
            }
        }
    }
}

/// Matches of `X+` and the gaps between them.
fn runs(cpts: &[char], start: usize, end: usize, out: &mut Vec<Span>, pred: impl Fn(char) -> bool) {
    let mut i = start;
    let mut gap = start;
    while i < end {
        if pred(cpts[i]) {
            let s = i;
            while i < end && pred(cpts[i]) {
                i += 1;
            }
            if gap < s {
                out.push((gap, s));
            }
            out.push((s, i));
            gap = i;
        } else {
            i += 1;
        }
    }
    if gap < end {
        out.push((gap, end));
    }
}

/// Cursor over one fragment: code points and flags, all-zero outside `[start, end)`.
struct Frag<'a> {
    cpts: &'a [char],
    start: usize,
    end: usize,
    prev_end: usize,
    out: &'a mut Vec<Span>,
}

impl Frag<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.start <= pos && pos < self.end).then(|| self.cpts[pos])
    }
    fn flags(&self, pos: usize) -> Flags {
        self.cpt(pos).map(flags).unwrap_or_default()
    }
    /// Emit `[prev_end, end)`; returns its length.
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push((self.prev_end, end));
        }
        self.prev_end = end;
        len
    }
    /// `'s|'t|'re|'ve|'m|'ll|'d` at `pos` (case-insensitive for llama3): its length.
    fn contraction(&self, pos: usize, fold: bool) -> usize {
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.end {
            return 0;
        }
        let low = |c: Option<char>| c.map(|c| if fold { c.to_ascii_lowercase() } else { c });
        let c1 = low(self.cpt(pos + 1));
        if matches!(c1, Some('s' | 't' | 'm' | 'd')) {
            return 2;
        }
        if pos + 2 < self.end {
            let c2 = low(self.cpt(pos + 2));
            if matches!(
                (c1, c2),
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
            ) {
                return 3;
            }
        }
        0
    }
    /// Whitespace handling shared by both regexes: `\s*[\r\n]+` (llama3 only), `\s+(?!\S)`,
    /// `\s+`, or a single unmatched code point. Returns the new position.
    fn whitespace(&mut self, pos: usize, newline_rule: bool) -> usize {
        let mut n = 0;
        let mut last_nl_end = 0;
        while self.flags(pos + n).whitespace {
            if matches!(self.cpt(pos + n), Some('\r' | '\n')) {
                last_nl_end = pos + n + 1;
            }
            n += 1;
        }
        if newline_rule && last_nl_end > 0 {
            self.add(last_nl_end);
            return last_nl_end;
        }
        if n > 1 && self.cpt(pos + n).is_some() {
            // \s+(?!\S): leave the last whitespace for the next word.
            self.add(pos + n - 1);
            return pos + n - 1;
        }
        if n > 0 {
            self.add(pos + n);
            return pos + n;
        }
        self.add(pos + 1);
        pos + 1
    }
}

fn gpt2(cpts: &[char], start: usize, end: usize, out: &mut Vec<Span>) {
    let mut f = Frag {
        cpts,
        start,
        end,
        prev_end: start,
        out,
    };
    let mut pos = start;
    while pos < end {
        let c = cpts[pos];
        let n = f.contraction(pos, false);
        if n > 0 {
            pos += f.add(pos + n);
            continue;
        }
        let mut f2 = if c == ' ' {
            f.flags(pos + 1)
        } else {
            f.flags(pos)
        };
        let space = usize::from(c == ' ');
        if f2.letter {
            pos += space;
            while f2.letter {
                pos += 1;
                f2 = f.flags(pos);
            }
            f.add(pos);
            continue;
        }
        if f2.number {
            pos += space;
            while f2.number {
                pos += 1;
                f2 = f.flags(pos);
            }
            f.add(pos);
            continue;
        }
        if !(f2.whitespace || f2.letter || f2.number) && f2.in_range {
            pos += space;
            while !(f2.whitespace || f2.letter || f2.number) && f2.in_range {
                pos += 1;
                f2 = f.flags(pos);
            }
            f.add(pos);
            continue;
        }
        pos = f.whitespace(pos, false);
    }
}

fn llama3(cpts: &[char], start: usize, end: usize, max_digits: usize, out: &mut Vec<Span>) {
    let mut f = Frag {
        cpts,
        start,
        end,
        prev_end: start,
        out,
    };
    let mut pos = start;
    while pos < end {
        let c = cpts[pos];
        let fl = f.flags(pos);
        let n = f.contraction(pos, true);
        if n > 0 {
            pos += f.add(pos + n);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || fl.number) && (fl.letter || f.flags(pos + 1).letter) {
            pos += 1;
            while f.flags(pos).letter {
                pos += 1;
            }
            f.add(pos);
            continue;
        }
        // \p{N}{1,max_digits}
        if fl.number {
            let mut ini = pos;
            while f.flags(pos).number {
                pos += 1;
                if pos - ini >= max_digits {
                    f.add(pos);
                    ini = pos;
                }
            }
            f.add(pos);
            continue;
        }
        // <space>?[^\s\p{L}\p{N}]+[\r\n]*
        let mut f2 = if c == ' ' { f.flags(pos + 1) } else { fl };
        if !(f2.whitespace || f2.letter || f2.number) && fl.in_range {
            pos += usize::from(c == ' ');
            while !(f2.whitespace || f2.letter || f2.number) && f2.in_range {
                pos += 1;
                f2 = f.flags(pos);
            }
            while matches!(f.cpt(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            f.add(pos);
            continue;
        }
        pos = f.whitespace(pos, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(name: &str, text: &str) -> Vec<String> {
        let cfg = PreConfig::for_name(name).unwrap();
        cfg.pre.split(text).into_iter().map(String::from).collect()
    }

    #[test]
    fn gpt2_words_and_spaces() {
        assert_eq!(
            split("gpt-2", "Hello world  two\tx 's!! 123"),
            [
                "Hello", " world", " ", " two", "\t", "x", " '", "s", "!!", " 123"
            ]
        );
        assert_eq!(split("gpt-2", "a  "), ["a", "  "]);
    }

    #[test]
    fn qwen2_digits_and_newlines() {
        assert_eq!(
            split("qwen2", "x 1234\n\n  y"),
            ["x", " ", "1", "2", "3", "4", "\n\n", " ", " y"]
        );
        assert_eq!(split("qwen2", "   \n\n\t "), ["   \n\n", "\t "]);
        assert_eq!(split("qwen2", "\tcol"), ["\tcol"]);
        assert_eq!(split("qwen2", "Don't"), ["Don", "'t"]);
    }

    #[test]
    fn llama3_digit_groups() {
        assert_eq!(split("llama-bpe", "12345"), ["123", "45"]);
        assert_eq!(split("llama-bpe", "I'LL go"), ["I", "'LL", " go"]);
    }

    #[test]
    fn default_sequence() {
        assert_eq!(split("default", "ab,1234"), ["ab", ",", "123", "4"]);
    }

    #[test]
    fn unknown_name() {
        assert!(PreConfig::for_name("no-such-pre").is_none());
    }
}
