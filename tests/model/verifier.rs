//! The verifier with the real Gemma 3 270M model: a batch's logits equal single-token logits bit
//! for bit, tree verification follows the target, speculative output equals plain output token for
//! token (greedy and sampled), sampling keeps the target's distribution, the cache stays right.
//!
//! One model serves every test ([`crate::common::model`]) and one lock runs them one at a time (ggml's threads busy-wait, so
//! model tests must never overlap), on 2 threads (where the kernels split work between threads).

use crate::common::*;
use ibid::draft::RankedTree;
use ibid::engine::{generate, Drafter, GenerateOptions, Generation, NoDrafts};
use ibid::model::Model;
use ibid::verify::SlotStep;
use ibid::verify::{argmax, distribution, top2};
use ibid::verify::{walk, Chooser, DraftTree, SamplingParams, Session, SessionOptions, StepOutcome};

fn lock() -> std::sync::MutexGuard<'static, ()> {
    one_model_at_a_time()
}

fn session() -> Session<'static> {
    exact_session(SessionOptions { threads: 2, n_ctx: 1024, n_batch: 64, max_sequences: 32, ..SessionOptions::default() })
}

/// A session on the exact kernels (checked first).
fn exact_session(options: SessionOptions) -> Session<'static> {
    exact_kernels();
    Session::new(model(), options).unwrap()
}

/// The suite runs on the exact kernels; say so plainly when the build does not have them.
fn exact_kernels() {
    assert_eq!(ibid::llama::kernels(), ibid::llama::Kernels::Exact);
    assert!(
        !ibid::llama::repacked_build(),
        "llama.cpp was built with GGML_CPU_REPACK on; the exact kernels need the build setting in .cargo/config.toml"
    );
}

/// The local python3's standard library folder.
fn stdlib() -> std::path::PathBuf {
    let out =
        std::process::Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"]).output().unwrap();
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// 20 real prompts: the openings of CPython standard library modules.
fn prompts() -> Vec<Vec<u32>> {
    let stdlib = stdlib();
    let files = [
        "abc.py",
        "argparse.py",
        "base64.py",
        "bisect.py",
        "calendar.py",
        "colorsys.py",
        "csv.py",
        "dataclasses.py",
        "difflib.py",
        "fnmatch.py",
        "fractions.py",
        "glob.py",
        "heapq.py",
        "hmac.py",
        "ipaddress.py",
        "keyword.py",
        "operator.py",
        "queue.py",
        "shlex.py",
        "textwrap.py",
    ];
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(stdlib.join(f)).unwrap();
            let cut = text.char_indices().nth(400).map_or(text.len(), |(i, _)| i);
            model().tokenize_prompt(&text[..cut])
        })
        .collect()
}

/// `n` real prompts: the openings (about 100 tokens) of the first `n` CPython standard library
/// modules of at least 2 kB, by name.
fn many_prompts(n: usize) -> Vec<Vec<u32>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(stdlib())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "py") && p.metadata().unwrap().len() >= 2048)
        .collect();
    files.sort();
    assert!(files.len() >= n, "only {} stdlib modules", files.len());
    files[..n]
        .iter()
        .map(|f| {
            let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
            let cut = text.char_indices().nth(400).map_or(text.len(), |(i, _)| i);
            model().tokenize_prompt(&text[..cut])
        })
        .collect()
}

fn greedy(max_tokens: usize, budget: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), budget, stop_at_eog: false }
}

/// Drafts the known continuation (the plain run's output): every draft is right.
struct Oracle {
    prompt_len: usize,
    truth: Vec<u32>,
    chain: usize,
}

impl Oracle {
    fn draft(&mut self, context: &[u32], budget: usize) -> DraftTree {
        let done = context.len() - self.prompt_len;
        // the pending token is truth[done - 1]; draft what follows it
        let rest = self.truth.get(done..).unwrap_or(&[]);
        DraftTree::chain(&rest[..rest.len().min(budget).min(self.chain)])
    }
}

impl Drafter for Oracle {
    fn rank(&mut self, context: &[u32], max_nodes: usize) -> RankedTree {
        self.draft(context, max_nodes).into()
    }
}

/// Random trees over tokens the model might use.
struct Random {
    state: u64,
}

impl Random {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.state >> 33
    }
    fn tree(&mut self, context: &[u32], budget: usize) -> DraftTree {
        let mut t = DraftTree::new();
        while t.len() < budget {
            let parent = if t.is_empty() || self.next().is_multiple_of(3) { None } else { Some(self.next() as usize % t.len()) };
            // mostly tokens from the context (plausible), some arbitrary
            let tok =
                if self.next().is_multiple_of(4) { self.next() as u32 % 262_144 } else { context[self.next() as usize % context.len()] };
            t.push(parent, tok, 1);
            if t.leaves().len() > 16 {
                t.truncate(t.len() - 1);
                break;
            }
        }
        t
    }
}

impl Random {
    fn draft(&mut self, context: &[u32], budget: usize) -> DraftTree {
        self.tree(context, budget)
    }
}

impl Drafter for Random {
    fn rank(&mut self, context: &[u32], max_nodes: usize) -> RankedTree {
        self.draft(context, max_nodes).into()
    }
}

/// The oracle's chain with random branches hanging off it, and sometimes a wrong first token.
struct Mixed {
    oracle: Oracle,
    random: Random,
}

impl Mixed {
    fn draft(&mut self, context: &[u32], budget: usize) -> DraftTree {
        let mut t = self.oracle.draft(context, budget / 2);
        if self.random.next().is_multiple_of(3) && !t.is_empty() {
            t = DraftTree::chain(&[t.token(0) ^ 1]); // a wrong guess
        }
        let extra = self.random.tree(context, budget - t.len());
        for leaf in extra.leaves() {
            if t.len() >= budget {
                break;
            }
            let path = extra.path(leaf);
            let attach = if t.is_empty() { None } else { Some(self.random.next() as usize % t.len()) };
            let room = budget - t.len();
            t.push_path(attach, &path[..path.len().min(room)], 2);
        }
        t.truncate(budget.min(t.len()));
        t
    }
}

impl Drafter for Mixed {
    fn rank(&mut self, context: &[u32], max_nodes: usize) -> RankedTree {
        self.draft(context, max_nodes).into()
    }
}

#[test]
fn every_emitted_token_is_the_argmax_of_its_verifying_batch() {
    let _l = lock();
    let mut s = session();
    let prompts = prompts();
    let mut rng = Random { state: 9 };
    let mut perfect_accepted = Vec::new();
    for (p, prompt) in prompts.iter().take(6).enumerate() {
        s.prefill(prompt).unwrap();
        // a perfect chain: the plain continuation
        let mut plain = session();
        let truth = generate(&mut plain, prompt, &mut NoDrafts, &greedy(8, 0), |_| true).unwrap().tokens;
        s.prefill(prompt).unwrap();
        let trees = [
            DraftTree::chain(&truth), // perfect
            rng.tree(prompt, 24),     // random
            {
                // adversarial: many siblings of the right token, and a deep wrong chain
                let mut t = DraftTree::new();
                for d in 0..12u32 {
                    t.push(None, truth[0].wrapping_add(d + 1) % 262_144, 0);
                }
                t.push_path(None, &[truth[0], truth[1] ^ 7, truth[2], truth[3]], 0);
                t
            },
        ];
        for (kind, tree) in trees.into_iter().enumerate() {
            let mut argmaxes: Vec<(Option<usize>, u32, f32)> = Vec::new();
            let before = s.tokens();
            let out: StepOutcome = s
                .step(&tree, &mut Chooser::new(SamplingParams::greedy()), |node, logits| {
                    let (b, bv, sv) = top2(logits);
                    argmaxes.push((node, b, bv - sv));
                })
                .unwrap();
            let argmax_at = |node: Option<usize>| argmaxes.iter().find(|a| a.0 == node).unwrap().1;
            assert_eq!(out.emitted[0], argmax_at(None), "prompt {p}: root");
            for (i, &node) in out.accepted.iter().enumerate() {
                assert_eq!(tree.token(node), out.emitted[i], "accepted nodes carry the emitted tokens");
                assert_eq!(out.emitted[i + 1], argmax_at(Some(node)), "prompt {p}: after node {node}");
            }
            assert_eq!(out.emitted.len(), out.accepted.len() + 1);
            // the walk stopped because no child carries the bonus token
            let last = out.accepted.last().copied();
            assert!(tree.child(last, *out.emitted.last().unwrap()).is_none());
            let mut expect = before.clone();
            expect.extend(&out.emitted);
            assert_eq!(s.tokens(), expect);
            if kind == 0 {
                perfect_accepted.push(out.accepted.len());
            }
        }
    }
    // The plain run's own continuation is accepted whole.
    assert!(perfect_accepted.iter().all(|&a| a == 8), "{perfect_accepted:?}");
}

/// Row by row, a batch's logits equal the logits of the same tokens decoded one at a time, bit for
/// bit: chains of every length from 2 to 64 and trees of many shapes, after a short prompt and
/// after a long one (more than 512 cache cells, where flash attention could split the cache),
/// on 2 threads (where the kernels split work between threads).
#[test]
fn batched_logits_equal_token_by_token_logits_bit_for_bit() {
    let _l = lock();
    let mut s = exact_session(SessionOptions { threads: 2, n_ctx: 1024, n_batch: 128, max_sequences: 64, ..SessionOptions::default() });
    let text = std::fs::read_to_string(stdlib().join("argparse.py")).unwrap();
    let all = model().tokenize_prompt(&text);
    let same = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let mut rng = Random { state: 31 };
    for prompt_len in [40, 600] {
        let (prompt, rest) = all.split_at(prompt_len);
        let chain = &rest[..63];
        s.prefill(prompt).unwrap();
        let reference = s.logits_token_by_token(chain).unwrap();
        for n in 2..=64 {
            let batched = s.logits_of_chain(&chain[..n - 1]).unwrap();
            for (i, row) in batched.iter().enumerate() {
                assert!(same(row, &reference[i]), "prompt of {prompt_len}: chain of {n}, row {i} differs");
            }
        }
        for (shape, budget) in [3, 7, 15, 31, 47, 63].into_iter().enumerate() {
            let mut tree = rng.tree(&s.tokens(), budget);
            if shape % 2 == 0 {
                // a real continuation among the branches
                let at = tree.push(None, chain[0], 0);
                tree.push_path(Some(at), &chain[1..8.min(64 - tree.len())], 0);
            }
            let mut rows: Vec<Vec<f32>> = vec![Vec::new(); tree.len() + 1];
            s.step(&tree, &mut Chooser::new(SamplingParams::greedy()), |node, l| rows[node.map_or(0, |n| n + 1)] = l.to_vec()).unwrap();
            s.prefill(prompt).unwrap();
            // each leaf's path decoded token by token gives the reference for every node on it
            let mut checked = vec![false; tree.len() + 1];
            for leaf in tree.leaves() {
                let path = tree.path(leaf);
                let reference = s.logits_token_by_token(&path).unwrap();
                let mut nodes = vec![leaf];
                while let Some(parent) = tree.parent(*nodes.last().unwrap()) {
                    nodes.push(parent);
                }
                nodes.reverse();
                assert!(same(&rows[0], &reference[0]), "prompt of {prompt_len}: tree of {} nodes, root differs", tree.len());
                for (depth, &node) in nodes.iter().enumerate() {
                    assert!(
                        same(&rows[node + 1], &reference[depth + 1]),
                        "prompt of {prompt_len}: tree of {} nodes, node {node} differs",
                        tree.len()
                    );
                    checked[node + 1] = true;
                }
            }
            assert!(checked[1..].iter().all(|&c| c), "every node lies on a leaf's path");
        }
    }
}

/// Accelerated output equals plain output token for token on 50 prompts × 128 tokens, greedy on
/// every other prompt and sampled with a fixed seed on the rest: drafts of the plain run's own
/// continuation with random branches and wrong guesses (long accepted paths, many rejected
/// cells), in a cache small enough that the rejected cells fill it and it is compacted.
#[test]
fn speculative_output_equals_plain_output_token_for_token() {
    let _l = lock();
    let mut s = exact_session(SessionOptions { threads: 2, n_ctx: 400, n_batch: 64, max_sequences: 32, ..SessionOptions::default() });
    let n = 128;
    let sampled = |seed: u64| GenerateOptions {
        max_tokens: n,
        sampling: SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed },
        budget: 12,
        stop_at_eog: false,
    };
    let (mut runs, mut accepted, mut steps_saved) = (0, 0, 0);
    for (p, prompt) in many_prompts(50).iter().enumerate() {
        let sampling = p % 2 == 1;
        let options = if sampling { sampled(p as u64) } else { greedy(n, 12) };
        let plain = generate(&mut s, prompt, &mut NoDrafts, &GenerateOptions { budget: 0, ..options }, |_| true).unwrap();
        assert_eq!(plain.tokens.len(), n);
        let mut drafter = Mixed {
            oracle: Oracle { prompt_len: prompt.len(), truth: plain.tokens.clone(), chain: 10 },
            random: Random { state: 1000 + p as u64 },
        };
        let spec = generate(&mut s, prompt, &mut drafter, &options, |_| true).unwrap();
        let kind = if sampling { "sampled" } else { "greedy" };
        assert_eq!(spec.tokens, plain.tokens, "prompt {p}, {kind}: accelerated output differs from plain");
        runs += 1;
        accepted += spec.accepted;
        steps_saved += plain.steps - spec.steps;
    }
    eprintln!(
        "{runs} runs identical to plain, {accepted} draft tokens accepted, {steps_saved} steps saved, {} cache compactions",
        s.compactions()
    );
    assert!(steps_saved > 50 * 32, "drafts should save many steps: {steps_saved}");
    assert!(s.compactions() > 25, "the rejected cells should have filled the cache: {}", s.compactions());
}

/// A generation in a slot of a shared session, as the server runs requests.
struct SlotJob {
    job: usize,
    slot: usize,
    generation: Generation,
    drafter: Mixed,
}

/// Run `jobs` (prompt, options, the plain output for the oracle's drafts) through the session's
/// slots, refilling a slot as soon as its generation ends, the way the server does. Returns each
/// job's output, the steps that verified more than one slot, and the prompt tokens found cached.
fn run_in_slots(s: &mut Session<'_>, jobs: &[(Vec<u32>, GenerateOptions, Vec<u32>)]) -> (Vec<Vec<u32>>, usize, usize) {
    let slots = s.options().slots as usize;
    let n_ctx = s.options().n_ctx as usize;
    let (mut next, mut shared_steps, mut cached) = (0, 0, 0);
    let mut running: Vec<SlotJob> = Vec::new();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); jobs.len()];
    while next < jobs.len() || !running.is_empty() {
        while running.len() < slots && next < jobs.len() {
            let (prompt, options, plain) = &jobs[next];
            let slot = s.free_slot().unwrap();
            cached += s.prefill_slot(slot, prompt).unwrap();
            running.push(SlotJob {
                job: next,
                slot,
                generation: Generation::new(prompt.len(), options, 0.0).unwrap(),
                drafter: Mixed {
                    oracle: Oracle { prompt_len: prompt.len(), truth: plain.clone(), chain: 8 },
                    random: Random { state: 500 + next as u64 },
                },
            });
            next += 1;
        }
        let trees: Vec<DraftTree> = running
            .iter_mut()
            .map(|j| {
                let budget = j.generation.budget(s.slot_len(j.slot), n_ctx).unwrap();
                let mut t = if budget > 0 { j.drafter.draft(&s.slot_tokens(j.slot), budget) } else { DraftTree::new() };
                t.truncate(budget.min(t.len()));
                t
            })
            .collect();
        let mut work: Vec<SlotStep<'_>> =
            running.iter_mut().zip(&trees).map(|(j, tree)| SlotStep { slot: j.slot, tree, chooser: &mut j.generation.chooser }).collect();
        let outcomes = s.step_slots(&mut work, |_, _, _| {}).unwrap();
        drop(work);
        shared_steps += usize::from(running.len() > 1);
        for ((j, tree), outcome) in running.iter_mut().zip(&trees).zip(&outcomes) {
            j.generation.absorb(model(), tree.len(), outcome, |_| true);
        }
        for j in running.iter().filter(|j| j.generation.is_done()) {
            s.release(j.slot).unwrap();
        }
        let (done, still): (Vec<SlotJob>, Vec<SlotJob>) = running.into_iter().partition(|j| j.generation.is_done());
        running = still;
        for j in done {
            outputs[j.job] = j.generation.finish().tokens;
        }
    }
    (outputs, shared_steps, cached)
}

/// Several sequences verified in one batch (one slot each, as the server runs requests) give each
/// the output it has alone: 12 jobs × 64 tokens through 3 slots, greedy and sampled, slots
/// refilled as generations end, drafts with right and wrong branches, in a cache that the rejected
/// cells fill often enough to be compacted with other slots live; then prompts that repeat or
/// extend the cached ones start from the released slots' tokens, with the same outputs.
#[test]
fn slots_verified_in_one_batch_each_equal_plain_output() {
    let _l = lock();
    let n = 64;
    let options_of = |p: usize| {
        if p.is_multiple_of(2) {
            greedy(n, 12)
        } else {
            GenerateOptions {
                max_tokens: n,
                sampling: SamplingParams { temperature: 0.9, top_k: 0, top_p: 0.9, seed: 77 + p as u64 },
                budget: 12,
                stop_at_eog: false,
            }
        }
    };
    let distinct = many_prompts(12);
    let mut alone = session();
    let mut plain = |prompt: &[u32], options: &GenerateOptions| {
        generate(&mut alone, prompt, &mut NoDrafts, &GenerateOptions { budget: 0, ..*options }, |_| true).unwrap().tokens
    };
    let first: Vec<(Vec<u32>, GenerateOptions, Vec<u32>)> =
        distinct.iter().enumerate().map(|(p, prompt)| (prompt.clone(), options_of(p), plain(prompt, &options_of(p)))).collect();
    let mut s = exact_session(SessionOptions { threads: 2, n_ctx: 700, n_batch: 64, max_sequences: 16, slots: 3, cached_prompts: 6 });
    let (outputs, shared_steps, _) = run_in_slots(&mut s, &first);
    for (p, out) in outputs.iter().enumerate() {
        assert_eq!(out, &first[p].2, "prompt {p}: output with other slots in the batch differs from plain");
    }
    eprintln!("{shared_steps} shared steps, {} compactions", s.compactions());
    assert!(shared_steps > 40, "slots should have shared batches: {shared_steps}");
    assert!(s.compactions() >= 3, "the cache should have been compacted with slots live: {}", s.compactions());

    // The last prompts are in the prompt cache: ask for three of them again (other options),
    // one of them extended by more tokens.
    let mut again: Vec<(Vec<u32>, GenerateOptions)> = (9..12).map(|p| (distinct[p].clone(), options_of(p + 1))).collect();
    again[1].0.extend_from_slice(&distinct[0][1..30]);
    let second: Vec<(Vec<u32>, GenerateOptions, Vec<u32>)> = again
        .into_iter()
        .map(|(prompt, options)| {
            let out = plain(&prompt, &options);
            (prompt, options, out)
        })
        .collect();
    let (outputs, _, cached) = run_in_slots(&mut s, &second);
    for (p, out) in outputs.iter().enumerate() {
        assert_eq!(out, &second[p].2, "repeated prompt {p}: output from cached tokens differs from plain");
    }
    let prompt_tokens: usize = second.iter().map(|j| j.0.len() - 1).sum();
    eprintln!("{cached} of {prompt_tokens} prompt tokens from the cache");
    assert!(cached + 29 >= prompt_tokens, "the repeated prompts should start from cached tokens: {cached} of {prompt_tokens}");

    // A new prompt sent three times at once (once extended): the second and third take the
    // first's cells while it runs, and each output is still plain's.
    let novel: Vec<u32> = distinct[2][..40].iter().chain(&distinct[5][1..40]).copied().collect();
    let mut extended = novel.clone();
    extended.extend_from_slice(&distinct[7][1..20]);
    let third: Vec<(Vec<u32>, GenerateOptions, Vec<u32>)> = [(novel.clone(), 0), (novel.clone(), 1), (extended, 2)]
        .into_iter()
        .map(|(prompt, p)| {
            let out = plain(&prompt, &options_of(p));
            (prompt, options_of(p), out)
        })
        .collect();
    let (outputs, _, cached) = run_in_slots(&mut s, &third);
    for (p, out) in outputs.iter().enumerate() {
        assert_eq!(out, &third[p].2, "concurrent prompt {p}: output from a running slot's cells differs from plain");
    }
    eprintln!("{cached} prompt tokens from running slots");
    assert!(cached >= 2 * (novel.len() - 1), "the later copies should share the first's cells: {cached}");
}

/// Chi-square statistic of observed counts against expected probabilities (bins with small
/// expectations pooled).
fn chi_square(observed: &std::collections::HashMap<u32, u64>, expected: &[(u32, f64)], n: u64) -> (f64, usize) {
    let mut stat = 0.0;
    let mut bins: usize = 0;
    let mut pooled_o = 0.0;
    let mut pooled_e = 0.0;
    for &(t, p) in expected {
        let e = p * n as f64;
        let o = *observed.get(&t).unwrap_or(&0) as f64;
        if e >= 5.0 {
            stat += (o - e).powi(2) / e;
            bins += 1;
        } else {
            pooled_o += o;
            pooled_e += e;
        }
    }
    let outside: u64 = observed.iter().filter(|(t, _)| !expected.iter().any(|e| e.0 == **t)).map(|(_, c)| c).sum();
    pooled_o += outside as f64;
    if pooled_e >= 5.0 {
        stat += (pooled_o - pooled_e).powi(2) / pooled_e;
        bins += 1;
    } else {
        assert!(pooled_o <= 5.0 + 5.0 * pooled_e.max(1.0), "tokens outside the distribution: {pooled_o}");
    }
    (stat, bins.saturating_sub(1))
}

/// Upper 0.1 % point of chi-square with `df` degrees of freedom (Wilson–Hilferty).
fn chi_square_critical(df: usize) -> f64 {
    let k = df.max(1) as f64;
    let z = 3.090_232; // one-sided 0.1 %
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

#[test]
fn speculative_sampling_keeps_the_target_distribution() {
    let _l = lock();
    let mut s = session();
    let params = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 0 };
    let prompt = &prompts()[4];
    s.prefill(prompt).unwrap();
    // a tree whose root children are the three likeliest tokens, each with its likeliest child
    let root_logits = s.logits_of_chain(&[]).unwrap().remove(0);
    let top: Vec<u32> = distribution(&root_logits, &params).iter().take(3).map(|d| d.0).collect();
    let mut tree = DraftTree::new();
    for &t in &top {
        tree.push(None, t, 0);
    }
    let mut logits: Vec<Vec<f32>> = Vec::new();
    let mut root = Vec::new();
    s.step(&tree, &mut Chooser::new(SamplingParams::greedy()), |node, l| match node {
        None => root = l.to_vec(),
        Some(_) => logits.push(l.to_vec()),
    })
    .unwrap();
    // The walk is a pure function of the batch's logits: repeat it with fresh random numbers. To
    // make 60,000 walks cheap, project every logit vector onto the 256 likeliest root tokens and
    // their children's (top-k 40 and top-p keep far fewer, so the distributions are unchanged).
    let mut keep: Vec<u32> = ibid::verify::top_k(&root, 256).into_iter().map(|t| t.0).collect();
    for l in &logits {
        for (t, _) in ibid::verify::top_k(l, 256) {
            if !keep.contains(&t) {
                keep.push(t);
            }
        }
    }
    let project = |l: &[f32]| keep.iter().map(|&t| l[t as usize]).collect::<Vec<f32>>();
    let small = |t: u32| keep.iter().position(|&k| k == t).unwrap() as u32;
    let root = project(&root);
    let logits: Vec<Vec<f32>> = logits.iter().map(|l| project(l)).collect();
    let top: Vec<u32> = top.iter().map(|&t| small(t)).collect();
    let mut tree = DraftTree::new();
    for &t in &top {
        tree.push(None, t, 0);
    }
    let draws: u64 = 60_000;
    let mut chooser = Chooser::new(SamplingParams { seed: 12345, ..params });
    let mut first = std::collections::HashMap::<u32, u64>::new();
    let mut second = std::collections::HashMap::<u32, u64>::new();
    let mut via_top = 0;
    for _ in 0..draws {
        let out = walk(&tree, &mut chooser, |node| match node {
            None => &root,
            Some(n) => &logits[n],
        });
        *first.entry(out.emitted[0]).or_default() += 1;
        if out.emitted[0] == top[0] {
            via_top += 1;
            *second.entry(out.emitted[1]).or_default() += 1;
        }
    }
    let p_root = distribution(&root, &params);
    let (stat, df) = chi_square(&first, &p_root, draws);
    assert!(stat < chi_square_critical(df), "first token: chi2 {stat:.1} with {df} df");
    let p_child = distribution(&logits[0], &params);
    let (stat2, df2) = chi_square(&second, &p_child, via_top);
    assert!(stat2 < chi_square_critical(df2), "second token: chi2 {stat2:.1} with {df2} df");
    // Power: a 2 % shift of the top token's probability is many standard errors at this size.
    let p0 = p_root[0].1;
    let se = (p0 * (1.0 - p0) / draws as f64).sqrt();
    assert!(0.02 / se > 6.0, "too few draws to see a 2 % shift: {:.1} standard errors", 0.02 / se);
    eprintln!("sampling: first-token chi2 {stat:.1} (df {df}), second-token chi2 {stat2:.1} (df {df2}), 2 % shift = {:.1} s.e.", 0.02 / se);
}

#[test]
fn cache_after_many_steps_equals_a_fresh_run() {
    let _l = lock();
    let mut s = session();
    let prompt = &prompts()[7];
    s.prefill(prompt).unwrap();
    let mut rng = Random { state: 5 };
    let mut chooser = Chooser::new(SamplingParams::greedy());
    let mut accepted = 0;
    for i in 0..40 {
        let ctx = s.tokens();
        let mut tree = rng.tree(&ctx, 10);
        if i % 3 == 0 {
            // make some steps accept: put the model's own next tokens into the tree
            let next = argmax(&s.logits_of_chain(&[]).unwrap()[0]);
            tree = DraftTree::new();
            let n = tree.push(None, next, 0);
            let next2 = argmax(&s.logits_of_chain(&[next]).unwrap()[1]);
            tree.push(Some(n), next2, 0);
            tree.push(None, next ^ 3, 0);
        }
        let out = s.step(&tree, &mut chooser, |_, _| {}).unwrap();
        accepted += out.accepted.len();
    }
    assert!(accepted >= 10, "{accepted}");
    let tokens = s.tokens();
    let incremental = s.logits_of_chain(&[]).unwrap().remove(0);
    let mut fresh = session();
    fresh.prefill(&tokens).unwrap();
    let clean = fresh.logits_of_chain(&[]).unwrap().remove(0);
    // Prompt chunks, single tokens and draft trees all give every row the same logits, so the
    // cache built step by step (with rejected cells compacted away or not) equals a fresh prefill.
    let differing = incremental.iter().zip(&clean).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    eprintln!("cache: {differing} of {} logits differ after {} tokens and {accepted} accepted drafts", clean.len(), tokens.len());
    assert_eq!(differing, 0);
}

#[test]
fn bad_input_is_an_error() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let not_gguf = dir.path().join("x.gguf");
    std::fs::write(&not_gguf, "hello").unwrap();
    assert!(Model::load(dir.path().join("missing.gguf")).unwrap_err().to_string().contains("no such file"));
    assert!(Model::load(&not_gguf).unwrap_err().to_string().contains("GGUF"));

    let mut s = Session::new(model(), SessionOptions { threads: 1, n_ctx: 64, n_batch: 16, max_sequences: 4, ..SessionOptions::default() })
        .unwrap();
    assert!(s.prefill(&[]).unwrap_err().to_string().contains("empty"));
    let long: Vec<u32> = (0..100).map(|i| 100 + i).collect();
    assert!(s.prefill(&long).unwrap_err().to_string().contains("more than the context"));
    assert!(s.prefill(&[2, 999_999]).unwrap_err().to_string().contains("vocabulary"));
    s.prefill(&[2, 100, 200]).unwrap();
    let mut greedy = Chooser::new(SamplingParams::greedy());
    let wide: DraftTree = {
        let mut t = DraftTree::new();
        for i in 0..6 {
            t.push(None, 300 + i, 0);
        }
        t
    };
    assert!(s.step(&wide, &mut greedy, |_, _| {}).unwrap_err().to_string().contains("sequences"));
    let big = DraftTree::chain(&(0..20).map(|i| 300 + i).collect::<Vec<_>>());
    assert!(s.step(&big, &mut greedy, |_, _| {}).unwrap_err().to_string().contains("batch"));
    let bad = SamplingParams { temperature: -1.0, ..SamplingParams::greedy() };
    let opts = GenerateOptions { sampling: bad, ..GenerateOptions::default() };
    assert!(generate(&mut s, &[2, 100], &mut NoDrafts, &opts, |_| true).is_err());
    // the session still works after refusing
    let out = s.step(&DraftTree::new(), &mut greedy, |_, _| {}).unwrap();
    assert_eq!(out.emitted.len(), 1);

    // the CLI says so too, without panicking
    let o = std::process::Command::new(ibid_bin())
        .args(["generate", "--model", not_gguf.to_str().unwrap(), "--prompt", "hi"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("GGUF"));
    let o = std::process::Command::new(ibid_bin())
        .args(["generate", "--model", model_path().to_str().unwrap(), "--prompt", "hi", "--top-p", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("top_p"));
}

#[test]
fn an_index_must_share_the_models_vocabulary() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "def f(x):\n    return x + 1\n").unwrap();
    let gguf = dir.path().join("gguf");
    ibid::index::build(std::slice::from_ref(&corpus), model().tokenizer(), &ibid::index::BuildOptions::new(&gguf), &ibid::index::Quiet)
        .unwrap();
    model().check_index(&ibid::index::Index::open(&gguf).unwrap()).unwrap();
    let bytes = dir.path().join("bytes");
    ibid::index::build(&[corpus], &ibid::tokenize::ByteTokenizer::new(), &ibid::index::BuildOptions::new(&bytes), &ibid::index::Quiet)
        .unwrap();
    let err = model().check_index(&ibid::index::Index::open(&bytes).unwrap()).unwrap_err().to_string();
    assert!(err.contains("bytes") && err.contains("gemma"), "{err}");
}

#[test]
fn context_drafts_speed_up_a_copy_and_change_nothing() {
    let _l = lock();
    let mut s = session();
    let src = std::fs::read_to_string(stdlib().join("colorsys.py")).unwrap();
    let passage = &src[..800];
    let prompt = model().tokenize_prompt(&format!("{passage}\n\n# The same code again, unchanged:\n\n{}", &passage[..120]));
    let plain = generate(&mut s, &prompt, &mut NoDrafts, &greedy(48, 0), |_| true).unwrap();
    let mut drafter = ibid::draft::MergingDrafter::new(vec![Box::new(ibid::draft::ContextSource::default())]);
    let spec = generate(&mut s, &prompt, &mut drafter, &greedy(48, 6), |_| true).unwrap();
    assert_eq!(plain.tokens, spec.tokens);
    eprintln!("copy prompt: {:.2} tokens per step, {} of {} drafts accepted", spec.tokens_per_step(), spec.accepted, spec.drafted);
    assert!(spec.tokens_per_step() > 2.0, "{}", spec.tokens_per_step());
}

/// Context, n-gram, index and recycling drafts together, with the auto budget, on real prompts and an
/// index over real code: output equal to plain greedy, every verified node
/// refreshes a row of the recycling matrix, and the matrix saved after the run loads again.
#[test]
fn all_drafters_with_an_index_change_nothing() {
    let _l = lock();
    let stdlib = stdlib();
    let files: Vec<std::path::PathBuf> =
        ["abc.py", "bisect.py", "colorsys.py", "heapq.py", "keyword.py", "shlex.py", "textwrap.py", "glob.py"]
            .iter()
            .map(|f| stdlib.join(f))
            .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    ibid::index::build(&files, model().tokenizer(), &ibid::index::BuildOptions::new(&out), &ibid::index::Quiet).unwrap();
    let index = ibid::index::Index::open(&out).unwrap();
    model().check_index(&index).unwrap();
    let vocab = model().n_vocab();
    let warm = ibid::draft::RecycleMatrix::from_index(&index, vocab, 8);
    assert!(warm.filled_rows() > 500, "{}", warm.filled_rows());

    let mut s = session();
    let n = 48;
    let (mut identical, mut accepted) = (0, 0);
    let matrix_file = dir.path().join("recycle.bin");
    for prompt in prompts().iter().take(6) {
        let plain = generate(&mut s, prompt, &mut NoDrafts, &greedy(n, 0), |_| true).unwrap();
        let mut recycle = ibid::draft::RecycleSource::new(warm.clone());
        recycle.save_to = Some((matrix_file.clone(), "test".into()));
        let mut drafter = ibid::draft::MergingDrafter::new(vec![
            Box::new(ibid::draft::ContextSource::default()),
            Box::new(ibid::draft::NgramSource::default()),
            Box::new(ibid::draft::IndexSource::new(&index)),
            Box::new(recycle),
        ]);
        let mut engine = ibid::engine::Engine::new(&mut s, &mut drafter, Some(ibid::draft::Budget::new(None, 16)));
        let spec = ibid::engine::generate_with(&mut engine, prompt, &greedy(n, 16), |_| true).unwrap();
        drop(engine);
        assert_eq!(plain.tokens, spec.tokens);
        identical += 1;
        accepted += spec.accepted;
        let report = drafter.source_report();
        assert_eq!(report[3]["details"]["row_updates"], (spec.steps + spec.drafted) as u64, "one row per verified node");
        drafter.finish().unwrap();
        let saved = ibid::draft::RecycleMatrix::load(&matrix_file, vocab, 8, "test").unwrap();
        assert_ne!(saved, warm, "the run refreshed rows");
    }
    eprintln!("all drafters: {identical} of 6 identical to plain, {accepted} draft tokens accepted");
    assert!(accepted > 0);
}
