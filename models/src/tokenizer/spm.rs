//! SentencePiece-style (`tokenizer.ggml.model = "llama"`) tokenization of one text fragment,
//! llama.cpp's `llm_tokenizer_spm_session` (MODELS.md §6.5): start from UTF-8 characters, merge
//! the adjacent pair whose concatenation is the vocabulary token of highest score (leftmost on
//! ties) until no pair is a token, then emit each symbol as its token, or through the recorded
//! merges, or as `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::llama::LlamaVocab;
use crate::error::Result;

/// A symbol: the byte range `[start, start + n)` of the text, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    start: usize,
    n: usize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// One tokenization: the symbols of `text`, the queue of candidate merges and the record of
/// which pair formed each merged text (llama.cpp's `rev_merge`, last writer wins).
struct Session<'a> {
    vocab: &'a LlamaVocab,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
    rev_merge: HashMap<&'a str, (usize, usize)>,
}

impl<'a> Session<'a> {
    /// Queue the pair (left, right) if its concatenation is a token.
    fn try_add(&mut self, left: Option<usize>, right: Option<usize>) {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let text: &'a str = self.text;
        let start = self.symbols[l].start;
        let size = self.symbols[l].n + self.symbols[r].n;
        let piece = &text[start..start + size];
        if let Some(id) = self.vocab.token_id(piece) {
            self.queue.push(Bigram {
                left: l,
                right: r,
                score: self.vocab.score(id),
                size,
            });
            self.rev_merge.insert(piece, (l, r));
        }
    }
}

/// Tokenize `text` (spaces already escaped to U+2581) and append the ids to `out`.
pub(crate) fn tokenize(vocab: &LlamaVocab, text: &str, out: &mut Vec<u32>) -> Result<()> {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        let n = c.len_utf8();
        symbols.push(Symbol {
            prev: i.checked_sub(1),
            next: (start + n < text.len()).then_some(i + 1),
            start,
            n,
        });
    }
    if symbols.is_empty() {
        return Ok(());
    }
    let mut s = Session {
        vocab,
        text,
        symbols,
        queue: BinaryHeap::new(),
        rev_merge: HashMap::new(),
    };
    for i in 1..s.symbols.len() {
        s.try_add(Some(i - 1), Some(i));
    }
    while let Some(b) = s.queue.pop() {
        let (ln, rn) = (s.symbols[b.left].n, s.symbols[b.right].n);
        // Skip pairs whose symbols changed since the pair was queued.
        if ln == 0 || rn == 0 || ln + rn != b.size {
            continue;
        }
        s.symbols[b.left].n += rn;
        s.symbols[b.right].n = 0;
        let next = s.symbols[b.right].next;
        s.symbols[b.left].next = next;
        if let Some(nx) = next {
            s.symbols[nx].prev = Some(b.left);
        }
        let prev = s.symbols[b.left].prev;
        s.try_add(prev, Some(b.left));
        s.try_add(Some(b.left), next);
    }
    let mut cur = Some(0);
    while let Some(i) = cur {
        resegment(vocab, text, &s.symbols, &s.rev_merge, i, out)?;
        cur = s.symbols[i].next;
    }
    Ok(())
}

/// Emit one final symbol: its token, else the tokens of the pair it was merged from, else
/// one byte token per byte (an explicit stack instead of llama.cpp's recursion).
fn resegment(
    vocab: &LlamaVocab,
    text: &str,
    symbols: &[Symbol],
    rev_merge: &HashMap<&str, (usize, usize)>,
    index: usize,
    out: &mut Vec<u32>,
) -> Result<()> {
    let mut stack = vec![index];
    while let Some(i) = stack.pop() {
        let s = symbols[i];
        let piece = &text[s.start..s.start + s.n];
        if let Some(id) = vocab.token_id(piece) {
            out.push(id);
            continue;
        }
        match rev_merge.get(piece) {
            Some(&(l, r)) => {
                stack.push(r);
                stack.push(l);
            }
            None => {
                for &byte in piece.as_bytes() {
                    out.push(vocab.byte_token(byte)?);
                }
            }
        }
    }
    Ok(())
}
