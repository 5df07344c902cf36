//! The n-gram query API shared by the CLI's batch mode and the HTTP server: requests shaped like
//! infini-gram's (`query_type`, `query` or `query_ids`, `max_support`, ...), answers as JSON.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::index::query::{DEFAULT_MAX_DISP_LEN, DEFAULT_MAX_SUPPORT};
use crate::index::{CnfOptions, DocResult, Index, Stop};
use crate::tokenize::{self, Tokenizer};

/// Largest `maxnum` and `maxnum × max_disp_len` one request may ask for.
pub const MAX_MAXNUM: usize = 1000;
pub const MAX_DISPLAY_TOKENS: u64 = 10_000_000;
const DEFAULT_MAXNUM: usize = 1;
/// Largest `max_clause_freq`: the occurrences of each clause are read and sorted, so this bounds a
/// CNF request's memory (8 bytes each) and work (~30 ms per clause of a million here) whatever the
/// index's size. infini-gram's API caps it lower (500,000).
pub const MAX_CLAUSE_FREQ: u64 = 1_000_000;
/// Most n-gram terms in one CNF, over all its clauses: each term is one suffix-array search and
/// each clause one pass over its occurrences.
pub const MAX_CNF_TERMS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryType {
    Count,
    Prob,
    Ntd,
    InfgramProb,
    InfgramNtd,
    Find,
    SearchDocs,
    GetDocByRank,
    GetDocByPtr,
    GetDocByIx,
}

/// Token ids: an n-gram, or a CNF (AND of ORs of n-grams).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum QueryIds {
    Ngram(Vec<u32>),
    Cnf(Vec<Vec<Vec<u32>>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub query_type: QueryType,
    /// Text, tokenized with the index's tokenizer. `AND`/`OR` between terms make a CNF.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub query_ids: Option<QueryIds>,
    #[serde(default)]
    pub max_support: Option<u64>,
    #[serde(default)]
    pub maxnum: Option<usize>,
    #[serde(default)]
    pub max_disp_len: Option<u64>,
    #[serde(default)]
    pub max_clause_freq: Option<u64>,
    #[serde(default)]
    pub max_diff_tokens: Option<u64>,
    /// Shard, rank, pointer and document number for the `get_doc_by_*` queries.
    #[serde(default)]
    pub s: Option<usize>,
    #[serde(default)]
    pub rank: Option<u64>,
    #[serde(default)]
    pub ptr: Option<u64>,
    #[serde(default)]
    pub doc_ix: Option<u64>,
    /// Seed for the random document samples (fresh randomness when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// infini-gram clients name the index they ask; one server serves one index, so it is ignored.
    #[serde(default)]
    pub index: Option<String>,
}

impl QueryRequest {
    pub fn new(query_type: QueryType) -> Self {
        QueryRequest {
            query_type,
            query: None,
            query_ids: None,
            max_support: None,
            maxnum: None,
            max_disp_len: None,
            max_clause_freq: None,
            max_diff_tokens: None,
            s: None,
            rank: None,
            ptr: None,
            doc_ix: None,
            seed: None,
            index: None,
        }
    }
}

/// An index with the tokenizer for text queries (absent: only `query_ids` work).
pub struct QueryEngine {
    pub index: Index,
    tokenizer: Option<Box<dyn Tokenizer>>,
}

fn query_err(msg: impl Into<String>) -> Error {
    Error::Query(msg.into())
}

impl QueryEngine {
    pub fn new(index: Index, tokenizer: Option<Box<dyn Tokenizer>>) -> Self {
        QueryEngine { index, tokenizer }
    }

    pub fn tokenizer(&self) -> Option<&dyn Tokenizer> {
        self.tokenizer.as_deref()
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let tok =
            self.tokenizer.as_deref().ok_or_else(|| query_err("this index has no known tokenizer: send query_ids instead of query"))?;
        let ids = tokenize::tokenize(tok, text);
        if ids.is_empty() {
            return Err(query_err(format!("the query {text:?} tokenizes to nothing")));
        }
        Ok(ids)
    }

    /// The request's token ids: from `query_ids`, or by tokenizing `query` (` AND `/` OR ` make a CNF).
    fn ids(&self, req: &QueryRequest) -> Result<QueryIds> {
        match (&req.query_ids, &req.query) {
            (Some(ids), None) => Ok(ids.clone()),
            (None, Some(text)) => {
                // Whitespace is text: indentation and leading-space tokens are real queries, and a
                // CNF's terms are exactly what lies between its ` AND ` and ` OR `.
                if text.is_empty() {
                    return Err(query_err("the query is empty"));
                }
                if text.contains(" AND ") || text.contains(" OR ") {
                    let cnf = text
                        .split(" AND ")
                        .map(|clause| clause.split(" OR ").map(|term| self.tokenize(term)).collect::<Result<Vec<_>>>())
                        .collect::<Result<Vec<_>>>()?;
                    Ok(QueryIds::Cnf(cnf))
                } else {
                    Ok(QueryIds::Ngram(self.tokenize(text)?))
                }
            }
            (Some(_), Some(_)) => Err(query_err("give either query or query_ids, not both")),
            (None, None) => Err(query_err("the request has neither query nor query_ids")),
        }
    }

    fn ngram(&self, req: &QueryRequest) -> Result<Vec<u32>> {
        match self.ids(req)? {
            QueryIds::Ngram(ids) => Ok(ids),
            QueryIds::Cnf(_) => Err(query_err(format!("{:?} takes an n-gram, not AND/OR clauses", req.query_type))),
        }
    }

    fn token_strings(&self, ids: &[u32]) -> Option<Vec<String>> {
        let tok = self.tokenizer.as_deref()?;
        Some(ids.iter().map(|&t| tok.detokenize(&[t])).collect())
    }

    fn doc_json(&self, doc: DocResult) -> Value {
        let text = self.tokenizer.as_deref().map(|t| t.detokenize(&doc.token_ids));
        let mut v = serde_json::to_value(doc).expect("serializes");
        if let Some(text) = text {
            v["text"] = Value::String(text);
        }
        v
    }

    fn display(&self, req: &QueryRequest) -> Result<(usize, u64)> {
        let maxnum = req.maxnum.unwrap_or(DEFAULT_MAXNUM);
        let max_disp_len = req.max_disp_len.unwrap_or(DEFAULT_MAX_DISP_LEN);
        if maxnum == 0 || maxnum > MAX_MAXNUM {
            return Err(query_err(format!("maxnum must be between 1 and {MAX_MAXNUM}")));
        }
        if max_disp_len.saturating_mul(maxnum as u64) > MAX_DISPLAY_TOKENS {
            return Err(query_err(format!("maxnum × max_disp_len must be at most {MAX_DISPLAY_TOKENS}")));
        }
        Ok((maxnum, max_disp_len))
    }

    /// Answer one request. The answer carries the query's token ids (and their text when the
    /// tokenizer is known) and the latency in milliseconds.
    pub fn answer(&self, req: &QueryRequest) -> Result<Value> {
        self.answer_until(req, &Stop::never())
    }

    /// `answer`, given up with [`Error::Stopped`] when `stop` says so (a server's deadline).
    pub fn answer_until(&self, req: &QueryRequest, stop: &Stop) -> Result<Value> {
        let start = Instant::now();
        let index = &self.index;
        let max_support = req.max_support.unwrap_or(DEFAULT_MAX_SUPPORT);
        let cnf_options = CnfOptions {
            max_clause_freq: req.max_clause_freq.unwrap_or(CnfOptions::default().max_clause_freq),
            max_diff_tokens: req.max_diff_tokens.unwrap_or(CnfOptions::default().max_diff_tokens),
        };
        let mut query_ids: Option<Value> = None;
        let mut tokens: Option<Vec<String>> = None;
        let mut remember = |ids: &[u32]| {
            query_ids = Some(json!(ids));
            tokens = self.token_strings(ids);
        };
        let mut out = match req.query_type {
            QueryType::Count => match self.ids(req)? {
                QueryIds::Ngram(ids) => {
                    remember(&ids);
                    json!({"count": index.count(&ids)?, "approx": false})
                }
                QueryIds::Cnf(cnf) => {
                    check_cnf(&cnf, &cnf_options)?;
                    query_ids = Some(json!(cnf));
                    serde_json::to_value(index.count_cnf_until(&cnf, &cnf_options, stop)?)?
                }
            },
            QueryType::Prob | QueryType::InfgramProb => {
                let ids = self.ngram(req)?;
                let Some((&next, context)) = ids.split_last() else {
                    return Err(query_err("prob needs at least one token: the last one is the continuation"));
                };
                remember(&ids);
                if req.query_type == QueryType::Prob {
                    serde_json::to_value(index.prob(context, next)?)?
                } else {
                    serde_json::to_value(index.infgram_prob(context, next)?)?
                }
            }
            QueryType::Ntd | QueryType::InfgramNtd => {
                let ids = self.ngram(req)?;
                remember(&ids);
                let mut v = if req.query_type == QueryType::Ntd {
                    serde_json::to_value(index.ntd_until(&ids, max_support, stop)?)?
                } else {
                    serde_json::to_value(index.infgram_ntd_until(&ids, max_support, stop)?)?
                };
                if let (Some(tok), Some(map)) = (self.tokenizer.as_deref(), v["result_by_token_id"].as_object_mut()) {
                    for (id, entry) in map.iter_mut() {
                        if let Ok(id) = id.parse::<u32>() {
                            entry["token"] = Value::String(tok.detokenize(&[id]));
                        }
                    }
                }
                v
            }
            QueryType::Find => {
                let ids = self.ngram(req)?;
                remember(&ids);
                serde_json::to_value(index.find(&ids)?)?
            }
            QueryType::SearchDocs => {
                let (maxnum, max_disp_len) = self.display(req)?;
                let result = match self.ids(req)? {
                    QueryIds::Ngram(ids) => {
                        remember(&ids);
                        index.search_docs_until(&ids, maxnum, max_disp_len, req.seed, stop)?
                    }
                    QueryIds::Cnf(cnf) => {
                        check_cnf(&cnf, &cnf_options)?;
                        query_ids = Some(json!(cnf));
                        index.search_docs_cnf_until(&cnf, (maxnum, max_disp_len), &cnf_options, req.seed, stop)?
                    }
                };
                let docs: Vec<Value> = result.documents.into_iter().map(|d| self.doc_json(d)).collect();
                json!({"cnt": result.cnt, "approx": result.approx, "idxs": result.idxs, "documents": docs})
            }
            QueryType::GetDocByRank | QueryType::GetDocByPtr => {
                let (_, max_disp_len) = self.display(req)?;
                let s = req.s.ok_or_else(|| query_err("give the shard `s`"))?;
                let doc = if req.query_type == QueryType::GetDocByRank {
                    index.doc_by_rank(s, req.rank.ok_or_else(|| query_err("give the `rank`"))?, max_disp_len)?
                } else {
                    index.doc_by_ptr(s, req.ptr.ok_or_else(|| query_err("give the `ptr`"))?, max_disp_len)?
                };
                self.doc_json(doc)
            }
            QueryType::GetDocByIx => {
                let (_, max_disp_len) = self.display(req)?;
                let doc_ix = req.doc_ix.ok_or_else(|| query_err("give the `doc_ix`"))?;
                self.doc_json(index.doc_by_ix(doc_ix, max_disp_len)?)
            }
        };
        if let Some(ids) = query_ids {
            out["token_ids"] = ids;
        }
        if let Some(tokens) = tokens {
            out["tokens"] = json!(tokens);
        }
        out["latency"] = json!(start.elapsed().as_secs_f64() * 1e3);
        Ok(out)
    }

    /// Answer a JSON request given as text: malformed JSON is an error like any other.
    pub fn answer_json(&self, request: &str) -> Result<Value> {
        self.answer_json_until(request, &Stop::never())
    }

    /// `answer_json`, given up with [`Error::Stopped`] when `stop` says so.
    pub fn answer_json_until(&self, request: &str, stop: &Stop) -> Result<Value> {
        let req: QueryRequest = serde_json::from_str(request).map_err(|e| query_err(format!("malformed request: {e}")))?;
        self.answer_until(&req, stop)
    }
}

/// A CNF request's cost bounds: its work grows with the terms and with `max_clause_freq`, not with
/// the index, so a request cannot ask for more than a bounded amount of it.
fn check_cnf(cnf: &[Vec<Vec<u32>>], options: &CnfOptions) -> Result<()> {
    let terms: usize = cnf.iter().map(Vec::len).sum();
    if terms > MAX_CNF_TERMS {
        return Err(query_err(format!("a CNF may hold at most {MAX_CNF_TERMS} terms in all (this one has {terms})")));
    }
    if options.max_clause_freq > MAX_CLAUSE_FREQ {
        return Err(query_err(format!("max_clause_freq may be at most {MAX_CLAUSE_FREQ}")));
    }
    Ok(())
}

/// Writing an answer as JSON failing is the server's fault, never the request's (requests are
/// parsed with their own error, [`query_err`]): an internal error, HTTP 500.
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("cannot write the answer as JSON: {e}"))
    }
}
