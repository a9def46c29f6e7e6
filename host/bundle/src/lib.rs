//! The edgeml bundle format: one self-contained, signed WebAssembly component
//! carrying a model component, its manifest and its ONNX model.
//!
//! ```text
//! \0asm 0d 00 01 00                     component preamble
//! custom "signature"                    ed25519 signatures (WebAssembly tool-conventions / wasmsign2 format)
//! ... component sections ...           the guest (preprocessing + wasi:nn calls)
//! custom "edgeml.manifest"              JSON manifest (name, version, digests, IO schema, labels, preprocessing)
//! custom "edgeml.model"                 ONNX model bytes
//! custom "signature_delimiter"          16 random bytes
//! ```
//!
//! The signatures cover everything after the signature section. This crate has
//! no WebAssembly runtime in it: it packs, signs, verifies and inspects.
//!
//! ```
//! use edgeml_bundle::{SecretKey, TrustPolicy, verify, sign, Error};
//! # fn main() -> Result<(), Error> {
//! let key = SecretKey::generate()?;
//! let policy = TrustPolicy::any_of(vec![key.public_key()])?;
//! // An empty component is enough to show the failure modes.
//! let component = b"\0asm\x0d\x00\x01\x00".to_vec();
//! assert!(matches!(verify(component.clone(), &policy), Err(Error::Unsigned)));
//! let signed = sign(&component, &key)?;
//! // Signed, but not made by `edgeml pack`: the manifest is missing.
//! assert!(matches!(verify(signed, &policy), Err(Error::MissingSection(_))));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod artifact;
mod bundle;
pub mod card;
mod error;
mod keys;
pub mod manifest;
mod policy;
pub mod signature;
pub mod wasm;

pub use bundle::{
    inspect, pack, read_file, sign, verify, verify_with_limits, BundleInfo, Limits, PackOptions,
    SectionInfo, SignatureInfo, VerifiedBundle, MANIFEST_SECTION, MODEL_SECTION,
};
pub use card::ModelCard;
pub use error::{Error, Result};
pub use keys::{KeyId, PublicKey, SecretKey};
pub use manifest::{
    Baseline, CategoricalBaseline, Dim, Dtype, Manifest, NumericBaseline, SelfTest, SelfTestInput,
    SelfTestTensor, TensorSpec,
};
pub use policy::TrustPolicy;

#[cfg(test)]
mod proptests;
