//! Every test that runs the Gemma 3 270M model, in one binary: llama.cpp is linked once, one
//! loaded model serves the tests that decode in process (`common::model`), and one lock
//! (`common::one_model_at_a_time`) keeps any two of them from decoding at once, in process or in a
//! server they started: ggml's threads busy-wait, and two decoders on 2 cores slowed a token from
//! 13.5 to 727 ms.

#[path = "../common/mod.rs"]
mod common;
#[path = "../fuzz/requests.rs"]
mod fuzz_requests;

mod fuzz_server;
mod gguf_tokenizer;
mod serve_model;
mod verifier;
