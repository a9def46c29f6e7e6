//! What devices, the fleet server and the CLI send each other (JSON).

use serde::{Deserialize, Serialize};

/// Where a channel's rollout stands. Only the release keys can widen a
/// rollout (its share is signed); the server can only hold it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Devices in the rollout share take the release.
    Active,
    /// An operator paused it: devices that have not taken it wait.
    Paused,
    /// The canary gate (or a failed health check) stopped it: devices that
    /// took it roll back to their last known good bundle.
    Halted,
}

/// `GET /v1/fleet/channels/{channel}`: the signed release and the
/// rollout's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelView {
    /// The release metadata envelope, as the release keys signed it.
    pub release: crate::Envelope,
    /// The rollout's state.
    pub state: RolloutState,
    /// Why it is paused or halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The newest root version the server has.
    pub root_version: u64,
    /// A short-lived timestamp of this release, signed by the server's
    /// online timestamp key (when the root names a timestamp role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<crate::Envelope>,
}

/// A device's update state, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Serving its installed version; nothing to do.
    Idle,
    /// Fetching a bundle.
    Downloading,
    /// Loaded the new version and is watching it.
    Checking,
    /// The new version passed and is installed.
    Installed,
    /// The new version failed its health check; back on the last known good.
    RolledBack,
    /// The update was refused or failed before staging (see `last_error`).
    Failed,
    /// Restarted into the last known good bundle after an interrupted update.
    Recovered,
}

/// A model version as installed on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Hex SHA-256 of the bundle file.
    pub sha256: String,
}

/// `POST /v1/fleet/report` (signed by the device key, like telemetry batches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The channel the device follows.
    pub channel: String,
    /// Its update state.
    pub state: UpdateState,
    /// What it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<Installed>,
    /// Its last known good bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<Installed>,
    /// The version it is updating to or just failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The bundle digest of `target`: a rollback counts as evidence against
    /// exactly this bundle, and only if the server offered it to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sha256: Option<String>,
    /// The last error, as the device's error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// A stable name for the last error's kind (`self_test`, `rollback`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Root version the device trusts.
    pub root_version: u64,
    /// Grows with every report the device sends; the server refuses a
    /// report whose sequence number is not above the last one it accepted
    /// from the device (a replayed report).
    #[serde(default)]
    pub seq: u64,
}

/// One device in the fleet view (`GET /v1/fleet/devices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDevice {
    /// Device id.
    pub device_id: String,
    /// When it last reported (ms since the epoch).
    pub last_seen_ms: u64,
    /// Its latest report.
    pub status: StatusReport,
}

/// `POST /v1/fleet/channels/{channel}/rollout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    /// Stop devices from taking the release.
    Pause,
    /// Let them take it again (also lifts a halt).
    Resume,
}
