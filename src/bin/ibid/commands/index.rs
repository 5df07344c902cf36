//! `ibid info` and `ibid verify`: what an index holds, and whether it can be trusted.

use anyhow::{Context, Result};
use serde_json::json;

use crate::args::{print_json, IndexArgs};

pub fn run_info(args: IndexArgs) -> Result<()> {
    let index = args.open()?;
    let shards: Vec<_> = index
        .shards
        .iter()
        .map(|s| {
            json!({
                "id": s.id, "documents": s.documents(), "tokens": s.tokens(), "pointer_width": s.pointer_width,
                "bytes": s.tokenized.len() + s.table.len() + s.offsets.len()
                    + s.metadata.as_ref().map_or(0, |m| m.len()) + s.metaoff.as_ref().map_or(0, |m| m.len()),
            })
        })
        .collect();
    let bytes: u64 = shards.iter().map(|s| s["bytes"].as_u64().unwrap_or(0)).sum();
    print_json(&json!({
        "index": index.dir,
        "layout": if index.manifest.is_some() { "ibid (infini-gram v4 + ibid.json)" } else { "infini-gram v4 (no manifest)" },
        "token_width": index.width,
        "documents": index.documents(),
        "tokens": index.tokens(),
        "bytes": bytes,
        "bytes_per_token": bytes as f64 / index.tokens().max(1) as f64,
        "shards": shards,
        "manifest": index.manifest,
    }))
}

pub fn run_verify(args: IndexArgs, deep: bool) -> Result<()> {
    let index = args.open()?;
    let report = index.verify(deep).with_context(|| format!("index {} failed verification", args.index.display()))?;
    print_json(&json!({"ok": true, "report": report}))
}
