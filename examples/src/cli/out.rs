//! Output helpers shared by the subcommands: aligned text tables, byte counts for people, and
//! string abbreviation. Writers are plain `io::Write`, so a closed pipe (`kiln ... | head`)
//! surfaces as an error the caller turns into a quiet exit instead of a panic.

use std::io::{self, Write};

/// `1.50 MiB`, `512 B` (the planner's formatting, one definition).
pub use kiln_models::planner::human_bytes;

/// `1234567` → `1,234,567`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A string quoted and escaped like Rust's `{:?}`, cut to about `max` characters with the
/// total length noted: `"{% for m in messages %}…" (224 bytes)`.
pub fn abbreviate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(max).collect();
    let quoted = format!("{head:?}");
    format!("{}…\" ({} bytes)", &quoted[..quoted.len() - 1], s.len())
}

/// Collapse an error message to one line.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A text table with a header row; numeric columns can be right-aligned.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `cols`: (header, right-aligned).
    pub fn new(cols: &[(&'static str, bool)]) -> Table {
        Table {
            headers: cols.iter().map(|c| c.0).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// Write with `indent` spaces before each line.
    pub fn write(&self, w: &mut dyn Write, indent: usize) -> io::Result<()> {
        let n = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |w: &mut dyn Write, cells: &[String]| -> io::Result<()> {
            let mut s = " ".repeat(indent);
            for (i, c) in cells.iter().enumerate().take(n) {
                let pad = width[i].saturating_sub(c.chars().count());
                let last = i + 1 == n;
                if self.right[i] {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    if !last {
                        s.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    s.push_str("  ");
                }
            }
            writeln!(w, "{}", s.trim_end())
        };
        let head: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        line(w, &head)?;
        for r in &self.rows {
            line(w, r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(12), "12");
        assert_eq!(abbreviate("abc", 10), "\"abc\"");
        assert_eq!(abbreviate("abcdef", 3), "\"abc…\" (6 bytes)");
        assert_eq!(one_line("a\n  b\r\n"), "a b");
        let mut t = Table::new(&[("NAME", false), ("N", true)]);
        t.row(vec!["x".into(), "10".into()]);
        let mut out = Vec::new();
        t.write(&mut out, 1).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), " NAME   N\n x     10\n");
    }
}
