//! `ibid serve` with the real Gemma 3 270M model and a real HTTP client: OpenAI-shaped answers,
//! streaming, greedy answers equal to `ibid generate`, every kind of bad input answered 4xx while
//! the server keeps serving, clients that leave or read slowly, a full queue, metrics, and a
//! graceful SIGTERM that saves the recycling matrix. One server at a time (the model's threads
//! must not compete), one thread each.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

struct Server {
    child: Child,
    url: String,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str], cache: &Path) -> Server {
    start_with(extra, cache, &[])
}

fn start_with(extra: &[&str], cache: &Path, env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(ibid_bin())
        .args(["--threads", "1", "serve", "--model", model_path().to_str().unwrap(), "--addr", "127.0.0.1:0", "--ctx", "512"])
        .args(extra)
        .envs(env.iter().copied())
        .env("XDG_CACHE_HOME", cache)
        .env("IBID_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut url = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains(" serving ") {
            url = line.trim().rsplit(' ').next().unwrap().to_string();
            break;
        }
    }
    assert!(url.starts_with("http://127.0.0.1:"), "no serving line");
    // keep draining stderr so the server never blocks on a full pipe
    std::thread::spawn(move || for _ in reader.lines() {});
    let addr = url.trim_start_matches("http://").to_string();
    Server { child, url, addr }
}

fn post(s: &Server, path: &str, body: &str) -> (u16, Value) {
    let resp = ureq::post(&format!("{}{path}", s.url)).set("Content-Type", "application/json").send_string(body);
    match resp {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

fn get_text(s: &Server, path: &str) -> String {
    ureq::get(&format!("{}{path}", s.url)).call().unwrap().into_string().unwrap()
}

/// The `data:` payloads of a server-sent-event stream, read to the end.
fn stream(s: &Server, path: &str, body: &Value) -> Vec<String> {
    let resp = ureq::post(&format!("{}{path}", s.url)).send_json(body.clone()).unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut text = String::new();
    resp.into_reader().read_to_string(&mut text).unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

fn greedy_cli(prompt: &str, max_tokens: usize, draft: &str, cache: &Path) -> String {
    let out = Command::new(ibid_bin())
        .args(["--threads", "1", "generate", "--model", model_path().to_str().unwrap(), "--prompt", prompt, "--ctx", "512"])
        .args(["--max-tokens", &max_tokens.to_string(), "--no-recycle-save", "--draft", draft])
        .env("XDG_CACHE_HOME", cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

/// Send raw HTTP and return the socket (for clients that leave or read slowly).
fn raw_stream_request(s: &Server, body: &Value) -> TcpStream {
    let mut sock = TcpStream::connect(&s.addr).unwrap();
    let body = body.to_string();
    write!(
        sock,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    sock
}

fn metric(s: &Server, name: &str) -> f64 {
    get_text(s, "/metrics").lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn serve_answers_like_openai_and_survives_bad_clients() {
    let _serial = one_model_at_a_time();
    let cache = tempfile::tempdir().unwrap();
    let prompt = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";

    // With drafting (the default): the first answer equals `ibid generate` from the same state
    // (an empty recycling cache on both sides), and plain decoding (below). A prompt whose answer
    // repeats it, so that drafting pays from the first steps even at a cold start (where drafts
    // whose worth is unknown are not verified).
    let copy = "red green blue yellow purple orange\nred green blue yellow purple orange\nred green blue yellow purple orange\nred green";
    let drafted = greedy_cli(copy, 24, "all", cache.path());
    // A first use: the CLI measured this machine's cost curve quickly before drafting, and kept
    // what each source's estimates were worth; a later start (the server's) adds a round of
    // timings to the curve.
    let curve = || cached_json(cache.path(), "cost-");
    let rounds = |c: &Value| c["samples"].as_array().unwrap().iter().map(|s| s[1].as_array().unwrap().len()).min().unwrap();
    assert_eq!((curve()["quick"].as_bool(), rounds(&curve())), (Some(true), 3), "{}", curve());
    // what the run's steps cost against the curve is kept with it
    assert!(curve()["observed"][1].as_f64().unwrap() >= 0.0, "{}", curve());
    let learnt = cached_json(cache.path(), "accept-");
    assert_eq!(learnt["version"], 1);
    assert!(learnt["sources"]["context"]["predicted"].as_f64().unwrap() > 0.0, "{learnt}");
    assert!(learnt["sources"]["ngram"].is_object(), "{learnt}");
    let s = start(&["--no-recycle-save"], cache.path());
    assert_eq!(rounds(&curve()), 4);
    let (code, v) = post(&s, "/v1/completions", &json!({"prompt": copy, "max_tokens": 24, "temperature": 0}).to_string());
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], drafted.as_str(), "server and CLI disagree");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 24);
    assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"].as_u64().unwrap() + 24);
    assert!(metric(&s, "ibid_draft_tokens_total") > 0.0);
    let drafting = s;

    // Plain decoding, where every answer is deterministic: streaming, stop strings, chat.
    assert_eq!(drafted, greedy_cli(copy, 24, "none", cache.path()), "accelerated and plain output differ");
    let expected = greedy_cli(prompt, 24, "none", cache.path());
    assert_eq!(greedy_cli(prompt, 24, "all", cache.path()), expected, "accelerated and plain output differ");
    let s = start(&["--draft", "none", "--no-recycle-save"], cache.path());
    let (code, v) = post(&s, "/v1/completions", &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0}).to_string());
    assert_eq!((code, v["choices"][0]["text"].as_str()), (200, Some(expected.as_str())));

    // A top_k past the vocabulary is the whole vocabulary: it aborted the process (4e9 slots
    // allocated) or killed the worker (2^62) while /health still said ok.
    for k in [4_000_000_000u64, 4_611_686_018_427_387_904] {
        let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0.8, "top_k": k, "seed": 3});
        let (code, v) = post(&s, "/v1/completions", &body.to_string());
        assert_eq!(code, 200, "top_k {k}: {v}");
        let whole = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0.8, "top_k": 0, "seed": 3});
        assert_eq!(v["choices"][0]["text"], post(&s, "/v1/completions", &whole.to_string()).1["choices"][0]["text"]);
    }
    assert!(get_text(&s, "/health").contains("\"ok\""));
    // an empty list is an empty prompt, as "" is
    let empty = |p: Value| post(&s, "/v1/completions", &json!({"prompt": p, "max_tokens": 4, "temperature": 0}).to_string());
    let (code, v) = empty(json!(""));
    assert_eq!(code, 200, "{v}");
    let (code, w) = empty(json!([]));
    assert_eq!((code, &w["choices"][0]["text"]), (200, &v["choices"][0]["text"]), "{w}");
    // the model server's routes answer a wrong method with a JSON 405 too
    match ureq::get(&format!("{}/v1/completions", s.url)).call() {
        Err(ureq::Error::Status(405, r)) => assert!(r.into_json::<Value>().unwrap()["error"]["message"].is_string()),
        other => panic!("{other:?}"),
    }

    // Requests for the concurrency check below, answered here one at a time: greedy and seeded
    // sampling (a seed fixes plain sampling's draws, and drafting draws the same).
    let together: Vec<Value> = [
        ("def add(a, b):\n    return", 0.0, 0),
        ("The three primary colors are", 0.8, 7),
        ("for i in range(10):\n    print(i)\nfor i in range(10):\n", 0.0, 0),
        ("Once upon a time, in a small village,", 1.0, 42),
    ]
    .iter()
    .map(|(p, t, seed)| json!({"prompt": p, "max_tokens": 32, "temperature": t, "seed": seed}))
    .collect();
    let alone: Vec<Value> = together
        .iter()
        .map(|body| {
            let (code, v) = post(&s, "/v1/completions", &body.to_string());
            assert_eq!(code, 200, "{v}");
            v["choices"][0]["text"].clone()
        })
        .collect();

    // streaming: the pieces add up to the same text, then a finish chunk, usage and [DONE]
    let events = stream(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(streamed, expected);
    assert!(chunks.len() > 3, "streamed in pieces");
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 24);

    // stop strings end the text before them
    let (code, v) =
        post(&s, "/v1/completions", &json!({"prompt": "1, 2, 3,", "max_tokens": 30, "temperature": 0, "stop": [" 6"]}).to_string());
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], " 4, 5,");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // chat, whole and streamed (the template: the GGUF's own, else the family's built-in one)
    let chat = json!({"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 12, "temperature": 0});
    let (code, v) = post(&s, "/v1/chat/completions", &chat.to_string());
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let whole = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!whole.is_empty());
    let mut streamed_chat = chat.clone();
    streamed_chat["stream"] = json!(true);
    let events = stream(&s, "/v1/chat/completions", &streamed_chat);
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, whole);

    // a slow client: nobody waits for it, and it still gets everything
    let mut slow = raw_stream_request(&s, &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": true}));
    std::thread::sleep(Duration::from_millis(300));
    let (code, _) = post(&s, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 4}).to_string());
    assert_eq!(code, 200);
    let mut all = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 4096];
    while !all.contains("[DONE]") {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {all}");
        all.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let text: String = all
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, expected);
    drop(s);
    let s = drafting;

    // Several requests at once share each verification batch (one slot each), and each answer is
    // what that request got alone from plain decoding.
    let (steps, sequences) = (metric(&s, "ibid_verify_steps_total"), metric(&s, "ibid_batch_sequences_total"));
    let handles: Vec<_> = together
        .iter()
        .map(|body| {
            let (url, body) = (s.url.clone(), body.to_string());
            std::thread::spawn(move || {
                let v: Value = ureq::post(&format!("{url}/v1/completions")).send_string(&body).unwrap().into_json().unwrap();
                v["choices"][0]["text"].clone()
            })
        })
        .collect();
    let answers: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(answers, alone, "concurrent drafted answers differ from plain ones");
    let (steps, sequences) = (metric(&s, "ibid_verify_steps_total") - steps, metric(&s, "ibid_batch_sequences_total") - sequences);
    assert!(sequences > 1.5 * steps, "requests were not batched together: {sequences} sequences in {steps} steps");
    // The same prompt again starts from the cached prompt of its earlier answer.
    let cached = metric(&s, "ibid_prompt_tokens_cached_total");
    let (code, v) = post(&s, "/v1/completions", &together[0].to_string());
    assert_eq!((code, &v["choices"][0]["text"]), (200, &alone[0]));
    assert!(metric(&s, "ibid_prompt_tokens_cached_total") > cached, "the repeated prompt was decoded again");

    // bad input: a 4xx with an OpenAI-style error, and the server stays up
    let long_prompt = "word ".repeat(600);
    let cases: Vec<(&str, String, u16)> = vec![
        ("/v1/completions", "{\"prompt\": ".into(), 400),
        ("/v1/completions", "[1, 2]".into(), 400),
        ("/v1/completions", json!({"prompt": "x", "bogus": 1}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "max_tokens": "ten"}).to_string(), 400),
        ("/v1/completions", json!({"prompt": 7}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "max_tokens": 0}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "max_tokens": 1_000_000_000}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "max_tokens": -5}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "temperature": -1}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "temperature": 1e30}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "top_p": 0}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "seed": -3}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "n": 3}).to_string(), 400),
        ("/v1/completions", json!({"prompt": "x", "stop": ["", "a"]}).to_string(), 400),
        ("/v1/completions", json!({"prompt": [999_999_999]}).to_string(), 400),
        ("/v1/completions", json!({"prompt": long_prompt, "max_tokens": 8}).to_string(), 400),
        ("/v1/chat/completions", json!({"messages": []}).to_string(), 400),
        ("/v1/chat/completions", json!({"messages": [{"role": "wizard", "content": "hi"}]}).to_string(), 400),
        ("/v1/chat/completions", json!({"messages": [{"role": "user"}]}).to_string(), 400),
        ("/v1/nothing", "{}".into(), 404),
    ];
    for (path, body, want) in &cases {
        let (code, v) = post(&s, path, body);
        assert_eq!(code, *want, "{path} {body}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // a body over the limit: 413 once the limit is passed (the rest is not read)
    let mut sock = TcpStream::connect(&s.addr).unwrap();
    let body = format!("{{\"prompt\": \"{}\"}}", "x".repeat(2 << 20));
    write!(sock, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())
        .unwrap();
    let mut writer = sock.try_clone().unwrap();
    let feeding = std::thread::spawn(move || {
        let _ = writer.write_all(body.as_bytes()); // the server may stop reading: a broken pipe is fine
    });
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = [0u8; 64];
    let n = sock.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&head[..n]));
    drop(sock);
    let _ = feeding.join();
    assert!(get_text(&s, "/health").contains("ok"));

    // a client that leaves mid-stream: the generation stops and others are served
    let cancelled_before = metric(&s, "ibid_cancelled_total");
    let mut gone = raw_stream_request(&s, &json!({"prompt": prompt, "max_tokens": 400, "temperature": 0, "stream": true}));
    let mut first = [0u8; 256];
    let n = gone.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200"), "{}", String::from_utf8_lossy(&first[..n]));
    drop(gone);
    let started = Instant::now();
    let (code, _) = post(&s, "/v1/completions", &json!({"prompt": "Hello", "max_tokens": 4}).to_string());
    assert_eq!(code, 200);
    assert!(started.elapsed() < Duration::from_secs(15), "the abandoned generation ran on: {:?}", started.elapsed());
    assert!(metric(&s, "ibid_cancelled_total") > cancelled_before);

    // metrics in Prometheus' text format
    let m = get_text(&s, "/metrics");
    for name in
        ["ibid_requests_total", "ibid_completion_tokens_total", "ibid_tokens_per_second", "ibid_tokens_per_step", "ibid_draft_tokens_total"]
    {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(metric(&s, "ibid_requests_total{route=\"/v1/completions\",status=\"400\"}") >= 16.0);
    drop(s);

    // a full queue answers 503 at once
    let s = start(&["--queue", "1", "--parallel", "1", "--no-recycle-save"], cache.path());
    let body = json!({"prompt": prompt, "max_tokens": 60, "temperature": 0});
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (s.url.clone(), body.to_string());
            std::thread::spawn(move || match ureq::post(&format!("{url}/v1/completions")).send_string(&body) {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(c, _)) => c,
                Err(e) => panic!("{e}"),
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(codes.contains(&200) && codes.contains(&503), "{codes:?}");
    drop(s);

    // SIGTERM: the request in flight finishes, the matrix is saved, exit 0
    let index_cache = tempfile::tempdir().unwrap();
    let mut s = start(&["--draft", "all"], index_cache.path());
    let url = s.url.clone();
    let inflight = std::thread::spawn(move || {
        ureq::post(&format!("{url}/v1/completions")).send_json(json!({"prompt": "Once upon a time", "max_tokens": 20})).map(|r| r.status())
    });
    std::thread::sleep(Duration::from_millis(400));
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(inflight.join().unwrap().unwrap(), 200, "the request in flight was cut");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let saved: Vec<_> = std::fs::read_dir(index_cache.path().join("ibid"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(saved.iter().any(|f| f.starts_with("recycle-")), "{saved:?}");
    // and what the sources' estimates were worth, for the next start
    let learnt = cached_json(index_cache.path(), "accept-");
    assert!(["context", "ngram", "recycle"].iter().all(|s| learnt["sources"][s].is_object()), "{learnt}");
}

/// The JSON file in `cache`'s ibid folder whose name starts with `prefix` (there must be one).
/// Issue: a panic in the generation worker left a server that looked healthy and answered every
/// later completion 503 "queue is full". A panic injected into one step fails that step's request
/// with a 500 that says so; the worker goes on: `/health` stays ok and the next request is answered,
/// equal to plain decoding.
#[test]
fn a_panic_in_a_step_fails_its_request_only() {
    let _serial = one_model_at_a_time();
    let cache = tempfile::tempdir().unwrap();
    let server = start_with(&["--draft", "none"], cache.path(), &[(ibid::server::FAULT_PANIC_AT_STEP, "3")]);
    let body = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}).to_string();
    let (code, v) = post(&server, "/v1/completions", &body);
    assert_eq!(code, 500, "{v}");
    assert!(v["error"].to_string().contains("injected"), "{v}");
    let health = ureq::get(&format!("{}/health", server.url)).call().unwrap();
    assert_eq!(health.status(), 200);
    let (code, v) = post(&server, "/v1/completions", &body);
    assert_eq!(code, 200, "{v}");
    let plain = greedy_cli("The capital of France is", 8, "none", cache.path());
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), plain);
}

fn cached_json(cache: &Path, prefix: &str) -> Value {
    let dir = cache.join("ibid");
    let found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix) && p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(found.len(), 1, "{prefix}* in {}: {found:?}", dir.display());
    serde_json::from_slice(&std::fs::read(&found[0]).unwrap()).unwrap()
}
