//! Capacity model: predicts wall time, controller CPU and memory, and bytes on the wire for N
//! hosts × T tasks at a given RTT and forks, from the runs `bench/run` measured.
//!
//! [`runs`] reads the results, [`fit`] turns them into one [`model::Model`] per (mode,
//! workload family) with [`nnls`], [`validate`] fits on the small fleets and predicts the
//! largest; [`slices`] splits a fleet larger than one controller drives into job slices
//! (docs/scaling.md). `docs/capacity.md` derives the model; `spindle capacity` is its command line and
//! `bench/capacity.py` calls that command.

pub mod model;
mod nnls;
pub mod runs;
pub mod slices;
pub mod table;
pub mod validate;

pub use model::{fit, Model, Prediction, Query};
pub use runs::{load_runs, Run};
pub use slices::{recommend, SliceAdvice, SliceQuery};
pub use validate::{validate, Validation};

use std::path::PathBuf;

/// What can go wrong reading results or fitting them.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// A results file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A results file is not the JSON `bench/run` writes.
    #[error("{path} is not bench/run results JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A successful run lacks a figure the model needs.
    #[error("{path}: run {run:?} has no {field}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The run's id.
        run: String,
        /// The missing field.
        field: &'static str,
    },
    /// A directory holds neither `results.json` nor `runs/*.json`.
    #[error("{0} has no results.json and no runs/*.json (is it a bench/run results directory?)")]
    NoResults(PathBuf),
    /// Nothing to fit or to check.
    #[error("{0}")]
    NotEnoughData(String),
}

/// Workload family: `hostname20` and `hostname100` are the same task, one family.
pub fn family(workload: &str) -> &str {
    match workload {
        "hostname20" | "hostname100" => "hostname",
        w => w,
    }
}

/// The modes in the order tables show them.
pub const MODES: [&str; 4] = ["stock", "stock-nopipe", "mitogen", "spindle"];

/// Sort key putting known modes first, in [`MODES`] order.
pub fn mode_rank(mode: &str) -> usize {
    MODES.iter().position(|m| *m == mode).unwrap_or(MODES.len())
}
