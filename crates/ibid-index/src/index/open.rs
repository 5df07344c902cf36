//! Opening an index: memory maps over every shard's files, validated before anything reads them.
//!
//! Sizes are checked against the manifest (or, for an index infini-gram wrote, against each other)
//! and document offsets are checked on open, so no query can read outside a map. Full checksums are
//! `Index::verify`'s job: they read every byte.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::format::{pointer_width, Manifest, ShardFile, MANIFEST_FILE};
use crate::error::{Error, IoContext, Result};
use crate::tokenize::TokenWidth;

/// Refuse anything but a regular file before opening it: opening a FIFO for reading waits for a
/// writer forever (`ibid info` hung), and a device is no index file.
pub(crate) fn regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).at(path)?;
    if !meta.is_file() {
        return Err(Error::corrupt(path, "not a regular file"));
    }
    Ok(())
}

/// A read-only file map; empty files have no map.
pub struct Mapped {
    map: Option<Mmap>,
    pub path: PathBuf,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Self> {
        regular_file(path)?;
        let file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and every access is bounds-checked against its length.
            // Index files are never modified in place (builds write a new folder and rename it), so
            // the only hazard left is another process truncating the file under us.
            Some(unsafe { Mmap::map(&file) }.at(path)?)
        };
        Ok(Mapped { map, path: path.to_path_buf() })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One shard: token file, suffix array, document offsets, optional metadata.
pub struct Shard {
    pub id: usize,
    pub width: TokenWidth,
    pub pointer_width: usize,
    pub tokenized: Mapped,
    pub table: Mapped,
    pub offsets: Mapped,
    pub metadata: Option<Mapped>,
    pub metaoff: Option<Mapped>,
}

impl Shard {
    /// Token positions (separators included).
    pub fn tokens(&self) -> u64 {
        self.tokenized.len() / self.width.bytes() as u64
    }

    pub fn documents(&self) -> u64 {
        self.offsets.len() / 8
    }

    /// Byte offset of document `doc`'s separator.
    pub fn doc_offset(&self, doc: u64) -> u64 {
        read_u64(self.offsets.bytes(), doc as usize)
    }

    /// The byte offset stored at suffix-array rank `rank`.
    #[inline]
    pub fn pointer(&self, rank: u64) -> u64 {
        let w = self.pointer_width;
        let at = rank as usize * w;
        let table = self.table.bytes();
        // One 8-byte load and a mask where the table has 8 bytes left, else byte by byte.
        if let Some(bytes) = table.get(at..at + 8) {
            let v = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
            return if w == 8 { v } else { v & ((1u64 << (8 * w)) - 1) };
        }
        let mut le = [0u8; 8];
        le[..w].copy_from_slice(&table[at..at + w]);
        u64::from_le_bytes(le)
    }

    /// The suffix that starts at byte `offset` (empty if a corrupt pointer points outside).
    #[inline]
    pub fn suffix_at(&self, offset: u64) -> &[u8] {
        self.tokenized.bytes().get(offset as usize..).unwrap_or(&[])
    }

    /// The token at byte `offset`, `None` past the end.
    #[inline]
    pub fn token_at(&self, offset: u64) -> Option<u32> {
        let w = self.width.bytes();
        let bytes = self.tokenized.bytes().get(offset as usize..offset as usize + w)?;
        let mut le = [0u8; 4];
        le[..w].copy_from_slice(bytes);
        Some(u32::from_le_bytes(le))
    }

    /// Tokens in the byte range `[start, end)`.
    pub fn tokens_between(&self, start: u64, end: u64) -> Vec<u32> {
        let w = self.width.bytes() as u64;
        (start / w..end / w).filter_map(|i| self.token_at(i * w)).collect()
    }

    /// The metadata JSON line of document `doc`, if the shard has metadata.
    pub fn metadata_line(&self, doc: u64) -> Option<&[u8]> {
        let (meta, off) = (self.metadata.as_ref()?, self.metaoff.as_ref()?);
        let n = off.len() / 8;
        if doc >= n {
            return None;
        }
        let start = read_u64(off.bytes(), doc as usize) as usize;
        let end = if doc + 1 < n { read_u64(off.bytes(), doc as usize + 1) as usize } else { meta.bytes().len() };
        let line = meta.bytes().get(start..end.max(start))?;
        Some(line.strip_suffix(b"\n").unwrap_or(line))
    }
}

fn read_u64(bytes: &[u8], i: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
    u64::from_le_bytes(le)
}

/// A whole index: its manifest (absent for an index infini-gram wrote) and its shards.
pub struct Index {
    pub dir: PathBuf,
    pub manifest: Option<Manifest>,
    pub width: TokenWidth,
    pub shards: Vec<Shard>,
    /// Next-token queries report "end of document" as this id (infini-gram's `eos_token_id`).
    pub eos_token_id: u32,
}

/// How to open an index.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The token width of an index without a manifest; guessed from file sizes when absent.
    pub token_width: Option<TokenWidth>,
    /// Overrides the end-of-document id of next-token queries (default: the tokenizer's EOS, else
    /// the separator value).
    pub eos_token_id: Option<u32>,
}

impl Index {
    pub fn open(dir: impl AsRef<Path>) -> Result<Index> {
        Index::open_with(dir, &OpenOptions::default())
    }

    pub fn open_with(dir: impl AsRef<Path>, options: &OpenOptions) -> Result<Index> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "no index folder here")));
        }
        let mut index = if dir.join(MANIFEST_FILE).exists() { open_manifest(dir, options)? } else { open_bare(dir, options)? };
        let from_manifest = index.manifest.as_ref().and_then(|m| m.tokenizer.eos_token_id);
        index.eos_token_id = options.eos_token_id.or(from_manifest).unwrap_or(index.width.separator());
        for shard in &index.shards {
            check_offsets(shard)?;
        }
        Ok(index)
    }

    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(Shard::tokens).sum()
    }

    pub fn documents(&self) -> u64 {
        self.shards.iter().map(Shard::documents).sum()
    }
}

fn open_files(dir: &Path, id: usize) -> Result<[Option<Mapped>; 5]> {
    let mut out: [Option<Mapped>; 5] = Default::default();
    for (slot, kind) in out.iter_mut().zip(ShardFile::ALL) {
        let path = dir.join(kind.name(id));
        if path.exists() {
            *slot = Some(Mapped::open(&path)?);
        }
    }
    Ok(out)
}

fn shard_from(dir: &Path, id: usize, width: TokenWidth, files: [Option<Mapped>; 5]) -> Result<Shard> {
    let [tokenized, table, offsets, metadata, metaoff] = files;
    let need = |m: Option<Mapped>, kind: ShardFile| m.ok_or_else(|| Error::corrupt(dir, format!("{} is missing", kind.name(id))));
    let tokenized = need(tokenized, ShardFile::Tokenized)?;
    let table = need(table, ShardFile::Table)?;
    let offsets = need(offsets, ShardFile::Offset)?;
    let w = width.bytes() as u64;
    if tokenized.is_empty() || tokenized.len() % w != 0 {
        return Err(Error::corrupt(&tokenized.path, format!("size {} is not a positive multiple of the token width {w}", tokenized.len())));
    }
    let ptr = pointer_width(tokenized.len());
    let tokens = tokenized.len() / w;
    if table.len() != tokens * ptr as u64 {
        return Err(Error::corrupt(&table.path, format!("size {} does not match {tokens} tokens × {ptr}-byte pointers", table.len())));
    }
    if offsets.is_empty() || offsets.len() % 8 != 0 {
        return Err(Error::corrupt(&offsets.path, format!("size {} is not a positive multiple of 8", offsets.len())));
    }
    let (metadata, metaoff) = match (metadata, metaoff) {
        (Some(m), Some(o)) => {
            if o.len() != offsets.len() {
                return Err(Error::corrupt(&o.path, "metadata offsets do not match the document count"));
            }
            (Some(m), Some(o))
        }
        _ => (None, None),
    };
    Ok(Shard { id, width, pointer_width: ptr, tokenized, table, offsets, metadata, metaoff })
}

fn open_manifest(dir: &Path, options: &OpenOptions) -> Result<Index> {
    let manifest = Manifest::read(dir)?;
    if let Some(w) = options.token_width {
        if w != manifest.token_width {
            return Err(Error::Argument(format!("the manifest says {}-byte tokens, not {}", manifest.token_width.bytes(), w.bytes())));
        }
    }
    if manifest.shards.is_empty() {
        return Err(Error::corrupt(dir.join(MANIFEST_FILE), "the manifest lists no shards"));
    }
    let mut shards = Vec::new();
    for entry in &manifest.shards {
        let files = open_files(dir, entry.id)?;
        for (kind, file) in ShardFile::ALL.iter().zip(&files) {
            let name = kind.name(entry.id);
            match (entry.files.get(&name), file) {
                (Some(d), Some(m)) if d.bytes != m.len() => {
                    return Err(Error::corrupt(&m.path, format!("size {} but the manifest says {}", m.len(), d.bytes)));
                }
                (Some(_), None) => return Err(Error::corrupt(dir, format!("{name} is missing"))),
                _ => {}
            }
        }
        let shard = shard_from(dir, entry.id, manifest.token_width, files)?;
        if shard.tokens() != entry.tokens || shard.documents() != entry.documents || shard.pointer_width != entry.pointer_width {
            return Err(Error::corrupt(dir, format!("shard {} does not match its manifest entry", entry.id)));
        }
        shards.push(shard);
    }
    if dir.join(ShardFile::Tokenized.name(manifest.shards.len())).exists() {
        return Err(Error::corrupt(dir, "there are more shards on disk than the manifest lists"));
    }
    Ok(Index { dir: dir.to_path_buf(), width: manifest.token_width, manifest: Some(manifest), shards, eos_token_id: 0 })
}

/// The token widths consistent with a shard's file sizes, best first.
fn candidate_widths(tokenized: &Mapped, table: &Mapped) -> Vec<TokenWidth> {
    let ds = tokenized.len();
    let ptr = pointer_width(ds) as u64;
    let mut found: Vec<TokenWidth> = [TokenWidth::U8, TokenWidth::U16, TokenWidth::U32]
        .into_iter()
        .filter(|w| {
            let wb = w.bytes() as u64;
            ds > 0 && ds.is_multiple_of(wb) && table.len() == ds / wb * ptr
        })
        .collect();
    // Every document starts with an all-ones separator: prefer the width whose first token is one.
    found.sort_by_key(|w| {
        let head = tokenized.bytes().get(..w.bytes());
        !head.is_some_and(|h| h.iter().all(|&b| b == 0xFF))
    });
    found
}

/// An index without a manifest, as infini-gram's indexer writes it.
fn open_bare(dir: &Path, options: &OpenOptions) -> Result<Index> {
    let mut shards = Vec::new();
    let mut width = options.token_width;
    for id in 0.. {
        if !dir.join(ShardFile::Tokenized.name(id)).exists() {
            break;
        }
        let files = open_files(dir, id)?;
        let w = match width {
            Some(w) => w,
            None => {
                let (Some(tok), Some(table)) = (&files[0], &files[1]) else {
                    return Err(Error::corrupt(dir, format!("shard {id} lacks its token file or suffix array")));
                };
                let candidates = candidate_widths(tok, table);
                *candidates
                    .first()
                    .ok_or_else(|| Error::corrupt(&tok.path, "no token width fits the sizes of the token file and suffix array"))?
            }
        };
        width = Some(w);
        shards.push(shard_from(dir, id, w, files)?);
    }
    let Some(width) = width.filter(|_| !shards.is_empty()) else {
        return Err(Error::corrupt(dir, format!("neither {MANIFEST_FILE} nor tokenized.0 is here")));
    };
    Ok(Index { dir: dir.to_path_buf(), manifest: None, width, shards, eos_token_id: 0 })
}

/// Document offsets must start at 0, increase, stay inside the token file and point at separators.
fn check_offsets(shard: &Shard) -> Result<()> {
    let w = shard.width.bytes() as u64;
    let sep = shard.width.separator();
    let size = shard.tokenized.len();
    let mut prev = None;
    for d in 0..shard.documents() {
        let off = shard.doc_offset(d);
        let ok_order = match prev {
            None => off == 0,
            Some(p) => off > p,
        };
        if !ok_order || off >= size || !off.is_multiple_of(w) {
            return Err(Error::corrupt(&shard.offsets.path, format!("document {d} has an invalid offset {off}")));
        }
        if shard.token_at(off) != Some(sep) {
            return Err(Error::corrupt(
                &shard.offsets.path,
                format!("document {d} starts at byte {off} of {}, which is not a separator", shard.tokenized.path.display()),
            ));
        }
        prev = Some(off);
    }
    Ok(())
}
