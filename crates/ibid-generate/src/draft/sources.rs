//! Which draft sources run, chosen by name (`--draft`), and opening them: the one place the
//! command line and the server assemble their sources.

use std::time::Instant;

use super::{ContextSource, DraftSource, IndexSource, NgramSource, RecycleSource};
use crate::index::Index;
use crate::model::Model;

/// The chosen draft sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSet {
    pub context: bool,
    pub ngram: bool,
    pub index: bool,
    pub recycle: bool,
}

/// Sources ready to merge, and what opening them noticed.
pub struct OpenedSources<'i> {
    pub sources: Vec<Box<dyn DraftSource + 'i>>,
    /// Problems that were worked around (a recycling matrix that could not be used, ...).
    pub warnings: Vec<String>,
    /// Seconds spent opening the recycling matrix, when it was chosen.
    pub recycle_open_s: Option<f64>,
}

impl SourceSet {
    pub fn all() -> Self {
        SourceSet { context: true, ngram: true, index: true, recycle: true }
    }

    pub fn none() -> Self {
        SourceSet { context: false, ngram: false, index: false, recycle: false }
    }

    /// What runs when `--draft` is not given: the running context's copies and n-grams. In one
    /// interleaved run after another (docs/drafting.md, "Choosing the default drafters"), adding
    /// the index and the recycling matrix to these two was slower on code (their first tokens,
    /// accepted less often than the context's, displace the context's in small trees) and no
    /// faster on chat or copy; they stay one `--draft all` away.
    pub fn default_set() -> Self {
        SourceSet { context: true, ngram: true, index: false, recycle: false }
    }

    /// From `--draft` names: `default`, `all`, `none` or single sources (no names: `default`); an
    /// unknown name is an error.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(SourceSet::default_set());
        }
        let mut sources = SourceSet::none();
        for name in names {
            match name.as_ref() {
                "all" => sources = SourceSet::all(),
                "default" => {
                    let d = SourceSet::default_set();
                    (sources.context, sources.ngram) = (sources.context || d.context, sources.ngram || d.ngram);
                }
                "context" => sources.context = true,
                "ngram" => sources.ngram = true,
                "index" => sources.index = true,
                "recycle" => sources.recycle = true,
                "none" => {}
                other => return Err(format!("unknown draft source {other:?}: use context, ngram, index, recycle, default, all or none")),
            }
        }
        Ok(sources)
    }

    /// Open the chosen sources in the order every caller merges them: context, ngram, index
    /// (where there is one), recycle. The recycling matrix is the one kept for `model` (next to
    /// `index`, or in the cache folder), saved back at the end when `save_recycle`; one that
    /// cannot be used is replaced by a new one, with a warning.
    pub fn open<'i>(&self, model: &Model, index: Option<&'i Index>, save_recycle: bool) -> OpenedSources<'i> {
        let mut sources: Vec<Box<dyn DraftSource + 'i>> = Vec::new();
        let mut warnings = Vec::new();
        if self.context {
            sources.push(Box::new(ContextSource::default()));
        }
        if self.ngram {
            sources.push(Box::new(NgramSource::default()));
        }
        if let (true, Some(ix)) = (self.index, index) {
            sources.push(Box::new(IndexSource::new(ix)));
        }
        let mut recycle_open_s = None;
        if self.recycle {
            let started = Instant::now();
            let (recycle, problem) = RecycleSource::for_model(model, index, save_recycle);
            if let Some(e) = problem {
                warnings.push(format!("{e}; starting a new recycling matrix"));
            }
            recycle_open_s = Some(started.elapsed().as_secs_f64());
            sources.push(Box::new(recycle));
        }
        OpenedSources { sources, warnings, recycle_open_s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_names_choose_sources() {
        let parse = |names: &[&str]| SourceSet::from_names(names).unwrap();
        assert_eq!(parse(&[]), SourceSet::default_set());
        assert_eq!(parse(&["default"]), SourceSet { context: true, ngram: true, index: false, recycle: false });
        assert_eq!(parse(&["default", "index"]), SourceSet { context: true, ngram: true, index: true, recycle: false });
        assert_eq!(parse(&["all"]), SourceSet::all());
        assert_eq!(parse(&["none"]), SourceSet::none());
        assert_eq!(parse(&["recycle"]), SourceSet { context: false, ngram: false, index: false, recycle: true });
        assert!(SourceSet::from_names(&["indx"]).unwrap_err().contains("unknown draft source"));
    }
}
