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
        let mut report = VerifyReport {
            files_checked: 0,
            bytes_checked: 0,
            checksums: self.manifest.is_some(),
            pointers_checked: 0,
            order_checked: 0,
        };
        for shard in &self.shards {
            let files: Vec<&Mapped> = [Some(&shard.tokenized), Some(&shard.table), Some(&shard.offsets), shard.metadata.as_ref(), shard.metaoff.as_ref()]
                .into_iter()
                .flatten()
                .collect();
            if let Some(manifest) = &self.manifest {
                let entry = &manifest.shards[shard.id];
                files.par_iter().try_for_each(|m| {
                    let name = m.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let Some(expected) = entry.files.get(&name) else {
                        return Ok(());
                    };
                    let actual = digest_of(m.bytes());
                    if actual != *expected {
                        return Err(Error::Checksum {
                            path: m.path.clone(),
                            expected: expected.xxh3.clone(),
                            actual: actual.xxh3,
                        });
                    }
                    Ok(())
                })?;
            }
            report.files_checked += files.len();
            report.bytes_checked += files.iter().map(|m| m.len()).sum::<u64>();
            report.pointers_checked += check_pointers(shard)?;
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
        if p % w != 0 || p / w >= n || std::mem::replace(&mut seen[(p / w) as usize], true) {
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
