//! The two signed documents: the root of trust and per-channel release metadata.

use crate::target::{Selector, Tags};
use crate::{Error, Result};
use edgeml_bundle::{KeyId, PublicKey, SecretKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// Largest metadata document accepted (either kind).
pub const MAX_METADATA_BYTES: usize = 1 << 20;

/// Most root versions a device follows in one update (TUF's
/// `max_root_rotations`). A longer chain is followed over several polls,
/// so a server cannot keep a device verifying roots forever.
pub const MAX_ROOT_UPDATES: u64 = 32;

/// Largest release metadata version (the server stores versions as signed
/// 64-bit integers, and a device must never be pushed past what the server
/// can publish after it).
pub const MAX_RELEASE_VERSION: u64 = i64::MAX as u64;

/// A signed document: the payload exactly as signed (JSON text) and its signatures.
///
/// Signatures cover `"edgeml-fleet-v1" 0x00 type 0x00 payload`, so a root
/// signature never verifies as a release signature and no JSON
/// canonicalisation is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The payload's JSON text.
    pub payload: String,
    /// Signatures over it.
    pub signatures: Vec<Signature>,
}

/// One signature in an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Hex key id (a hint; checks recompute ids from trusted keys).
    pub keyid: String,
    /// Hex Ed25519 signature.
    pub sig: String,
}

fn message(kind: &str, payload: &str) -> Vec<u8> {
    let mut m = b"edgeml-fleet-v1\0".to_vec();
    m.extend(kind.as_bytes());
    m.push(0);
    m.extend(payload.as_bytes());
    m
}

impl Envelope {
    /// Serialise `payload` and sign it with each key.
    pub fn sign<T: Payload>(payload: &T, keys: &[&SecretKey]) -> Result<Envelope> {
        let text = serde_json::to_string_pretty(payload).map_err(|e| Error::Malformed {
            what: T::KIND,
            reason: e.to_string(),
        })?;
        let mut env = Envelope {
            payload: text,
            signatures: Vec::new(),
        };
        for k in keys {
            env.add_signature::<T>(k);
        }
        Ok(env)
    }

    /// Add (or replace) `key`'s signature.
    pub fn add_signature<T: Payload>(&mut self, key: &SecretKey) {
        let keyid = key.public_key().id().to_string();
        self.signatures.retain(|s| s.keyid != keyid);
        let sig = key.sign(&message(T::KIND, &self.payload));
        self.signatures.push(Signature {
            keyid,
            sig: hex::encode(sig),
        });
    }

    /// Parse an envelope (JSON bytes).
    pub fn from_slice(bytes: &[u8], what: &'static str) -> Result<Envelope> {
        if bytes.len() > MAX_METADATA_BYTES {
            return Err(Error::Malformed {
                what,
                reason: format!("larger than {MAX_METADATA_BYTES} bytes"),
            });
        }
        serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
            what,
            reason: e.to_string(),
        })
    }

    /// Hex SHA-256 of the signed payload text (what a timestamp names).
    pub fn payload_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.payload.as_bytes()))
    }

    /// The envelope as JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parse the payload without checking signatures (for display and for
    /// the server's own bookkeeping; devices use [`TrustedRoot`]).
    pub fn payload_unverified<T: Payload>(&self) -> Result<T> {
        let p: T = serde_json::from_str(&self.payload).map_err(|e| Error::Malformed {
            what: T::KIND,
            reason: e.to_string(),
        })?;
        if p.kind() != T::KIND {
            return Err(Error::Malformed {
                what: T::KIND,
                reason: format!("type is `{}`, expected `{}`", p.kind(), T::KIND),
            });
        }
        Ok(p)
    }

    /// Check signatures against `role`: returns the key ids with valid
    /// signatures, or the error naming what was wrong.
    fn check(
        &self,
        kind: &'static str,
        role_name: &'static str,
        role: &Role,
        root: &Root,
    ) -> Result<BTreeSet<String>> {
        let msg = message(kind, &self.payload);
        let mut valid = BTreeSet::new();
        let mut foreign = None;
        for s in &self.signatures {
            let Ok(sig) = hex::decode(&s.sig) else {
                continue;
            };
            // Which trusted key made it? Key ids are hints: check the key itself.
            let signer = root
                .keys
                .iter()
                .filter_map(|(id, k)| Some((id, root_key(k).ok()?)))
                .find(|(_, k)| k.verify(&msg, &sig));
            match signer {
                Some((id, _)) if root.revoked.contains(id) => {
                    return Err(Error::RevokedKey {
                        role: role_name,
                        keyid: id.clone(),
                    })
                }
                Some((id, _)) if role.keyids.contains(id) => {
                    valid.insert(id.clone());
                }
                Some((id, _)) => foreign = foreign.or(Some(id.clone())),
                None => foreign = foreign.or(Some(s.keyid.clone())),
            }
        }
        if valid.len() < role.threshold as usize {
            if let (true, Some(keyid)) = (valid.is_empty(), foreign) {
                return Err(Error::WrongKey {
                    role: role_name,
                    keyid,
                    root_version: root.version,
                });
            }
            return Err(Error::ThresholdNotMet {
                role: role_name,
                have: valid.len(),
                need: role.threshold as usize,
            });
        }
        Ok(valid)
    }
}

fn root_key(hex_key: &str) -> Result<PublicKey> {
    let bytes =
        hex::decode(hex_key).map_err(|e| Error::InvalidRoot(format!("key is not hex: {e}")))?;
    PublicKey::from_bytes(&bytes).map_err(|e| Error::InvalidRoot(e.to_string()))
}

/// A signed document type.
pub trait Payload: Serialize + for<'de> Deserialize<'de> {
    /// `root` or `release`.
    const KIND: &'static str;
    /// The document's `type` field.
    fn kind(&self) -> &str;
}

/// Keys and threshold for one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Hex key ids (each in [`Root::keys`]).
    pub keyids: Vec<String>,
    /// Valid signatures required (k of n).
    pub threshold: u32,
}

/// The roles a root names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// Signs new roots.
    pub root: Role,
    /// Signs release metadata.
    pub release: Role,
    /// Signs bundles (`edgeml sign`).
    pub publisher: Role,
    /// Optional: signs short-lived [`Timestamp`]s of each channel's current
    /// release. Its keys are held online by the fleet server. When a root
    /// names it, devices require a fresh timestamp with every release, so a
    /// server or proxy that freezes a device is noticed within the
    /// timestamp's lifetime (a day by default) instead of the release's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Role>,
    /// Optional: signs precompiled artifacts (`edgeml precompile`), so that
    /// a build machine's key need not be a publisher key. Without it,
    /// artifacts are signed by a publisher key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Role>,
}

/// The root of trust: keys, roles and thresholds, revoked keys. Version 1
/// ships with the device; later versions must be signed by the previous
/// version's root keys and their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// Always `root`.
    #[serde(rename = "type")]
    pub kind: String,
    /// 1, 2, 3, ...
    pub version: u64,
    /// RFC 3339 expiry.
    pub expires: String,
    /// Hex key id -> hex public key (tool-conventions serialisation).
    pub keys: BTreeMap<String, String>,
    /// The roles.
    pub roles: Roles,
    /// Key ids refused in every role, now and in every later root.
    #[serde(default)]
    pub revoked: BTreeSet<String>,
}

impl Payload for Root {
    const KIND: &'static str = "root";
    fn kind(&self) -> &str {
        &self.kind
    }
}

impl Root {
    /// A root with the given keys per role (thresholds checked by [`Root::validate`]).
    pub fn new(
        version: u64,
        expires: SystemTime,
        root: (&[PublicKey], u32),
        release: (&[PublicKey], u32),
        publisher: (&[PublicKey], u32),
    ) -> Root {
        let mut keys = BTreeMap::new();
        let mut role = |(ks, threshold): (&[PublicKey], u32)| {
            let mut keyids = Vec::new();
            for k in ks {
                let id = k.id().to_string();
                keys.insert(id.clone(), hex::encode(k.to_bytes()));
                keyids.push(id);
            }
            Role { keyids, threshold }
        };
        let roles = Roles {
            root: role(root),
            release: role(release),
            publisher: role(publisher),
            timestamp: None,
            build: None,
        };
        Root {
            kind: "root".into(),
            version,
            expires: humantime::format_rfc3339_seconds(expires).to_string(),
            keys,
            roles,
            revoked: BTreeSet::new(),
        }
    }

    /// Name a timestamp role (see [`Roles::timestamp`]): devices trusting
    /// this root then require a fresh timestamp signed by `threshold` of `keys`.
    pub fn with_timestamp(mut self, keys: &[PublicKey], threshold: u32) -> Root {
        let role = self.add_role_keys(keys, threshold);
        self.roles.timestamp = Some(role);
        self
    }

    /// Name build keys (see [`Roles::build`]): devices then accept
    /// precompiled artifacts signed by one of `keys` instead of by a
    /// publisher key.
    pub fn with_build(mut self, keys: &[PublicKey]) -> Root {
        let role = self.add_role_keys(keys, 1);
        self.roles.build = Some(role);
        self
    }

    fn add_role_keys(&mut self, keys: &[PublicKey], threshold: u32) -> Role {
        let mut keyids = Vec::new();
        for k in keys {
            let id = k.id().to_string();
            self.keys.insert(id.clone(), hex::encode(k.to_bytes()));
            keyids.push(id);
        }
        Role { keyids, threshold }
    }

    /// Check what the types do not: key ids match keys, thresholds are
    /// reachable, revoked keys hold no role.
    pub fn validate(&self) -> Result<()> {
        if self.kind != "root" || self.version == 0 {
            return Err(Error::InvalidRoot(
                "type must be `root` and version at least 1".into(),
            ));
        }
        parse_time(&self.expires, "root")?;
        for (id, k) in &self.keys {
            if root_key(k)?.id().to_string() != *id {
                return Err(Error::InvalidRoot(format!(
                    "key id {id} does not match its key"
                )));
            }
        }
        for (name, role) in [
            ("root", Some(&self.roles.root)),
            ("release", Some(&self.roles.release)),
            ("publisher", Some(&self.roles.publisher)),
            ("timestamp", self.roles.timestamp.as_ref()),
            ("build", self.roles.build.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, r)| Some((n, r?)))
        {
            if name == "build" && role.threshold != 1 {
                return Err(Error::InvalidRoot(
                    "build threshold must be 1: a precompiled artifact carries one signature"
                        .into(),
                ));
            }
            let distinct: BTreeSet<_> = role.keyids.iter().collect();
            if role.threshold == 0 || role.threshold as usize > distinct.len() {
                return Err(Error::InvalidRoot(format!(
                    "{name} threshold {} needs 1..={} distinct keys",
                    role.threshold,
                    distinct.len()
                )));
            }
            for id in &role.keyids {
                if !self.keys.contains_key(id) {
                    return Err(Error::InvalidRoot(format!(
                        "{name} key {id} is not in `keys`"
                    )));
                }
                if self.revoked.contains(id) {
                    return Err(Error::InvalidRoot(format!(
                        "{name} key {id} is revoked; remove it from the role"
                    )));
                }
            }
        }
        Ok(())
    }

    /// When it expires.
    pub fn expires_at(&self) -> Result<SystemTime> {
        parse_time(&self.expires, "root")
    }

    /// The publisher keys and threshold, as a bundle trust policy.
    pub fn publisher_policy(&self) -> Result<edgeml_bundle::TrustPolicy> {
        let keys = self
            .roles
            .publisher
            .keyids
            .iter()
            .map(|id| root_key(&self.keys[id]))
            .collect::<Result<Vec<_>>>()?;
        edgeml_bundle::TrustPolicy::new(keys, self.roles.publisher.threshold as usize)
            .map_err(|e| Error::InvalidRoot(e.to_string()))
    }

    /// Who may sign precompiled artifacts, as a trust policy. An artifact
    /// carries one signature (and the release metadata, signed by the
    /// release role's threshold, pins its digest), so: any one key of the
    /// build role if the root names one (its threshold must be 1), else any
    /// one publisher key if the publisher threshold is 1. A root whose
    /// publisher threshold is higher must name a build role for devices to
    /// take artifacts: one publisher key alone must not be able to ship
    /// native code when bundles need several.
    pub fn artifact_policy(&self) -> Result<edgeml_bundle::TrustPolicy> {
        let role = match &self.roles.build {
            Some(build) => build,
            None if self.roles.publisher.threshold == 1 => &self.roles.publisher,
            None => {
                return Err(Error::InvalidRoot(format!(
                    "root version {} needs {} publisher signatures per bundle and names no build \
                     role; artifacts carry one signature, so name build keys \
                     (`edgeml root rotate --build-key`) to use precompiled artifacts",
                    self.version, self.roles.publisher.threshold
                )))
            }
        };
        let keys = role
            .keyids
            .iter()
            .filter(|id| !self.revoked.contains(*id))
            .map(|id| {
                let k = self
                    .keys
                    .get(id)
                    .ok_or_else(|| Error::InvalidRoot(format!("key {id} is not in `keys`")))?;
                root_key(k)
            })
            .collect::<Result<Vec<_>>>()?;
        edgeml_bundle::TrustPolicy::any_of(keys).map_err(|e| Error::InvalidRoot(e.to_string()))
    }

    /// Whether `key` is revoked.
    pub fn is_revoked(&self, key: KeyId) -> bool {
        self.revoked.contains(&key.to_string())
    }
}

/// The bundle a release pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    /// Hex SHA-256 of the whole bundle file.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

/// A precompiled artifact a release offers next to its bundle
/// (`edgeml precompile`, `edgeml push --artifact`): devices whose target
/// and engine fingerprint match download it instead of compiling the
/// bundle, and devices without a compiler can only run such artifacts.
/// The artifact's own signature covers the compiled code; this reference,
/// signed with the release, pins which artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    /// The target it was compiled for (`aarch64-unknown-linux-gnu`, `pulley32`).
    pub target: String,
    /// The engine fingerprint it was compiled for (`Runtime::engine_fingerprint`).
    pub engine: String,
    /// Hex SHA-256 of the artifact file.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

impl BundleRef {
    /// Check bytes against the pinned length and digest.
    pub fn check(&self, bytes: &[u8]) -> Result<()> {
        check_pinned(bytes, self.size, &self.sha256)
    }
}

impl ArtifactRef {
    /// Check downloaded bytes against the pinned length and digest.
    pub fn check(&self, bytes: &[u8]) -> Result<()> {
        check_pinned(bytes, self.size, &self.sha256)
    }
}

fn check_pinned(bytes: &[u8], size: u64, sha256: &str) -> Result<()> {
    let got = bytes.len() as u64;
    if got < size {
        return Err(Error::Truncated {
            expected: size,
            got,
        });
    }
    if got > size {
        return Err(Error::TooLong { expected: size });
    }
    let found = hex::encode(Sha256::digest(bytes));
    if found != sha256 {
        return Err(Error::DigestMismatch {
            expected: sha256.to_string(),
            found,
        });
    }
    Ok(())
}

/// Release metadata for one channel: which bundle, to how much of the
/// fleet, until when. Signed by the root's release keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Always `release`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The channel (`stable`, `beta`).
    pub channel: String,
    /// Metadata version: grows with every publish to the channel.
    pub version: u64,
    /// RFC 3339 expiry.
    pub expires: String,
    /// Model name (the bundle manifest's `name`).
    pub model: String,
    /// Model version (the bundle manifest's `version`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub model_version: semver::Version,
    /// The bundle.
    pub bundle: BundleRef,
    /// Share of the fleet that takes it, 0 to 100 (percent).
    pub rollout_percent: f64,
    /// Devices with a higher version installed may install this one.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Precompiled artifacts of the bundle, per target. Agents older than
    /// this field refuse release metadata that has it: upgrade agents
    /// before publishing artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRef>,
    /// Only devices whose tags match this selector take the release (see
    /// [`crate::target`]); unset: every device of the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A paced rollout: the share grows step by step up to
    /// `rollout_percent` (the last step), each step only after the gate
    /// has passed at the one before. Unset: `rollout_percent` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// When the server halts the rollout on failures alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortCriteria>,
}

/// The steps of a paced rollout, signed with the release. The release keys
/// sign every step up to the last; the fleet server only decides when the
/// next one starts (after the canary gate has passed at the current step
/// for `min_step_secs` with `min_step_devices` devices running the
/// release), and devices take the share of the step the server names,
/// never more than the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The share of each step in percent, increasing; the last is the
    /// release's `rollout_percent`.
    pub steps: Vec<f64>,
    /// Time at each step before the next may start (seconds).
    pub min_step_secs: u64,
    /// Devices that must run the release at a step before the next may
    /// start (or every device the step includes, if fewer).
    pub min_step_devices: u32,
}

impl Schedule {
    /// The steps as `1% -> 10% -> 100%`.
    pub fn steps_text(&self) -> String {
        self.steps
            .iter()
            .map(|p| format!("{p}%"))
            .collect::<Vec<_>>()
            .join(" -> ")
    }

    /// Steps growing by `rate` from `start` percent (`1, 2, 4, ... 100`
    /// for 1 and 2), ending at `end`.
    pub fn exponential(start: f64, rate: f64, end: f64) -> Result<Vec<f64>> {
        let valid = start > 0.0 && start <= end && end <= 100.0 && rate > 1.0;
        if !valid {
            return Err(Error::InvalidSchedule(format!(
                "an exponential schedule needs 0 < start ({start}) <= end ({end}) <= 100 and a rate above 1 ({rate})"
            )));
        }
        let mut steps = vec![start];
        let mut share = start;
        while share * rate < end {
            share *= rate;
            steps.push((share * 100.0).round() / 100.0);
        }
        if steps.last() != Some(&end) {
            steps.push(end);
        }
        Ok(steps)
    }
}

/// Halt a rollout once this share of the devices that ran the release
/// failed it (rolled back), counted only after `min_devices` devices ran it
/// (as Greengrass's job abort configuration does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AbortCriteria {
    /// Share of devices, in (0, 1].
    pub failure_share: f64,
    /// Devices that must have run the release first.
    pub min_devices: u32,
}

impl Payload for Release {
    const KIND: &'static str = "release";
    fn kind(&self) -> &str {
        &self.kind
    }
}

impl Release {
    /// When it expires.
    pub fn expires_at(&self) -> Result<SystemTime> {
        parse_time(&self.expires, "release")
    }

    /// Refuse this release once it has expired.
    pub fn check_fresh(&self, now: SystemTime) -> Result<()> {
        check_expiry(self.expires_at()?, now, "release")
    }

    /// Refuse a lower model version than `installed` unless this release
    /// allows a downgrade.
    pub fn check_version(&self, installed: Option<&semver::Version>) -> Result<()> {
        match installed {
            Some(v) if self.model_version < *v && !self.allow_downgrade => Err(Error::Rollback {
                model: self.model.clone(),
                installed: v.clone(),
                offered: self.model_version.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Check downloaded bytes against the pinned length and digest.
    pub fn check_bundle(&self, bytes: &[u8]) -> Result<()> {
        check_pinned(bytes, self.bundle.size, &self.bundle.sha256)
    }

    /// The artifact for a host running `target` code (`aarch64`,
    /// `pulley32`; compared by architecture, as
    /// [`edgeml_bundle::artifact::target_family`] does) with engine
    /// fingerprint `engine`, if the release has one.
    pub fn artifact_for(&self, target: &str, engine: &str) -> Option<&ArtifactRef> {
        use edgeml_bundle::artifact::target_family;
        self.artifacts
            .iter()
            .find(|a| target_family(&a.target) == target_family(target) && a.engine == engine)
    }

    /// Check the verified bundle's manifest names this release's model and version.
    pub fn check_manifest(&self, manifest: &edgeml_bundle::Manifest) -> Result<()> {
        if manifest.name != self.model || manifest.version != self.model_version {
            return Err(Error::ManifestMismatch {
                expected: format!("{} {}", self.model, self.model_version),
                found: format!("{} {}", manifest.name, manifest.version),
            });
        }
        Ok(())
    }

    /// Whether `device_id`, carrying `tags`, is in this release's rollout at
    /// `step` of its schedule (the first step when `None`; ignored without
    /// a schedule): its tags must match the release's target, and its
    /// bucket must be within the step's share. A stable hash of the
    /// channel, model name and device id puts each device in one of 10 000
    /// buckets, and the first `share` percent of them take the release.
    /// The same devices go first for every version, and raising the share
    /// only adds devices.
    pub fn includes(&self, device_id: &str, tags: &Tags, step: Option<u32>) -> bool {
        self.targets(tags)
            && rollout_bucket(&self.channel, &self.model, device_id)
                < (self.share(step) * 100.0).round() as u64
    }

    /// Whether a device with `tags` matches the release's target (a
    /// target that does not parse matches nothing; [`Release::validate`]
    /// refuses it).
    pub fn targets(&self, tags: &Tags) -> bool {
        match &self.target {
            None => true,
            Some(t) => t.parse::<Selector>().is_ok_and(|s| s.matches(tags)),
        }
    }

    /// The share in percent at `step` of the schedule (clamped to the
    /// last step; the first when `None`), or `rollout_percent` without a
    /// schedule.
    pub fn share(&self, step: Option<u32>) -> f64 {
        match &self.schedule {
            Some(s) if !s.steps.is_empty() => {
                let i = (step.unwrap_or(0) as usize).min(s.steps.len() - 1);
                s.steps[i].min(self.rollout_percent)
            }
            _ => self.rollout_percent,
        }
    }

    /// The index of the schedule's last step (0 without a schedule).
    pub fn last_step(&self) -> u32 {
        self.schedule
            .as_ref()
            .map_or(0, |s| s.steps.len().saturating_sub(1) as u32)
    }

    /// Check what the types do not: the share is a percentage, the target
    /// parses, the schedule's steps grow to `rollout_percent`, the abort
    /// criteria are a share of at least one device.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=100.0).contains(&self.rollout_percent) {
            return Err(Error::Malformed {
                what: "release",
                reason: format!("rollout_percent {} is not in 0..=100", self.rollout_percent),
            });
        }
        if let Some(t) = &self.target {
            t.parse::<Selector>()?;
        }
        if let Some(s) = &self.schedule {
            if s.steps.is_empty() || s.steps.len() > 100 {
                return Err(Error::InvalidSchedule(format!(
                    "{} steps; give 1 to 100",
                    s.steps.len()
                )));
            }
            if s.steps.iter().any(|p| !(*p > 0.0 && *p <= 100.0))
                || s.steps.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(Error::InvalidSchedule(format!(
                    "steps {:?} must grow, each in (0, 100]",
                    s.steps
                )));
            }
            if s.steps.last() != Some(&self.rollout_percent) {
                return Err(Error::InvalidSchedule(format!(
                    "the last step ({:?}) must be the release's rollout_percent ({})",
                    s.steps.last(),
                    self.rollout_percent
                )));
            }
        }
        if let Some(a) = &self.abort {
            if !(a.failure_share > 0.0 && a.failure_share <= 1.0) || a.min_devices == 0 {
                return Err(Error::InvalidSchedule(format!(
                    "abort criteria need a failure share in (0, 1] ({}) and at least one device ({})",
                    a.failure_share, a.min_devices
                )));
            }
        }
        Ok(())
    }
}

/// A device's rollout bucket, 0..10 000 (see [`Release::includes`]).
pub fn rollout_bucket(channel: &str, model: &str, device_id: &str) -> u64 {
    let mut h = Sha256::new();
    for part in [channel, model, device_id] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first) % 10_000
}

/// `Expired` once `now` has reached `expires`.
fn check_expiry(expires: SystemTime, now: SystemTime, role: &'static str) -> Result<()> {
    if now >= expires {
        return Err(Error::Expired {
            role,
            expired: expires,
        });
    }
    Ok(())
}

fn parse_time(s: &str, role: &'static str) -> Result<SystemTime> {
    humantime::parse_rfc3339(s).map_err(|e| Error::Malformed {
        what: role,
        reason: format!("expires `{s}`: {e}"),
    })
}

/// A channel's current release, vouched for by the online timestamp key
/// for a short time. Signed by the root's timestamp role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timestamp {
    /// Always `timestamp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The channel.
    pub channel: String,
    /// The release metadata version it vouches for.
    pub release_version: u64,
    /// Hex SHA-256 of that release's signed payload text.
    pub release_sha256: String,
    /// RFC 3339 expiry (short: a day by default).
    pub expires: String,
}

impl Payload for Timestamp {
    const KIND: &'static str = "timestamp";
    fn kind(&self) -> &str {
        &self.kind
    }
}

impl Timestamp {
    /// A timestamp for `release` (its envelope) on its channel, valid until `expires`.
    pub fn for_release(release: &Envelope, expires: SystemTime) -> Result<Timestamp> {
        let r: Release = release.payload_unverified()?;
        Ok(Timestamp {
            kind: Timestamp::KIND.into(),
            channel: r.channel,
            release_version: r.version,
            release_sha256: release.payload_sha256(),
            expires: humantime::format_rfc3339_seconds(expires).to_string(),
        })
    }

    /// When it expires.
    pub fn expires_at(&self) -> Result<SystemTime> {
        parse_time(&self.expires, "timestamp")
    }

    /// Refuse it once it has expired.
    pub fn check_fresh(&self, now: SystemTime) -> Result<()> {
        check_expiry(self.expires_at()?, now, "timestamp")
    }
}

/// What a root update changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RootUpdate {
    /// The new root version.
    pub version: u64,
    /// The release role's keys or threshold changed: the trusted release
    /// metadata version must be dropped (keep the model-version check).
    pub release_keys_changed: bool,
}

/// The root a device trusts, and the checks it makes with it.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    root: Root,
    envelope: Envelope,
}

impl TrustedRoot {
    /// Trust an initial root (shipped with the device): it must be valid
    /// and signed by its own root threshold. Expiry is checked by
    /// [`TrustedRoot::check_fresh`], once the chain has been followed.
    pub fn bootstrap(bytes: &[u8]) -> Result<TrustedRoot> {
        let envelope = Envelope::from_slice(bytes, "root")?;
        let root: Root = envelope.payload_unverified()?;
        root.validate()?;
        envelope.check(Root::KIND, "root", &root.roles.root, &root)?;
        Ok(TrustedRoot { root, envelope })
    }

    /// The trusted root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The trusted root's envelope, for storing.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Move to the next root version: it must be version n+1, valid, signed
    /// by the threshold of this root's root keys and of its own, and keep
    /// every revocation.
    ///
    /// The returned [`RootUpdate`] says whether the release role changed.
    /// When it did, callers drop the release metadata version they trust
    /// (TUF's fast-forward recovery): metadata signed with the old keys,
    /// however high its version, no longer holds the device back.
    pub fn update(&mut self, bytes: &[u8]) -> Result<RootUpdate> {
        let envelope = Envelope::from_slice(bytes, "root")?;
        let next: Root = envelope.payload_unverified()?;
        if next.version != self.root.version + 1 {
            return Err(Error::RootVersion {
                expected: self.root.version + 1,
                found: next.version,
            });
        }
        next.validate()?;
        // The old root keys vouch for the new root ...
        match envelope.check(Root::KIND, "root", &self.root.roles.root, &self.root) {
            Ok(_) => {}
            Err(Error::ThresholdNotMet { have, need, .. }) => {
                return Err(Error::RootRotationUnsigned {
                    version: next.version,
                    previous: self.root.version,
                    have,
                    need,
                })
            }
            Err(Error::WrongKey { .. }) => {
                return Err(Error::RootRotationUnsigned {
                    version: next.version,
                    previous: self.root.version,
                    have: 0,
                    need: self.root.roles.root.threshold as usize,
                })
            }
            Err(e) => return Err(e),
        }
        // ... and its own root keys accept it.
        envelope.check(Root::KIND, "root", &next.roles.root, &next)?;
        if let Some(keyid) = self.root.revoked.difference(&next.revoked).next() {
            return Err(Error::Unrevoked {
                version: next.version,
                keyid: keyid.clone(),
            });
        }
        let change = RootUpdate {
            version: next.version,
            release_keys_changed: self.root.roles.release != next.roles.release,
        };
        self.root = next;
        self.envelope = envelope;
        Ok(change)
    }

    /// The ids of this root's root keys whose signatures on it verify (for
    /// records such as the server's audit log).
    pub fn root_signers(&self) -> BTreeSet<String> {
        self.envelope
            .check(Root::KIND, "root", &self.root.roles.root, &self.root)
            .unwrap_or_default()
    }

    /// The ids of this root's release keys whose signatures on release
    /// metadata `bytes` verify, once they meet the threshold.
    pub fn release_signers(&self, bytes: &[u8]) -> Result<BTreeSet<String>> {
        Envelope::from_slice(bytes, "release")?.check(
            Release::KIND,
            "release",
            &self.root.roles.release,
            &self.root,
        )
    }

    /// Refuse an expired root (after following the chain).
    pub fn check_fresh(&self, now: SystemTime) -> Result<()> {
        check_expiry(self.root.expires_at()?, now, "root")
    }

    /// Check only that release metadata carries the threshold of this
    /// root's release signatures (no expiry, channel or version checks).
    /// The server uses it to tell whether its stored release was signed
    /// under the current release keys.
    pub fn check_release_signatures(&self, bytes: &[u8]) -> Result<Release> {
        let envelope = Envelope::from_slice(bytes, "release")?;
        let release: Release = envelope.payload_unverified()?;
        envelope.check(
            Release::KIND,
            "release",
            &self.root.roles.release,
            &self.root,
        )?;
        let digest = &release.bundle.sha256;
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Error::InvalidDigest {
                found: digest.chars().take(80).collect(),
            });
        }
        if release.version > MAX_RELEASE_VERSION {
            return Err(Error::VersionOutOfRange {
                version: release.version,
                max: MAX_RELEASE_VERSION,
            });
        }
        Ok(release)
    }

    /// Whether this root requires a timestamp with every release.
    pub fn requires_timestamp(&self) -> bool {
        self.root.roles.timestamp.is_some()
    }

    /// Verify a timestamp for `release` (the release envelope just
    /// verified): the timestamp role's threshold, not expired, and naming
    /// exactly this channel, release version and payload hash.
    pub fn verify_timestamp(
        &self,
        bytes: &[u8],
        release: &Envelope,
        channel: &str,
        now: SystemTime,
    ) -> Result<Timestamp> {
        let role = self
            .root
            .roles
            .timestamp
            .as_ref()
            .ok_or(Error::NoTimestampRole {
                root_version: self.root.version,
            })?;
        let envelope = Envelope::from_slice(bytes, "timestamp")?;
        let ts: Timestamp = envelope.payload_unverified()?;
        envelope.check(Timestamp::KIND, "timestamp", role, &self.root)?;
        let r: Release = release.payload_unverified()?;
        let sha = release.payload_sha256();
        if ts.channel != channel || ts.release_version != r.version || ts.release_sha256 != sha {
            return Err(Error::TimestampMismatch {
                channel: channel.into(),
                expected_version: r.version,
                found_channel: ts.channel,
                found_version: ts.release_version,
            });
        }
        ts.check_fresh(now)?;
        Ok(ts)
    }

    /// Verify release metadata for `channel`: release-key threshold, no
    /// revoked signer, not expired, and not older than `seen` (the last
    /// release metadata the device accepted for the channel).
    pub fn verify_release(
        &self,
        bytes: &[u8],
        channel: &str,
        now: SystemTime,
        seen: Option<&Release>,
    ) -> Result<Release> {
        let release = self.check_release_signatures(bytes)?;
        if release.channel != channel {
            return Err(Error::WrongChannel {
                expected: channel.into(),
                found: release.channel,
            });
        }
        if let Some(seen) = seen {
            if release.version < seen.version {
                return Err(Error::MetadataRollback {
                    channel: channel.into(),
                    seen: seen.version,
                    offered: release.version,
                });
            }
            if release.version == seen.version && release != *seen {
                return Err(Error::Equivocation {
                    channel: channel.into(),
                    version: release.version,
                });
            }
        }
        release.check_fresh(now)?;
        release.validate()?;
        Ok(release)
    }
}
