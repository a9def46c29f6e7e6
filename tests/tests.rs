//! End-to-end tests: real models, real guest components built from source,
//! real signatures, a real compilation cache on disk. One binary, one module
//! per concern; the attack tests are named after the attack.

mod common;
mod db;

mod audit;
mod console;
mod fleet;
mod freshness;
mod ground_truth;
mod local_api;
mod pacing;
mod rollout_evidence;

mod cross_arch;

mod bad_input;
mod cache;
mod cli;
mod exported;
mod hostile_guests;
mod models;
mod otlp;
mod precompiled;
mod prometheus;
mod readme;
mod registry;
mod replicas;
mod signature_attacks;
mod store;
mod telemetry;
mod wasmsign2_interop;
