//! Suffix-array construction with libsais, in the order infini-gram uses: memcmp of the
//! little-endian token bytes.
//!
//! Byte-swapping each token makes numeric order equal memcmp order of its little-endian bytes, so an
//! integer suffix array over swapped tokens sorts the byte suffixes that start at token boundaries.
//! u32 tokens are also rank-compressed, because libsais needs a dense alphabet for `i32` text.
//! Everything is done in place: the token buffer is consumed.

use std::io::Write;

use libsais::suffix_array::AlphabetSize;
use libsais::{SuffixArrayConstruction, ThreadCount};

use super::tokens::TokenBuf;
use crate::error::{Error, Result};

/// The largest shard libsais can sort with 32-bit positions.
pub const MAX_SHARD_TOKENS: u64 = i32::MAX as u64 - 1;

fn thread_count(threads: usize) -> ThreadCount {
    ThreadCount::fixed(threads.clamp(1, u16::MAX as usize) as u16)
}

fn sais_error(e: libsais::LibsaisError) -> Error {
    Error::SuffixArray(format!("{e:?}"))
}

/// Token positions sorted by their suffixes. Consumes `tokens` (it is transformed in place).
pub fn suffix_array(tokens: TokenBuf, threads: usize) -> Result<Vec<i32>> {
    if tokens.len() as u64 > MAX_SHARD_TOKENS {
        return Err(Error::SuffixArray(format!("{} tokens in one shard is more than {MAX_SHARD_TOKENS}", tokens.len())));
    }
    let threads = thread_count(threads);
    match tokens {
        TokenBuf::U8(text) => {
            Ok(SuffixArrayConstruction::for_text(&text).in_owned_buffer32().multi_threaded(threads).run().map_err(sais_error)?.into_vec())
        }
        TokenBuf::U16(mut text) => {
            for t in text.iter_mut() {
                *t = t.swap_bytes();
            }
            Ok(SuffixArrayConstruction::for_text(&text).in_owned_buffer32().multi_threaded(threads).run().map_err(sais_error)?.into_vec())
        }
        TokenBuf::U32(text) => {
            let (mut ranks, alphabet) = rank_compress(text);
            let construction = SuffixArrayConstruction::for_text_mut(&mut ranks).in_owned_buffer32().multi_threaded(threads);
            // SAFETY: rank_compress yields values in 0..alphabet, none negative.
            let construction = unsafe { construction.with_alphabet_size(AlphabetSize::new(alphabet)) };
            Ok(construction.run().map_err(sais_error)?.into_vec())
        }
    }
}

/// Replace each token by the rank of its byte-swapped value among the distinct tokens.
fn rank_compress(mut text: Vec<u32>) -> (Vec<i32>, i32) {
    const SEP: u32 = u32::MAX;
    // Vocabularies are small next to the corpus: a table indexed by id beats sorting a copy.
    let max_id = text.iter().copied().filter(|&t| t != SEP).max().unwrap_or(0);
    let dense = max_id < 1 << 26;
    let mut distinct: Vec<u32> = if dense {
        let mut seen = vec![false; max_id as usize + 1];
        let mut has_sep = false;
        for &t in &text {
            if t == SEP {
                has_sep = true;
            } else {
                seen[t as usize] = true;
            }
        }
        let mut d: Vec<u32> = (0..=max_id).filter(|&t| seen[t as usize]).collect();
        if has_sep {
            d.push(SEP);
        }
        d
    } else {
        let mut d = text.clone();
        d.sort_unstable();
        d.dedup();
        d
    };
    distinct.sort_unstable_by_key(|t| t.swap_bytes());
    if dense {
        let mut rank_of = vec![0u32; max_id as usize + 1];
        let mut sep_rank = 0;
        for (r, &t) in distinct.iter().enumerate() {
            if t == SEP {
                sep_rank = r as u32;
            } else {
                rank_of[t as usize] = r as u32;
            }
        }
        for t in text.iter_mut() {
            *t = if *t == SEP { sep_rank } else { rank_of[*t as usize] };
        }
    } else {
        let rank_of: std::collections::HashMap<u32, u32> = distinct.iter().enumerate().map(|(r, &t)| (t, r as u32)).collect();
        for t in text.iter_mut() {
            *t = rank_of[t];
        }
    }
    // Ranks are below 2^31 (shards are capped), so each is the same non-negative i32.
    let ranks = text.into_iter().map(|r| r as i32).collect();
    (ranks, (distinct.len() as i32).max(1))
}

/// Write the suffix array as infini-gram's `table.N`: byte offsets, `pointer_width` bytes each.
pub fn write_table(sa: &[i32], token_bytes: usize, pointer_width: usize, out: &mut impl Write) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in sa.chunks(1 << 13) {
        buf.clear();
        for &p in chunk {
            let offset = p as u64 * token_bytes as u64;
            buf.extend_from_slice(&offset.to_le_bytes()[..pointer_width]);
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::TokenWidth;

    fn brute(bytes: &[u8], width: usize) -> Vec<i32> {
        let mut pos: Vec<i32> = (0..(bytes.len() / width) as i32).collect();
        pos.sort_by(|&a, &b| bytes[a as usize * width..].cmp(&bytes[b as usize * width..]));
        pos
    }

    #[test]
    fn sorts_by_little_endian_bytes() {
        for width in [TokenWidth::U8, TokenWidth::U16, TokenWidth::U32] {
            let sep = width.separator();
            let ids = [sep, 1, 256, 2, 513, sep, 256, 1, 1, 70_000 % sep, sep, 3];
            let buf = TokenBuf::from_ids(width, &ids);
            let bytes = buf.to_le_bytes();
            assert_eq!(suffix_array(buf, 1).unwrap(), brute(&bytes, width.bytes()), "{width:?}");
        }
    }

    #[test]
    fn sparse_u32_alphabet_uses_the_hash_path() {
        let ids = [u32::MAX, 1 << 30, 5, 1 << 30, 5, 7, u32::MAX, 5];
        let buf = TokenBuf::from_ids(TokenWidth::U32, &ids);
        let bytes = buf.to_le_bytes();
        assert_eq!(suffix_array(buf, 2).unwrap(), brute(&bytes, 4));
    }
}
