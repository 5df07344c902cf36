//! The GGUF tokenizer path with the real Gemma 3 270M model.

use crate::common::*;
use ibid::index::{self, BuildOptions, Index};
use ibid::tokenize::{self, GgufTokenizer, TokenWidth, Tokenizer, TokenizerSpec};

/// One model load serves every check: loading twice in parallel tests would only cost time.
#[test]
fn gemma_tokenizer() {
    let model = model_path();
    let tok = GgufTokenizer::load(model).unwrap();
    let id = tok.identity();
    assert_eq!(id.kind, "gguf");
    assert_eq!(id.vocab_size, 262_144);
    assert_eq!(tok.width(), TokenWidth::U32);
    assert_eq!(id.model_file.as_deref(), model.file_name().and_then(|f| f.to_str()));
    assert_eq!(id.vocab_hash.len(), 16);

    // Known tokens: no BOS is added, and text round-trips.
    let hello = tok.tokenize_piece("Hello world");
    assert!(!hello.is_empty() && hello[0] != 2, "{hello:?}");
    assert_eq!(tok.detokenize(&hello), "Hello world");

    // Cutting long real text into pieces gives exactly the whole-text tokens.
    for file in ["argparse.py", "typing.py", "difflib.py"] {
        let text = std::fs::read_to_string(stdlib().join(file)).unwrap();
        assert!(text.len() > 4 * tokenize::PIECE_TARGET_BYTES, "{file} is too short to be cut");
        let whole = tok.tokenize_piece(&text);
        let pieced = tokenize::tokenize(&tok, &text);
        assert_eq!(whole.len(), pieced.len(), "{file}");
        assert!(whole == pieced, "{file}: piecewise tokens differ from whole-text tokens");
    }

    // An index built with it counts like brute force over the same tokens.
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let files = ["json/decoder.py", "json/encoder.py", "json/scanner.py", "textwrap.py"];
    for f in files {
        std::fs::copy(stdlib().join(f), corpus.join(f.replace('/', "_"))).unwrap();
    }
    let out = dir.path().join("idx");
    let mut options = BuildOptions::new(&out);
    options.max_shard_tokens = Some(9_000);
    index::build(std::slice::from_ref(&corpus), &tok, &options, &index::Quiet).unwrap();
    let index = Index::open(&out).unwrap();
    assert!(index.shards.len() >= 2);
    assert_eq!(index.manifest.as_ref().unwrap().tokenizer, *id);
    let mut names: Vec<_> = std::fs::read_dir(&corpus).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let streams: Vec<Vec<u32>> = names
        .iter()
        .map(|p| {
            let mut s = vec![u32::MAX];
            s.extend(tokenize::tokenize(&tok, &std::fs::read_to_string(p).unwrap()));
            s
        })
        .collect();
    for query in ["def ", "return self", "    def __init__(self", "import re\n", "JSONDecodeError", "no such text anywhere"] {
        let ids = tokenize::tokenize(&tok, query);
        let expected: u64 = streams.iter().map(|s| brute_count(s, &ids)).sum();
        assert_eq!(index.count(&ids).unwrap(), expected, "{query:?}");
    }
    index.verify(true).unwrap();

    // The index loads its own tokenizer back from the manifest for text queries.
    let again = index.tokenizer(None).unwrap();
    assert_eq!(again.tokenize_piece("def f():"), tok.tokenize_piece("def f():"));

    // A bytes index refuses the Gemma vocabulary, naming both.
    let bytes_out = dir.path().join("bytes-idx");
    index::build(&[corpus], &ibid::tokenize::ByteTokenizer::new(), &BuildOptions::new(&bytes_out), &index::Quiet).unwrap();
    let bytes_index = Index::open(&bytes_out).unwrap();
    let spec = TokenizerSpec::Gguf(model.to_path_buf());
    let err = bytes_index.tokenizer(Some(&spec)).err().expect("a mismatch is refused").to_string();
    assert!(err.contains("mismatch") && err.contains("bytes") && err.contains("gguf"), "{err}");
}
