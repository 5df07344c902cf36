//! An in-memory token array stored at its on-disk width.

use std::io::{self, Write};

use crate::tokenize::TokenWidth;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenBuf {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl TokenBuf {
    pub fn new(width: TokenWidth) -> Self {
        match width {
            TokenWidth::U8 => TokenBuf::U8(Vec::new()),
            TokenWidth::U16 => TokenBuf::U16(Vec::new()),
            TokenWidth::U32 => TokenBuf::U32(Vec::new()),
        }
    }

    /// Token ids (any width) packed into the narrowest buffer that holds `width`.
    pub fn from_ids(width: TokenWidth, ids: &[u32]) -> Self {
        let mut buf = TokenBuf::new(width);
        buf.extend(ids);
        buf
    }

    pub fn width(&self) -> TokenWidth {
        match self {
            TokenBuf::U8(_) => TokenWidth::U8,
            TokenBuf::U16(_) => TokenWidth::U16,
            TokenBuf::U32(_) => TokenWidth::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TokenBuf::U8(v) => v.len(),
            TokenBuf::U16(v) => v.len(),
            TokenBuf::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append ids; callers check that each fits the width (ids above it are truncated).
    pub fn extend(&mut self, ids: &[u32]) {
        match self {
            TokenBuf::U8(v) => v.extend(ids.iter().map(|&t| t as u8)),
            TokenBuf::U16(v) => v.extend(ids.iter().map(|&t| t as u16)),
            TokenBuf::U32(v) => v.extend_from_slice(ids),
        }
    }

    pub fn push(&mut self, id: u32) {
        self.extend(&[id]);
    }

    pub fn get(&self, i: usize) -> u32 {
        match self {
            TokenBuf::U8(v) => u32::from(v[i]),
            TokenBuf::U16(v) => u32::from(v[i]),
            TokenBuf::U32(v) => v[i],
        }
    }

    /// Write the tokens little-endian, as in `tokenized.N`.
    pub fn write_le(&self, out: &mut impl Write) -> io::Result<()> {
        const CHUNK: usize = 1 << 14;
        match self {
            TokenBuf::U8(v) => out.write_all(v),
            TokenBuf::U16(v) => {
                let mut bytes = Vec::with_capacity(CHUNK * 2);
                for chunk in v.chunks(CHUNK) {
                    bytes.clear();
                    bytes.extend(chunk.iter().flat_map(|t| t.to_le_bytes()));
                    out.write_all(&bytes)?;
                }
                Ok(())
            }
            TokenBuf::U32(v) => {
                let mut bytes = Vec::with_capacity(CHUNK * 4);
                for chunk in v.chunks(CHUNK) {
                    bytes.clear();
                    bytes.extend(chunk.iter().flat_map(|t| t.to_le_bytes()));
                    out.write_all(&bytes)?;
                }
                Ok(())
            }
        }
    }

    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.width().bytes());
        self.write_le(&mut out).expect("writing to a Vec cannot fail");
        out
    }
}
