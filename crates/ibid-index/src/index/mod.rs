//! The suffix-array index: format, construction, opening, checking and queries. The modules are
//! the crate's own; what callers use is re-exported here.

pub(crate) mod build;
pub(crate) mod check;
pub(crate) mod format;
pub(crate) mod merge;
pub(crate) mod open;
pub(crate) mod query;
pub(crate) mod sa;
pub(crate) mod tokenizer;
pub(crate) mod tokens;
pub(crate) mod write;

pub use build::{build, default_output, table_for_tokenized, BuildObserver, BuildOptions, BuildReport, Quiet};
pub use check::VerifyReport;
pub use format::{Manifest, Part, ShardFile, Split};
pub use merge::{merge, MergeReport};
pub use open::{Index, OpenOptions, Shard};
pub use query::{
    CnfOptions, CountResult, DocResult, FindCnfResult, FindResult, InfgramNtdResult, InfgramProbResult, NtdResult, ProbResult,
    SearchDocsResult, Stop, TokenCount, DEFAULT_MAX_SUPPORT,
};
pub use tokens::TokenBuf;
pub use write::{digest_of, remove_staging_on_signal};
