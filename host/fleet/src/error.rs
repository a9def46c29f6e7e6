use std::time::SystemTime;

/// Why fleet metadata or a downloaded bundle was refused. Each attack the
/// checks stop has its own variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The document is not valid metadata.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// `root` or `release`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A root's content is inconsistent (unknown key ids, bad thresholds).
    #[error("invalid root: {0}")]
    InvalidRoot(String),
    /// Not enough valid signatures from the role's keys.
    #[error(
        "{role} metadata has {have} valid signature(s) from {role} keys; the root requires {need}"
    )]
    ThresholdNotMet {
        /// The role.
        role: &'static str,
        /// Valid signatures found.
        have: usize,
        /// The role's threshold.
        need: usize,
    },
    /// Signed only by keys the role does not list.
    #[error("{role} metadata is signed by key {keyid}, which is not a {role} key in root version {root_version}")]
    WrongKey {
        /// The role.
        role: &'static str,
        /// One of the signing key ids.
        keyid: String,
        /// The trusted root version.
        root_version: u64,
    },
    /// Signed by a key the root has revoked.
    #[error("{role} metadata carries a signature by revoked key {keyid}; refusing it")]
    RevokedKey {
        /// The role.
        role: &'static str,
        /// The revoked key id.
        keyid: String,
    },
    /// A new root lacks the threshold of the previous root's root keys.
    #[error("root version {version} is not signed by {need} of root version {previous}'s root keys (found {have}); a rotation must be signed by the old keys too")]
    RootRotationUnsigned {
        /// The new root's version.
        version: u64,
        /// The trusted root's version.
        previous: u64,
        /// Valid signatures from the old root keys.
        have: usize,
        /// The old root's threshold.
        need: usize,
    },
    /// A root arrived out of order.
    #[error("expected root version {expected}, got {found}")]
    RootVersion {
        /// The next version.
        expected: u64,
        /// What arrived.
        found: u64,
    },
    /// A new root un-revokes a key.
    #[error("root version {version} un-revokes key {keyid}; revocation is permanent")]
    Unrevoked {
        /// The new root's version.
        version: u64,
        /// The key.
        keyid: String,
    },
    /// Metadata past its expiry (an indefinite-freeze attack, or a publisher
    /// who has not re-signed in time).
    #[error("{role} metadata expired at {}; ask the publisher to re-sign it (`edgeml push` or `edgeml rollout set`)", humantime::format_rfc3339_seconds(*expired))]
    Expired {
        /// The role.
        role: &'static str,
        /// When it expired.
        expired: SystemTime,
    },
    /// Older release metadata than the device has already seen.
    #[error("release metadata version {offered} for channel `{channel}` is older than version {seen}, which this device has already seen")]
    MetadataRollback {
        /// The channel.
        channel: String,
        /// Highest version seen.
        seen: u64,
        /// What was offered.
        offered: u64,
    },
    /// The same release metadata version with different content.
    #[error("release metadata version {version} for channel `{channel}` differs from the one this device already has under that version")]
    Equivocation {
        /// The channel.
        channel: String,
        /// The version.
        version: u64,
    },
    /// Release metadata for another channel.
    #[error("release metadata is for channel `{found}`, the device follows `{expected}`")]
    WrongChannel {
        /// The followed channel.
        expected: String,
        /// The metadata's channel.
        found: String,
    },
    /// A lower model version than the installed one, without a signed downgrade.
    #[error("release offers {model} {offered}, lower than the installed {installed}, and does not allow a downgrade")]
    Rollback {
        /// The model.
        model: String,
        /// The installed version.
        installed: semver::Version,
        /// The offered version.
        offered: semver::Version,
    },
    /// The bundle is not the one the release pins (mix-and-match).
    #[error("bundle digest {found} does not match the {expected} the release metadata pins")]
    DigestMismatch {
        /// Pinned digest.
        expected: String,
        /// Digest of what arrived.
        found: String,
    },
    /// The bundle is shorter than the release says.
    #[error("bundle is truncated: {got} of {expected} bytes")]
    Truncated {
        /// Pinned length.
        expected: u64,
        /// Length received.
        got: u64,
    },
    /// The bundle is longer than the release says.
    #[error("bundle is longer than the {expected} bytes the release metadata pins")]
    TooLong {
        /// Pinned length.
        expected: u64,
    },
    /// The bundle's signed manifest names another model or version.
    #[error("the bundle is {found}, the release metadata says {expected}")]
    ManifestMismatch {
        /// `name version` from the release.
        expected: String,
        /// `name version` from the bundle's manifest.
        found: String,
    },
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
