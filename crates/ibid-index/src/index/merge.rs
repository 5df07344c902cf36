//! `ibid merge`: indexes built apart (the parts of `ibid build --shard i/N`, one per machine or
//! task, or any indexes of one tokenizer) become one index: their shards renumbered in part
//! order, hard-linked (copied across file systems) into a staging folder, each file checked
//! against its part's checksum, and one manifest written over all of them; the folder appears
//! atomically, as a build's does.
//!
//! Nothing is rebuilt: a shard's suffix array only ever points into its own token file, and every
//! query sums over shards, so shards built anywhere answer as one index (`tests/shard_build.rs`
//! checks counts, probabilities and ∞-gram answers against a single build).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::build::BuildObserver;
use super::format::{BuildParams, FileDigest, Manifest, ShardFile, ShardManifest, Split, MANIFEST_FILE};
use super::write::Staging;
use crate::corpus::ReadStats;
use crate::error::{Error, IoContext, Result};

/// What `merge` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeReport {
    pub output: PathBuf,
    pub parts: usize,
    pub shards: usize,
    pub documents: u64,
    pub tokens: u64,
    /// Files hard-linked from the parts, and files copied (another file system).
    pub linked: usize,
    pub copied: usize,
    pub total_s: f64,
}

/// Merge the indexes at `parts` into `output` (replacing an index there with `force`).
pub fn merge(parts: &[PathBuf], output: &Path, force: bool, observer: &dyn BuildObserver) -> Result<MergeReport> {
    let start = Instant::now();
    if parts.is_empty() {
        return Err(Error::Argument("no parts given".into()));
    }
    let out_abs = absolute(output);
    let mut manifests = Vec::with_capacity(parts.len());
    for dir in parts {
        if absolute(dir) == out_abs {
            return Err(Error::Argument(format!("{} is both a part and the output", dir.display())));
        }
        manifests.push((dir.clone(), Manifest::read(dir)?));
    }
    let ordered = in_part_order(manifests)?;
    let first = &ordered[0].1;
    for (dir, m) in &ordered[1..] {
        if !m.tokenizer.same_vocabulary(&first.tokenizer) || m.token_width != first.token_width {
            return Err(Error::TokenizerMismatch {
                index: format!(
                    "{} ({}-bit tokens) in {}",
                    first.tokenizer.describe(),
                    first.token_width.bytes() * 8,
                    ordered[0].0.display()
                ),
                given: format!("{} ({}-bit tokens) in {}", m.tokenizer.describe(), m.token_width.bytes() * 8, dir.display()),
            });
        }
    }

    let staging = Staging::new(output, force)?;
    let mut shards: Vec<ShardManifest> = Vec::new();
    let (mut linked, mut copied) = (0, 0);
    for (dir, m) in &ordered {
        for shard in &m.shards {
            let id = shards.len();
            observer.stage(&format!("{}: shard {} as shard {id}", dir.display(), shard.id));
            let mut files = std::collections::BTreeMap::new();
            for (name, digest) in &shard.files {
                let kind = ShardFile::ALL
                    .into_iter()
                    .find(|f| *name == f.name(shard.id))
                    .ok_or_else(|| Error::corrupt(dir.join(MANIFEST_FILE), format!("shard {} lists an unknown file {name:?}", shard.id)))?;
                let from = dir.join(name);
                let to = staging.path().join(kind.name(id));
                if std::fs::hard_link(&from, &to).is_ok() {
                    linked += 1;
                } else {
                    std::fs::copy(&from, &to).at(&from)?;
                    std::fs::File::open(&to).and_then(|f| f.sync_all()).at(&to)?;
                    copied += 1;
                }
                check_digest(&to, &from, digest)?;
                files.insert(kind.name(id), digest.clone());
            }
            shards.push(ShardManifest { id, files, ..shard.clone() });
        }
    }

    let manifest = Manifest {
        documents: shards.iter().map(|s| s.documents).sum(),
        tokens: shards.iter().map(|s| s.tokens).sum(),
        shards,
        build: merged_params(&ordered),
        ..first.clone()
    };
    let manifest_path = staging.path().join(MANIFEST_FILE);
    std::fs::write(&manifest_path, manifest.to_json()).at(&manifest_path)?;
    std::fs::File::open(&manifest_path).and_then(|f| f.sync_all()).at(&manifest_path)?;
    observer.stage("moving the index into place");
    staging.commit()?;
    Ok(MergeReport {
        output: output.to_path_buf(),
        parts: ordered.len(),
        shards: manifest.shards.len(),
        documents: manifest.documents,
        tokens: manifest.tokens,
        linked,
        copied,
        total_s: start.elapsed().as_secs_f64(),
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// The parts of one sharded build, each exactly once, ordered by part number; or whole indexes,
/// in the order given. A mix of the two, parts of different builds, or a part missing or given
/// twice is refused: the merged index would silently miss or double documents.
fn in_part_order(mut manifests: Vec<(PathBuf, Manifest)>) -> Result<Vec<(PathBuf, Manifest)>> {
    let with_part = manifests.iter().filter(|(_, m)| m.build.part.is_some()).count();
    if with_part == 0 {
        return Ok(manifests);
    }
    if with_part != manifests.len() {
        return Err(Error::Argument("parts of a sharded build (`build --shard`) and whole indexes cannot be merged together".into()));
    }
    let (first_dir, first) = (&manifests[0].0, &manifests[0].1);
    let part0 = first.build.part.expect("counted");
    for (dir, m) in &manifests {
        let part = m.build.part.expect("counted");
        let same_build = part.count == part0.count
            && part.split == part0.split
            && m.build.inputs == first.build.inputs
            && m.build.corpus == first.build.corpus;
        if !same_build {
            return Err(Error::Argument(format!(
                "{} and {} are parts of different builds (inputs, corpus options or --shard differ)",
                first_dir.display(),
                dir.display()
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for (dir, m) in &manifests {
        let part = m.build.part.expect("counted");
        if !seen.insert(part.index) {
            return Err(Error::Argument(format!("part {}/{} is given twice ({})", part.index, part.count, dir.display())));
        }
    }
    if let Some(missing) = (0..part0.count).find(|i| !seen.contains(i)) {
        return Err(Error::Argument(format!("part {missing}/{} is missing", part0.count)));
    }
    manifests.sort_by_key(|(_, m)| m.build.part.expect("counted").index);
    Ok(manifests)
}

/// The merged index's build record. Parts split by document each read the whole input, so their
/// reading statistics are one reading's; parts split by file read apart, so theirs add up.
fn merged_params(ordered: &[(PathBuf, Manifest)]) -> BuildParams {
    let first = &ordered[0].1.build;
    let read = match first.part.map(|p| p.split) {
        Some(Split::Documents) => first.read.clone(),
        _ => {
            let mut read = ReadStats::default();
            for (_, m) in ordered {
                read.documents += m.build.read.documents;
                read.skipped_bad += m.build.read.skipped_bad;
                read.skipped_empty += m.build.read.skipped_empty;
                read.skip_reasons.extend(m.build.read.skip_reasons.iter().cloned());
            }
            read.skip_reasons.truncate(crate::corpus::MAX_SKIP_REASONS);
            read
        }
    };
    let mut inputs: Vec<String> = Vec::new();
    for (_, m) in ordered {
        for input in &m.build.inputs {
            if !inputs.contains(input) {
                inputs.push(input.clone());
            }
        }
    }
    BuildParams {
        ibid_version: env!("CARGO_PKG_VERSION").into(),
        inputs,
        corpus: first.corpus.clone(),
        memory_budget: ordered.iter().map(|(_, m)| m.build.memory_budget).max().unwrap_or(0),
        max_shard_tokens: ordered.iter().map(|(_, m)| m.build.max_shard_tokens).max().unwrap_or(0),
        piece_bytes: first.piece_bytes,
        read,
        part: None,
    }
}

/// The linked or copied file must be what its part's manifest recorded: a part damaged in
/// transit is refused here, not found by the first query.
fn check_digest(path: &Path, source: &Path, expected: &FileDigest) -> Result<()> {
    let mut file = std::fs::File::open(path).at(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let actual = FileDigest { bytes, xxh3: format!("{:016x}", hasher.digest()) };
    if actual != *expected {
        return Err(Error::Checksum {
            path: source.to_path_buf(),
            expected: format!("{} bytes, xxh3 {}", expected.bytes, expected.xxh3),
            actual: format!("{} bytes, xxh3 {}", actual.bytes, actual.xxh3),
        });
    }
    Ok(())
}
