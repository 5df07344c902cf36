//! One file per command: each parses nothing (clap did) and runs one job.

pub mod build;
pub mod calibrate;
pub mod generate;
pub mod index;
pub mod query;
pub mod serve;
