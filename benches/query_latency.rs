//! Per-query latency of ibid's library calls, for comparison with infini-gram's engine
//! (`scripts/infinigram.py query --time --repeat N`, same JSONL in, same JSON out).
//!
//! ```text
//! cargo bench --bench query_latency -- --index DIR [--token-width W] [--eos ID]
//!     [--queries FILE] [--repeat N] [--max-support N] [--no-dist]
//! ```
//!
//! Queries are JSON lines (from `--queries FILE`, or stdin when absent or `-`), shaped like
//! infinigram.py's ops:
//!
//! ```text
//! {"op":"count","ids":[...]}
//! {"op":"prob","ids":[...],"next":T}
//! {"op":"ntd","ids":[...],"max_support":1000}
//! {"op":"infgram_prob","ids":[...],"next":T}
//! {"op":"infgram_ntd","ids":[...],"max_support":1000}
//! ```
//!
//! Each query runs `--repeat` times (default 5), each call timed with `Instant` around the library
//! call only (parsing and printing are outside). One JSON line per query on stdout: the answer in
//! infinigram.py's shape (`count`; `prompt_cnt`, `cont_cnt`, `prob`; `result_by_token_id`, `approx`;
//! `suffix_len`), plus `us` (first call), `us_min` and `us_median` (the mean of the two middle
//! values for an even count, like Python's `statistics.median`), and the query's `id` if it had one.
//! `--no-dist` leaves `result_by_token_id` out (its size is kept as `distinct`). A query that fails
//! prints `{"error": ...}` and the run goes on. A summary goes to stderr at the end.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::Instant;

use ibid::index::DEFAULT_MAX_SUPPORT;
use ibid::index::{Index, OpenOptions};
use ibid::tokenize::TokenWidth;
use serde_json::{json, Map, Value};

struct Args {
    index: String,
    token_width: Option<TokenWidth>,
    eos: Option<u32>,
    queries: Option<String>,
    repeat: usize,
    max_support: u64,
    dist: bool,
}

const USAGE: &str =
    "usage: query_latency --index DIR [--token-width 1|2|4] [--eos ID] [--queries FILE|-] [--repeat N] [--max-support N] [--no-dist]";

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { index: String::new(), token_width: None, eos: None, queries: None, repeat: 5, max_support: DEFAULT_MAX_SUPPORT, dist: true };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        // `--name=value` as well as `--name value`.
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{what} needs a value\n{USAGE}"))
        };
        match name.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "--index" => args.index = value("--index")?,
            "--token-width" => {
                let v = value("--token-width")?;
                let n: u8 = v.parse().map_err(|_| format!("bad --token-width {v}"))?;
                args.token_width = Some(TokenWidth::try_from(n)?);
            }
            "--eos" => {
                let v = value("--eos")?;
                args.eos = Some(v.parse().map_err(|_| format!("bad --eos {v}"))?);
            }
            "--queries" => args.queries = Some(value("--queries")?),
            "--repeat" => {
                let v = value("--repeat")?;
                args.repeat = v.parse().map_err(|_| format!("bad --repeat {v}"))?;
                if args.repeat == 0 {
                    return Err("--repeat must be at least 1".into());
                }
            }
            "--max-support" => {
                let v = value("--max-support")?;
                args.max_support = v.parse().map_err(|_| format!("bad --max-support {v}"))?;
            }
            "--no-dist" => args.dist = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.index.is_empty() {
        return Err(format!("--index is required\n{USAGE}"));
    }
    Ok(args)
}

/// Times `f` `repeat` times; returns the last answer and the per-call microseconds.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> ibid::Result<T>) -> ibid::Result<(T, Vec<f64>)> {
    let mut times = Vec::with_capacity(repeat);
    let mut last = None;
    for _ in 0..repeat {
        let t0 = Instant::now();
        let r = black_box(f());
        let dt = t0.elapsed();
        times.push(dt.as_nanos() as f64 / 1000.0);
        last = Some(r?);
    }
    Ok((last.expect("repeat >= 1"), times))
}

fn median(times: &[f64]) -> f64 {
    let mut v = times.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ids_of(q: &Value, key: &str) -> Result<Vec<u32>, String> {
    let arr = q.get(key).and_then(Value::as_array).ok_or_else(|| format!("{key} must be a list of token ids"))?;
    arr.iter().map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| format!("{key} must hold token ids"))).collect()
}

fn token_of(q: &Value, key: &str) -> Result<u32, String> {
    q.get(key).and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok()).ok_or_else(|| format!("{key} must be a token id"))
}

fn support_of(q: &Value, default: u64) -> Result<u64, String> {
    match q.get("max_support") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|&x| x > 0).ok_or_else(|| "max_support must be a positive integer".into()),
    }
}

fn dist_json(ntd: &ibid::index::NtdResult, full: bool, out: &mut Map<String, Value>) {
    out.insert("prompt_cnt".into(), json!(ntd.prompt_cnt));
    if full {
        let dist: Map<String, Value> =
            ntd.result_by_token_id.iter().map(|(t, c)| (t.to_string(), json!({"cont_cnt": c.cont_cnt, "prob": c.prob}))).collect();
        out.insert("result_by_token_id".into(), Value::Object(dist));
    } else {
        out.insert("distinct".into(), json!(ntd.result_by_token_id.len()));
    }
    out.insert("approx".into(), json!(ntd.approx));
}

/// Runs one query; the answer fields and the call times.
fn run(index: &Index, q: &Value, args: &Args) -> Result<(Map<String, Value>, Vec<f64>), String> {
    let op = q.get("op").and_then(Value::as_str).ok_or("op is missing")?;
    let e = |err: ibid::Error| err.to_string();
    let mut out = Map::new();
    let times = match op {
        "count" => {
            let ids = ids_of(q, "ids")?;
            let (c, t) = timed(args.repeat, || index.count(&ids)).map_err(e)?;
            out.insert("count".into(), json!(c));
            out.insert("approx".into(), json!(false));
            t
        }
        "prob" => {
            let (ids, next) = (ids_of(q, "ids")?, token_of(q, "next")?);
            let (r, t) = timed(args.repeat, || index.prob(&ids, next)).map_err(e)?;
            out.insert("prompt_cnt".into(), json!(r.prompt_cnt));
            out.insert("cont_cnt".into(), json!(r.cont_cnt));
            out.insert("prob".into(), json!(r.prob));
            t
        }
        "ntd" => {
            let (ids, ms) = (ids_of(q, "ids")?, support_of(q, args.max_support)?);
            let (r, t) = timed(args.repeat, || index.ntd(&ids, ms)).map_err(e)?;
            dist_json(&r, args.dist, &mut out);
            t
        }
        "infgram_prob" => {
            let (ids, next) = (ids_of(q, "ids")?, token_of(q, "next")?);
            let (r, t) = timed(args.repeat, || index.infgram_prob(&ids, next)).map_err(e)?;
            out.insert("prompt_cnt".into(), json!(r.prob.prompt_cnt));
            out.insert("cont_cnt".into(), json!(r.prob.cont_cnt));
            out.insert("prob".into(), json!(r.prob.prob));
            out.insert("suffix_len".into(), json!(r.suffix_len));
            t
        }
        "infgram_ntd" => {
            let (ids, ms) = (ids_of(q, "ids")?, support_of(q, args.max_support)?);
            let (r, t) = timed(args.repeat, || index.infgram_ntd(&ids, ms)).map_err(e)?;
            dist_json(&r.ntd, args.dist, &mut out);
            out.insert("suffix_len".into(), json!(r.suffix_len));
            t
        }
        other => return Err(format!("unknown op {other:?}")),
    };
    Ok((out, times))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("query_latency: {msg}");
            return ExitCode::from(2);
        }
    };
    let options = OpenOptions { token_width: args.token_width, eos_token_id: args.eos };
    let t_open = Instant::now();
    let index = match Index::open_with(&args.index, &options) {
        Ok(i) => i,
        Err(err) => {
            eprintln!("query_latency: cannot open {}: {err}", args.index);
            return ExitCode::from(1);
        }
    };
    let open_us = t_open.elapsed().as_secs_f64() * 1e6;

    let input: Box<dyn BufRead> = match args.queries.as_deref() {
        None | Some("-") => Box::new(BufReader::new(std::io::stdin())),
        Some(path) => match std::fs::File::open(path) {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(err) => {
                eprintln!("query_latency: cannot read {path}: {err}");
                return ExitCode::from(1);
            }
        },
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut n, mut errors, mut total_us) = (0u64, 0u64, 0f64);
    for line in input.lines() {
        let line = match line {
            Ok(l) => l,
            Err(err) => {
                eprintln!("query_latency: read error: {err}");
                return ExitCode::from(1);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let q: Result<Value, String> = serde_json::from_str(&line).map_err(|e| format!("bad JSON: {e}"));
        let mut obj = match q.as_ref().map_err(Clone::clone).and_then(|q| run(&index, q, &args)) {
            Ok((mut obj, times)) => {
                let med = median(&times);
                total_us += med;
                obj.insert("us".into(), json!(times[0]));
                obj.insert("us_min".into(), json!(times.iter().copied().fold(f64::INFINITY, f64::min)));
                obj.insert("us_median".into(), json!(med));
                obj
            }
            Err(msg) => {
                errors += 1;
                let mut m = Map::new();
                m.insert("error".into(), json!(msg));
                m
            }
        };
        if let Ok(Value::Object(q)) = &q {
            if let Some(id) = q.get("id") {
                obj.insert("id".into(), id.clone());
            }
        }
        n += 1;
        if writeln!(out, "{}", Value::Object(obj)).is_err() {
            return ExitCode::from(1);
        }
    }
    let _ = out.flush();
    eprintln!(
        "query_latency: {} ({}-byte tokens, {} tokens, eos {}): opened in {:.0} us; {n} queries, {errors} errors, repeat {}, sum of medians {:.0} us",
        args.index,
        index.width.bytes(),
        index.tokens(),
        index.eos_token_id,
        open_us,
        args.repeat,
        total_us
    );
    ExitCode::SUCCESS
}
