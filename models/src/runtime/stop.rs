//! Stop strings over streamed text, shared by the [`Generator`](super::Generator) and the
//! engine's requests: text that could still become the start of a stop string is held back until
//! it cannot, and the earliest stop string found cuts the text before it.

/// The held-back tail of one generation's text.
#[derive(Debug, Default)]
pub struct StopText {
    held: String,
}

impl StopText {
    /// Append newly detokenized text.
    pub fn push(&mut self, piece: &str) {
        self.held.push_str(piece);
    }

    /// Release the held text up to where a stop string could still begin (all of it when
    /// `done`). When a stop string occurs, returns the text before the earliest one and that stop
    /// string; the rest of the held text is dropped.
    pub fn release(&mut self, stops: &[String], done: bool) -> (String, Option<String>) {
        if let Some((at, s)) = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i)
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, Some(s.clone()));
        }
        let keep = if done { 0 } else { self.stop_prefix_len(stops) };
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, None)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop string
    /// (at a char boundary).
    fn stop_prefix_len(&self, stops: &[String]) -> usize {
        let h = &self.held;
        let mut best = 0;
        for s in stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > best
                    && i <= h.len()
                    && h.is_char_boundary(h.len() - i)
                    && h.ends_with(&s[..i])
                {
                    best = i;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::StopText;

    fn stops(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn holds_back_a_possible_stop_prefix_then_releases_it() {
        let st = stops(&["END"]);
        let mut t = StopText::default();
        t.push("abc E");
        assert_eq!(t.release(&st, false), ("abc ".into(), None));
        t.push("N");
        assert_eq!(t.release(&st, false), (String::new(), None));
        t.push("x");
        assert_eq!(t.release(&st, false), ("ENx".into(), None));
    }

    #[test]
    fn earliest_stop_cuts_and_drops_the_rest() {
        let st = stops(&["zz", "b"]);
        let mut t = StopText::default();
        t.push("a b zz c");
        assert_eq!(t.release(&st, false), ("a ".into(), Some("b".into())));
        assert_eq!(t.release(&st, true), (String::new(), None));
    }

    #[test]
    fn done_releases_everything_and_multibyte_prefixes_stay_on_boundaries() {
        let st = stops(&["é!", ""]);
        let mut t = StopText::default();
        t.push("caf\u{e9}");
        assert_eq!(t.release(&st, false), ("caf".into(), None));
        assert_eq!(t.release(&st, true), ("\u{e9}".into(), None));
    }
}
