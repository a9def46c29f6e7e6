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
    /// A release's tag selector does not parse.
    #[error("tag selector `{selector}` is invalid: {reason}")]
    InvalidSelector {
        /// The selector (first 200 characters).
        selector: String,
        /// Why.
        reason: String,
    },
    /// Device tags that are not valid tags.
    #[error("invalid device tags: {0}")]
    InvalidTags(String),
    /// A release's step schedule or abort criteria are inconsistent.
    #[error("invalid rollout schedule: {0}")]
    InvalidSchedule(String),
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
    /// The server offered more root versions than a device follows in one update.
    #[error("followed {limit} root rotations in one update (up to root version {reached}) and stopped; the rest is followed on the next poll")]
    RootChainTooLong {
        /// Roots followed per update ([`crate::metadata::MAX_ROOT_UPDATES`]).
        limit: u64,
        /// The root version reached.
        reached: u64,
    },
    /// A release metadata version beyond what a fleet can publish after it
    /// (a fast-forward attempt).
    #[error("release metadata version {version} is above the largest allowed, {max}")]
    VersionOutOfRange {
        /// The version offered.
        version: u64,
        /// [`crate::metadata::MAX_RELEASE_VERSION`].
        max: u64,
    },
    /// The release pins a bundle digest that is not 64 lowercase hex digits
    /// (it would otherwise end up in file paths).
    #[error(
        "release pins bundle digest `{found}`, which is not 64 lowercase hex digits (SHA-256)"
    )]
    InvalidDigest {
        /// What the release carried (at most 80 characters of it).
        found: String,
    },
    /// The timestamp names another channel, release version or release content.
    #[error("the timestamp vouches for channel `{found_channel}` release version {found_version}, not the release offered (channel `{channel}` version {expected_version}): a replayed or mixed-up release")]
    TimestampMismatch {
        /// The channel followed.
        channel: String,
        /// The release version offered.
        expected_version: u64,
        /// The timestamp's channel.
        found_channel: String,
        /// The timestamp's release version.
        found_version: u64,
    },
    /// The root requires a timestamp with every release and none came.
    #[error("root version {root_version} requires a timestamp with every release, and the server sent none; is the server's timestamp key configured (--timestamp-key)?")]
    MissingTimestamp {
        /// The trusted root version.
        root_version: u64,
    },
    /// A timestamp was checked against a root without a timestamp role.
    #[error("root version {root_version} names no timestamp role")]
    NoTimestampRole {
        /// The trusted root version.
        root_version: u64,
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
