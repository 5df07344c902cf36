//! Criterion benchmark of count, ntd and infgram_prob on a small bytes index built in the setup from
//! a few CPython standard-library files (one document each), in a temporary folder.
//!
//! `cargo bench --bench queries` (add a filter like `-- ntd` to run some). The stdlib folder comes
//! from `IBID_BENCH_STDLIB`, else from `python3`'s `sysconfig`, else `/usr/lib/python3.*`; without
//! any, the crate's own `src/**/*.rs` files are indexed instead. Queries are n-grams read from the
//! index's own token file at seeded random positions (never across a document separator). Each
//! iteration runs the whole set of `QUERIES` queries, so the throughput line is queries per second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ibid::index::{BuildOptions, Index};
use ibid::tokenize::ByteTokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const STDLIB_FILES: &[&str] = &[
    "os.py",
    "typing.py",
    "argparse.py",
    "inspect.py",
    "subprocess.py",
    "dataclasses.py",
    "pathlib.py",
    "collections/__init__.py",
    "functools.py",
    "tarfile.py",
];
const QUERIES: usize = 64;
const SEED: u64 = 0x1b1d;

fn stdlib_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("IBID_BENCH_STDLIB") {
        return Some(PathBuf::from(d));
    }
    let from_python = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(d) = from_python.filter(|d| d.join("os.py").is_file()) {
        return Some(d);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3.")) && p.join("os.py").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn inputs() -> Vec<PathBuf> {
    let from_stdlib: Vec<PathBuf> =
        stdlib_dir().map(|d| STDLIB_FILES.iter().map(|f| d.join(f)).filter(|p| p.is_file()).collect()).unwrap_or_default();
    if from_stdlib.len() >= 3 {
        return from_stdlib;
    }
    eprintln!("queries bench: no CPython stdlib found, indexing the crate's own sources instead");
    let mut out = Vec::new();
    rust_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// `count` windows of `len` tokens at random positions of shard 0, none holding a separator.
fn windows(index: &Index, len: usize, count: usize, rng: &mut StdRng) -> Vec<Vec<u32>> {
    let shard = &index.shards[0];
    let w = index.width.bytes() as u64;
    let sep = index.width.separator();
    let tokens = shard.tokens();
    assert!(tokens > len as u64 + 1, "index too small");
    let mut out = Vec::with_capacity(count);
    let mut tries = 0;
    while out.len() < count {
        tries += 1;
        assert!(tries < 1_000_000, "cannot find {count} separator-free windows of {len} tokens");
        let start = rng.gen_range(0..tokens - len as u64);
        let win: Vec<u32> = (start..start + len as u64).map(|i| shard.token_at(i * w).expect("in range")).collect();
        if !win.contains(&sep) {
            out.push(win);
        }
    }
    out
}

fn bench_queries(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("index");
    let files = inputs();
    let report = ibid::index::build(&files, &ByteTokenizer::new(), &BuildOptions::new(&out_dir), &ibid::index::Quiet)
        .expect("build the bench index");
    drop(report);
    let index = Index::open(&out_dir).expect("open the bench index");
    eprintln!("queries bench: {} files, {} documents, {} tokens (bytes)", files.len(), index.documents(), index.tokens());
    let mut rng = StdRng::seed_from_u64(SEED);

    let mut group = c.benchmark_group("count");
    group.throughput(Throughput::Elements(QUERIES as u64));
    for n in [1usize, 4, 10] {
        let qs = windows(&index, n, QUERIES, &mut rng);
        group.bench_with_input(BenchmarkId::from_parameter(n), &qs, |b, qs| {
            b.iter(|| {
                for q in qs {
                    black_box(index.count(black_box(q)).unwrap());
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ntd");
    group.throughput(Throughput::Elements(QUERIES as u64));
    for n in [1usize, 2, 4, 10] {
        let qs = windows(&index, n, QUERIES, &mut rng);
        group.bench_with_input(BenchmarkId::from_parameter(n), &qs, |b, qs| {
            b.iter(|| {
                for q in qs {
                    black_box(index.ntd(black_box(q), 1000).unwrap());
                }
            })
        });
    }
    group.finish();

    // Contexts of n + 5 tokens whose first token is replaced by a random byte, so the longest
    // suffix that occurs varies; the next token is the true one.
    let mut group = c.benchmark_group("infgram_prob");
    group.throughput(Throughput::Elements(QUERIES as u64));
    for n in [1usize, 4, 10] {
        let qs: Vec<(Vec<u32>, u32)> = windows(&index, n + 6, QUERIES, &mut rng)
            .into_iter()
            .map(|mut w| {
                let next = w.pop().expect("n + 6 tokens");
                w[0] = rng.gen_range(0..index.width.separator());
                (w, next)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &qs, |b, qs| {
            b.iter(|| {
                for (ctx, next) in qs {
                    black_box(index.infgram_prob(black_box(ctx), *next).unwrap());
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(50);
    targets = bench_queries
}
criterion_main!(benches);
