//! `ibid verify`: read every byte of an index and check it against the manifest and the layout.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::open::{Index, Mapped, Shard};
use super::write::digest_of;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub files_checked: usize,
    pub bytes_checked: u64,
    /// False for an index without a manifest: there were no checksums to compare.
    pub checksums: bool,
    pub pointers_checked: u64,
    /// Adjacent suffixes compared (only with `deep`).
    pub order_checked: u64,
}

impl Index {
    /// Check every file's checksum and every suffix-array pointer; with `deep`, also that the
    /// suffix array is sorted (reads the token file once per suffix: slow on big indexes).
    pub fn verify(&self, deep: bool) -> Result<VerifyReport> {
        let mut report =
            VerifyReport { files_checked: 0, bytes_checked: 0, checksums: self.manifest.is_some(), pointers_checked: 0, order_checked: 0 };
        for shard in &self.shards {
            let files: Vec<&Mapped> =
                [Some(&shard.tokenized), Some(&shard.table), Some(&shard.offsets), shard.metadata.as_ref(), shard.metaoff.as_ref()]
                    .into_iter()
                    .flatten()
                    .collect();
            if let Some(manifest) = &self.manifest {
                let entry = &manifest.shards[shard.id];
                // Every file the manifest names is here, and every file here has its checksum: a
                // manifest without a file's entry skipped that file and still reported checksums.
                let here: Vec<String> =
                    files.iter().map(|m| m.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect();
                if let Some(missing) = entry.files.keys().find(|name| !here.contains(name)) {
                    return Err(Error::corrupt(
                        &shard.tokenized.path,
                        format!("the manifest names {missing}, which this shard does not have"),
                    ));
                }
                files.par_iter().try_for_each(|m| {
                    let name = m.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let Some(expected) = entry.files.get(&name) else {
                        return Err(Error::corrupt(&m.path, "the manifest has no checksum for this file"));
                    };
                    let actual = digest_of(m.bytes());
                    if actual != *expected {
                        return Err(Error::Checksum { path: m.path.clone(), expected: expected.xxh3.clone(), actual: actual.xxh3 });
                    }
                    Ok(())
                })?;
            }
            report.files_checked += files.len();
            report.bytes_checked += files.iter().map(|m| m.len()).sum::<u64>();
            report.pointers_checked += check_pointers(shard)?;
            check_metadata(shard)?;
            if deep {
                report.order_checked += check_order(shard)?;
            }
        }
        Ok(report)
    }
}

/// Each pointer is inside the token file, on a token boundary, and used once.
fn check_pointers(shard: &Shard) -> Result<u64> {
    let n = shard.tokens();
    let w = shard.width.bytes() as u64;
    let mut seen = vec![false; n as usize];
    for rank in 0..n {
        let p = shard.pointer(rank);
        if !p.is_multiple_of(w) || p / w >= n || std::mem::replace(&mut seen[(p / w) as usize], true) {
            return Err(Error::corrupt(&shard.table.path, format!("entry {rank} holds an invalid or repeated pointer {p}")));
        }
    }
    Ok(n)
}

fn check_order(shard: &Shard) -> Result<u64> {
    let n = shard.tokens();
    (1..n).into_par_iter().try_for_each(|rank| {
        let a = shard.suffix_at(shard.pointer(rank - 1));
        let b = shard.suffix_at(shard.pointer(rank));
        if a >= b {
            return Err(Error::corrupt(&shard.table.path, format!("suffixes at ranks {} and {rank} are out of order", rank - 1)));
        }
        Ok(())
    })?;
    Ok(n.saturating_sub(1))
}

/// Each document's metadata offset is inside the metadata file and after the one before, and
/// each line is a JSON value.
fn check_metadata(shard: &Shard) -> Result<()> {
    let (Some(meta), Some(off)) = (&shard.metadata, &shard.metaoff) else { return Ok(()) };
    let offsets: Vec<u64> = off.bytes().chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    for (doc, pair) in offsets.windows(2).enumerate() {
        if pair[0] > pair[1] {
            return Err(Error::corrupt(&off.path, format!("document {}'s metadata starts before document {doc}'s", doc + 1)));
        }
    }
    if let Some(&last) = offsets.last() {
        if last > meta.len() {
            return Err(Error::corrupt(&off.path, format!("an offset ({last}) lies past the end of the metadata ({} bytes)", meta.len())));
        }
    }
    for doc in 0..shard.documents() {
        let line = shard.metadata_line(doc).unwrap_or_default();
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_err() {
            return Err(Error::corrupt(&meta.path, format!("document {doc}'s metadata is not a JSON line")));
        }
    }
    Ok(())
}
