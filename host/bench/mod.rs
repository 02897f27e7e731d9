//! `kiln bench`'s engine: prefill throughput of the GPU pipeline on synthetic models.
//!
//! For each model and prompt length N: one warm-up prefill (GPU only), `repeats` timed
//! prefills (the median is reported; the clock stops after `Device::synchronize`), then one
//! profiled run for the per-stage breakdown. Every figure goes to the JSON report; the prompt
//! ids go to the prompts file and the last-position logits to the logits directory, so
//! `scripts/bench_torch.py` can run the same prompts on the same weights and check that it
//! computes the same function.
//!
//! - [`catalogue`]: the models the bench knows and the prompts it feeds them;
//! - [`cost`]: FLOPs and weight bytes of one prefill, counted from the config;
//! - [`runner`]: building and uploading each model, the timed runs, skips and deadlines;
//! - [`report`]: the table on stdout and the JSON files (schema: docs/bench.md).
//!
//! `host/cli/bench.rs` turns the command line into a [`runner::Settings`].

pub mod catalogue;
pub mod cost;
pub mod report;
pub mod runner;

pub use runner::{Settings, run};
