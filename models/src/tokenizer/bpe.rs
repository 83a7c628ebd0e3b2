//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) tokenization of one text fragment,
//! llama.cpp's `llm_tokenizer_bpe_session` (MODELS.md §6.4): pre-split into words, map each
//! word's bytes to GPT-2's byte-to-unicode alphabet, then repeatedly merge the adjacent pair of
//! lowest merge rank (leftmost on ties). A final symbol that is not a token falls back to the
//! tokens of its single bytes.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::llama::LlamaVocab;

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
    /// The concatenated text when queued; a pair whose text changed since is stale.
    text: String,
    rank: u32,
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
    /// Max-heap order: lowest rank first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68
/// bytes to U+0100.. in byte order.
pub(crate) fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
            c
        };
    }
    table
}

/// Tokenize one fragment and append the ids to `out`.
pub(crate) fn tokenize(vocab: &LlamaVocab, text: &str, out: &mut Vec<u32>) {
    let Some(bpe) = vocab.bpe() else {
        return;
    };
    let mut word = String::new();
    for raw in bpe.pre.split(text) {
        word.clear();
        for &b in raw.as_bytes() {
            word.push(vocab.byte_char(b));
        }
        tokenize_word(vocab, bpe.ignore_merges, &word, out);
    }
}

fn tokenize_word(vocab: &LlamaVocab, ignore_merges: bool, word: &str, out: &mut Vec<u32>) {
    if ignore_merges && let Some(id) = vocab.token_id(word) {
        out.push(id);
        return;
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
    for (i, (start, c)) in word.char_indices().enumerate() {
        let n = c.len_utf8();
        symbols.push(Symbol {
            prev: i.checked_sub(1),
            next: (start + n < word.len()).then_some(i + 1),
            start,
            n,
        });
    }
    let piece = |symbols: &[Symbol], i: usize| -> &str {
        let s = symbols[i];
        &word[s.start..s.start + s.n]
    };
    let mut queue = BinaryHeap::new();
    let add =
        |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, l: Option<usize>, r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else {
                return;
            };
            let (lt, rt) = (piece(symbols, l), piece(symbols, r));
            if let Some(rank) = vocab.merge_rank(lt, rt) {
                queue.push(Bigram {
                    left: l,
                    right: r,
                    text: format!("{lt}{rt}"),
                    rank,
                });
            }
        };
    for i in 1..symbols.len() {
        add(&symbols, &mut queue, Some(i - 1), Some(i));
    }
    while let Some(b) = queue.pop() {
        let (ln, rn) = (symbols[b.left].n, symbols[b.right].n);
        if ln == 0 || rn == 0 {
            continue;
        }
        let (ls, rs) = (symbols[b.left].start, symbols[b.right].start);
        let current_l = &word[ls..ls + ln];
        let current_r = &word[rs..rs + rn];
        if current_l.len() + current_r.len() != b.text.len()
            || !b.text.starts_with(current_l)
            || !b.text.ends_with(current_r)
        {
            continue;
        }
        symbols[b.left].n += rn;
        symbols[b.right].n = 0;
        let next = symbols[b.right].next;
        symbols[b.left].next = next;
        if let Some(nx) = next {
            symbols[nx].prev = Some(b.left);
        }
        let prev = symbols[b.left].prev;
        add(&symbols, &mut queue, prev, Some(b.left));
        add(&symbols, &mut queue, Some(b.left), next);
    }
    let mut cur = if symbols.is_empty() { None } else { Some(0) };
    while let Some(i) = cur {
        let s = symbols[i];
        cur = s.next;
        if s.n == 0 {
            continue;
        }
        let text = &word[s.start..s.start + s.n];
        match vocab.token_id(text) {
            Some(id) => out.push(id),
            None => {
                // llama.cpp looks up each single byte of the encoded text as a token.
                for b in text.bytes() {
                    if let Some(id) = std::str::from_utf8(&[b])
                        .ok()
                        .and_then(|s| vocab.token_id(s))
                    {
                        out.push(id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_table_matches_gpt2() {
        let t = super::byte_to_unicode();
        assert_eq!(t[usize::from(b' ')], 'Ġ');
        assert_eq!(t[usize::from(b'\n')], 'Ċ');
        assert_eq!(t[usize::from(b'a')], 'a');
        assert_eq!(t[0xA0], 'ł');
        assert_eq!(t[0xAD], 'Ń');
        let mut seen = std::collections::HashSet::new();
        assert!(t.iter().all(|c| seen.insert(*c)));
    }
}
