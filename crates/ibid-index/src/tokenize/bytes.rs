use super::{TokenWidth, Tokenizer, TokenizerIdentity};

/// UTF-8 bytes as tokens. Byte 0xFF never occurs in UTF-8, so it is free for the separator.
pub struct ByteTokenizer {
    identity: TokenizerIdentity,
}

impl ByteTokenizer {
    pub fn new() -> Self {
        ByteTokenizer {
            identity: TokenizerIdentity {
                kind: "bytes".into(),
                model_file: None,
                model_path: None,
                vocab_size: 256,
                vocab_hash: "utf8-bytes".into(),
                eos_token_id: None,
            },
        }
    }
}

impl Default for ByteTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokenizer for ByteTokenizer {
    fn identity(&self) -> &TokenizerIdentity {
        &self.identity
    }

    fn width(&self) -> TokenWidth {
        TokenWidth::U8
    }

    fn tokenize_piece(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    fn detokenize(&self, tokens: &[u32]) -> String {
        let bytes: Vec<u8> = tokens.iter().map(|&t| t.min(255) as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
