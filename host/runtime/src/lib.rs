//! The embeddable edgeml host: verify a signed model bundle, load it, predict.
//!
//! ```no_run
//! use edgeml_runtime::{Config, Input, Runtime, TrustPolicy, PublicKey};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = TrustPolicy::any_of(vec![PublicKey::from_file("keys/publisher.pub")?])?;
//! let mut config = Config::new();
//! config.cache_dir("/var/cache/edgeml");
//! let runtime = Runtime::new(&config)?;
//! let bundle = runtime.verify(std::fs::read("digits.wasm")?, &policy)?; // nothing compiled yet
//! let model = runtime.load(&bundle)?;
//! let png = std::fs::read("models/digits/holdout/000.png")?;
//! let prediction = model.predict(Input::Media { media_type: "image/png".into(), bytes: png })?;
//! println!("{:?}", prediction.scores);
//! # Ok(()) }
//! ```
//!
//! - [`Runtime::load`] only takes a [`VerifiedBundle`], which only
//!   [`Runtime::verify`] (or [`edgeml_bundle::verify`]) makes: nothing is
//!   compiled or instantiated before the signatures, digests and trust policy
//!   check out.
//! - Guests get no filesystem, network, environment or arguments. They reach
//!   the model through `wasi:nn`, which serves only the bundle's signed model.
//! - Memory, tables, instances and wall-clock time are limited ([`Config`]);
//!   every trap becomes an [`Error`] and the next call works.

#![deny(missing_docs)]

mod backend;
mod bindings;
mod cache;
mod config;
mod error;
mod nn;
mod runtime;
mod sandbox;
mod state;
mod tensor;

pub use cache::CacheOutcome;
pub use config::{Backend, Config};
pub use edgeml_bundle::artifact::{ArtifactClaims, ArtifactError};
pub use edgeml_bundle::{self as bundle, Dtype, Manifest, PublicKey, TrustPolicy, VerifiedBundle};
pub use edgeml_telemetry::{self as telemetry, Telemetry, TelemetryConfig};
pub use edgeml_tract::io_schema as onnx_io_schema;
pub use error::Error;
pub use runtime::{LoadInfo, Model, Runtime, HOST_VERSION};
pub use tensor::{Input, ModelMetadata, Prediction, ScoredLabel, Tensor};

/// The README's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
