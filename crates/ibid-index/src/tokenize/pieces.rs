//! Where long text may be cut before tokenizing.
//!
//! Cutting at a single `\n` followed by a non-whitespace character leaves the tokens unchanged for
//! BPE/SPM vocabularies (no merge spans such a boundary). Text with no such place within
//! `PIECE_HARD_LIMIT` bytes (one long line) is cut before a space that starts a word, which matches
//! whole-text tokenization in practice but is not guaranteed, and as a last resort at a character
//! boundary.

use std::ops::Range;

/// Aim for pieces of this size: the tokenizer is fastest on 4–64 KiB.
pub const PIECE_TARGET_BYTES: usize = 16 << 10;
const PIECE_HARD_LIMIT: usize = 4 * PIECE_TARGET_BYTES;

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn newline_cut(bytes: &[u8], i: usize) -> bool {
    i >= 2 && bytes[i - 1] == b'\n' && !is_space(bytes[i]) && !matches!(bytes[i - 2], b'\n' | b'\r')
}

fn word_cut(bytes: &[u8], i: usize) -> bool {
    i + 1 < bytes.len() && bytes[i] == b' ' && !is_space(bytes[i - 1]) && !is_space(bytes[i + 1])
}

/// Byte ranges that cover `text` in order.
pub fn pieces(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / PIECE_TARGET_BYTES + 1);
    let mut start = 0;
    while bytes.len() - start > PIECE_HARD_LIMIT {
        let window = start + PIECE_TARGET_BYTES..start + PIECE_HARD_LIMIT;
        let cut =
            window.clone().find(|&i| newline_cut(bytes, i)).or_else(|| window.clone().find(|&i| word_cut(bytes, i))).unwrap_or_else(|| {
                let mut i = window.end;
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                i
            });
        out.push(start..cut);
        start = cut;
    }
    if start < bytes.len() || out.is_empty() {
        out.push(start..bytes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_cover(text: &str) {
        let p = pieces(text);
        assert_eq!(p.first().unwrap().start, 0);
        assert_eq!(p.last().unwrap().end, text.len());
        for w in p.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            assert!(w[0].end > w[0].start);
        }
        for r in &p {
            assert!(text.is_char_boundary(r.start) && text.is_char_boundary(r.end));
            assert!(r.len() <= PIECE_HARD_LIMIT);
        }
    }

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(pieces("abc"), vec![0..3]);
        assert_eq!(pieces(""), vec![0..0]);
    }

    #[test]
    fn prefers_single_newline_before_a_word() {
        let line = "x = 1\n\n  indented\n";
        let text = line.repeat(5000) + "end";
        check_cover(&text);
        for r in pieces(&text).iter().skip(1) {
            assert!(newline_cut(text.as_bytes(), r.start), "cut at {}", r.start);
        }
    }

    #[test]
    fn one_long_line_cuts_before_words() {
        let text = "alpha beta ".repeat(20_000);
        check_cover(&text);
        assert!(pieces(&text).len() > 1);
        for r in pieces(&text).iter().skip(1) {
            assert_eq!(text.as_bytes()[r.start], b' ');
        }
    }

    proptest! {
        #[test]
        fn pieces_cover_any_text(s in "(\\PC|\n| ){0,300}", reps in 1usize..2000) {
            check_cover(&s.repeat(reps));
        }
    }
}
