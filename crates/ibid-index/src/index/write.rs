//! Files written with a running checksum, and the atomic swap of a finished index into place.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::format::{FileDigest, MANIFEST_FILE};
use crate::error::{Error, IoContext, Result};

/// A buffered file writer that hashes what it writes.
pub struct HashingWriter {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: xxhash_rust::xxh3::Xxh3,
    bytes: u64,
}

impl HashingWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).at(path)?;
        Ok(HashingWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            bytes: 0,
        })
    }

    /// Flush, fsync and return the file's digest.
    pub fn finish(self) -> Result<FileDigest> {
        let path = self.path;
        let file = self.out.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
        file.sync_all().at(&path)?;
        Ok(FileDigest { bytes: self.bytes, xxh3: format!("{:016x}", self.hasher.digest()) })
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Write one whole file through a `HashingWriter`.
pub fn write_file(path: &Path, fill: impl FnOnce(&mut HashingWriter) -> std::io::Result<()>) -> Result<FileDigest> {
    let mut w = HashingWriter::create(path)?;
    fill(&mut w).at(path)?;
    w.finish()
}

/// Checksum of a byte slice, as recorded in manifests.
pub fn digest_of(bytes: &[u8]) -> FileDigest {
    FileDigest { bytes: bytes.len() as u64, xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes)) }
}

/// Is `dir` something a forced build may replace: a folder whose every entry is an index file (an
/// empty folder too)? Index files are those the manifest names, the manifest, ibid's recycling
/// matrices, and without a readable manifest infini-gram's own file names. A folder holding
/// anything else (a user's file beside an `ibid.json` or a `tokenized.0`) is refused: a forced
/// build replaced such a folder, other files and all.
fn replaceable(dir: &Path) -> bool {
    let named: Option<std::collections::BTreeSet<String>> =
        super::format::Manifest::read(dir).ok().map(|m| m.shards.iter().flat_map(|s| s.files.keys().cloned()).collect());
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.into_iter().all(|entry| {
        let Ok(entry) = entry else { return false };
        let name = entry.file_name().to_string_lossy().into_owned();
        entry.file_type().is_ok_and(|t| t.is_file()) && is_index_file(&name, named.as_ref())
    })
}

/// Whether `name` is a file of an index whose manifest names `named` (`None`: no manifest).
fn is_index_file(name: &str, named: Option<&std::collections::BTreeSet<String>>) -> bool {
    let infini_gram = || {
        name.split_once('.').is_some_and(|(kind, shard)| {
            super::format::ShardFile::ALL.iter().any(|f| f.stem() == kind) && !shard.is_empty() && shard.bytes().all(|b| b.is_ascii_digit())
        })
    };
    let recycling = name.starts_with("recycle-") && (name.ends_with(".bin") || name.ends_with(".bin.bench-aside"));
    name == MANIFEST_FILE || recycling || named.map_or_else(infini_gram, |n| n.contains(name))
}

/// A build in progress: a hidden temporary folder beside the destination, renamed into place at
/// the end, removed if the build fails or is dropped, or the process gets SIGINT, SIGTERM or
/// SIGHUP ([`remove_staging_on_signal`]). Its name carries the building process's id, so that the
/// next build beside it removes what a killed build left (up to 477 MB for a 100 MB corpus).
pub struct Staging {
    dir: tempfile::TempDir,
    dest: PathBuf,
    force: bool,
}

const STAGING_PREFIX: &str = ".ibid-build-";

/// Staging folders of this process, for the signal thread to remove.
static LIVE_STAGING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn live_staging() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE_STAGING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// On SIGINT, SIGTERM or SIGHUP, remove this process's staging folders and exit (status 128 +
/// the signal's number), as the shell reports a process killed by it. For commands that build.
pub fn remove_staging_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::Internal(format!("cannot watch for signals: {e}")))?;
    std::thread::Builder::new()
        .name("ibid-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                for dir in live_staging().iter() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                std::process::exit(128 + signal);
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// Remove staging folders in `parent` whose build process is gone: the id in their name is not a
/// running process (on Linux, no `/proc/ID`), or, for names from before ids were in them, older
/// than a day. Elsewhere than Linux only the old names are judged, by age.
fn remove_stale_staging(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    let proc_fs = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let pid = rest.split_once('-').map(|(pid, _)| pid).filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let stale = match pid {
            Some(pid) => proc_fs && pid != std::process::id().to_string() && !Path::new("/proc").join(pid).exists(),
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(24 * 3600))),
        };
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Staging {
    pub fn new(dest: &Path, force: bool) -> Result<Self> {
        if dest.exists() {
            if !force {
                return Err(Error::IndexExists(dest.to_path_buf()));
            }
            if !dest.is_dir() || !replaceable(dest) {
                return Err(Error::Argument(format!("refusing to replace {}: it is not an index or an empty folder", dest.display())));
            }
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).at(&parent)?;
        remove_stale_staging(&parent);
        let dir = tempfile::Builder::new().prefix(&format!("{STAGING_PREFIX}{}-", std::process::id())).tempdir_in(&parent).at(&parent)?;
        live_staging().push(dir.path().to_path_buf());
        Ok(Staging { dir, dest: dest.to_path_buf(), force })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Move the finished index into place. An index already there (with `force`) is moved aside
    /// first and removed only after the new one is in place.
    pub fn commit(self) -> Result<()> {
        let parent = self.dir.path().parent().map(Path::to_path_buf).unwrap_or_default();
        live_staging().retain(|d| d != self.dir.path());
        let staged = self.dir.keep();
        let mut old = None;
        if self.dest.exists() {
            if !self.force {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(Error::IndexExists(self.dest));
            }
            let aside = tempfile::Builder::new().prefix(".ibid-old-").tempdir_in(&parent).at(&parent)?.keep();
            std::fs::remove_dir(&aside).at(&aside)?;
            std::fs::rename(&self.dest, &aside).at(&self.dest)?;
            old = Some(aside);
        }
        if let Err(e) = std::fs::rename(&staged, &self.dest) {
            if let Some(aside) = &old {
                let _ = std::fs::rename(aside, &self.dest);
            }
            let _ = std::fs::remove_dir_all(&staged);
            return Err(Error::io(&self.dest, e));
        }
        if let Ok(d) = File::open(&parent) {
            let _ = d.sync_all();
        }
        if let Some(aside) = old {
            std::fs::remove_dir_all(&aside).at(&aside)?;
        }
        Ok(())
    }
}
