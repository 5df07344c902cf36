//! `--format table`: answers as text for people.

use std::fmt::Write;

use serde_json::Value;

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Render an answer: next-token distributions as a ranked table, documents as text, the rest as
/// `key: value` lines.
pub fn table(answer: &Value) -> String {
    let mut out = String::new();
    let Some(obj) = answer.as_object() else {
        return scalar(answer);
    };
    for (key, value) in obj {
        match key.as_str() {
            "result_by_token_id" | "documents" | "token_ids" | "text" => continue,
            _ => {}
        }
        match value {
            Value::Array(a) if a.len() > 20 => writeln!(out, "{key}: [{} items]", a.len()).unwrap(),
            v => writeln!(out, "{key}: {}", scalar(v)).unwrap(),
        }
    }
    if let Some(dist) = obj.get("result_by_token_id").and_then(Value::as_object) {
        let mut rows: Vec<(&String, &Value)> = dist.iter().collect();
        rows.sort_by(|a, b| {
            let c = |v: &Value| v["cont_cnt"].as_u64().unwrap_or(0);
            c(b.1).cmp(&c(a.1)).then(a.0.cmp(b.0))
        });
        writeln!(out, "{:>10} {:>12} {:>9}  token", "id", "count", "prob").unwrap();
        for (id, v) in rows {
            let token = v.get("token").map(|t| format!("{:?}", scalar(t))).unwrap_or_default();
            writeln!(out, "{id:>10} {:>12} {:>9.5}  {token}", scalar(&v["cont_cnt"]), v["prob"].as_f64().unwrap_or(0.0)).unwrap();
        }
    }
    let docs: Vec<&Value> = match obj.get("documents").and_then(Value::as_array) {
        Some(d) => d.iter().collect(),
        None if obj.contains_key("doc_ix") => vec![answer],
        None => vec![],
    };
    for doc in docs {
        writeln!(out, "--- document {} ({} tokens) {}", scalar(&doc["doc_ix"]), scalar(&doc["doc_len"]), scalar(&doc["metadata"])).unwrap();
        match doc.get("text") {
            Some(t) => writeln!(out, "{}", scalar(t)).unwrap(),
            None => writeln!(out, "{}", doc["token_ids"]).unwrap(),
        }
    }
    out
}
