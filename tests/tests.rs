//! End-to-end tests: real models, real guest components built from source,
//! real signatures, a real compilation cache on disk. One binary, one module
//! per concern; the attack tests are named after the attack.

mod common;

mod fleet;

mod bad_input;
mod cache;
mod cli;
mod hostile_guests;
mod models;
mod readme;
mod signature_attacks;
mod telemetry;
