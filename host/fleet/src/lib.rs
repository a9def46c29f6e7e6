//! Fleet metadata, modelled on TUF: what a device checks before it installs
//! a model bundle pushed to its channel.
//!
//! - A [`Root`] names the keys of three roles (root, release, publisher),
//!   each with a k-of-n threshold, and the keys it has revoked. Devices ship
//!   with root version 1 and follow the chain: version n+1 must be signed by
//!   the threshold of version n's root keys *and* its own ([`TrustedRoot::update`]).
//! - A [`Release`] (one per channel) pins a bundle by SHA-256 and length,
//!   names the model and version, the rollout share and an expiry, and is
//!   signed by the release keys ([`TrustedRoot::verify_release`]).
//! - The bundle itself carries the publisher signatures (`edgeml sign`),
//!   checked with [`Root::publisher_policy`].
//!
//! ```
//! use edgeml_fleet::{Envelope, Error, Release, BundleRef, Root, TrustedRoot};
//! use edgeml_bundle::SecretKey;
//! use std::time::{Duration, SystemTime};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (root_key, release_key, publisher) =
//!     (SecretKey::generate()?, SecretKey::generate()?, SecretKey::generate()?);
//! let year = SystemTime::now() + Duration::from_secs(365 * 86400);
//! let root = Root::new(1, year, (&[root_key.public_key()], 1),
//!     (&[release_key.public_key()], 1), (&[publisher.public_key()], 1));
//! let trusted = TrustedRoot::bootstrap(&Envelope::sign(&root, &[&root_key])?.to_vec())?;
//!
//! let release = Release {
//!     kind: "release".into(), channel: "stable".into(), version: 1,
//!     expires: "2000-01-01T00:00:00Z".into(), model: "digits".into(),
//!     model_version: "1.0.0".parse()?, bundle: BundleRef { sha256: "00".repeat(32), size: 1 },
//!     rollout_percent: 100.0, allow_downgrade: false, artifacts: Vec::new(),
//!     target: None, schedule: None, abort: None,
//! };
//! let signed = Envelope::sign(&release, &[&release_key])?.to_vec();
//! let err = trusted.verify_release(&signed, "stable", SystemTime::now(), None).unwrap_err();
//! assert!(matches!(err, Error::Expired { role: "release", .. }));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod error;
pub mod metadata;
pub mod target;

pub use error::{Error, Result};
pub use metadata::{
    rollout_bucket, AbortCriteria, ArtifactRef, BundleRef, Envelope, Payload, Release, Role, Roles,
    Root, RootUpdate, Schedule, Signature, Timestamp, TrustedRoot, MAX_RELEASE_VERSION,
    MAX_ROOT_UPDATES,
};
pub use target::{check_tags, parse_tags, Selector, Tags};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
