//! The suffix-array index: format, construction, opening, checking and queries.

pub mod build;
pub mod check;
pub mod format;
pub mod open;
pub mod query;
pub mod sa;
pub mod tokenizer;
pub mod tokens;
pub mod write;

pub use build::{build, BuildObserver, BuildOptions, BuildReport};
pub use check::VerifyReport;
pub use format::{Manifest, ShardFile};
pub use open::{Index, OpenOptions, Shard};
pub use query::{
    CnfOptions, CountResult, DocResult, FindCnfResult, FindResult, InfgramNtdResult, InfgramProbResult, NtdResult, ProbResult,
    SearchDocsResult, Stop, TokenCount,
};
pub use tokens::TokenBuf;
