//! The fleet API: what devices, the fleet server and the CLI send each other (JSON).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a channel's rollout stands. Only the release keys can widen a
/// rollout (its share is signed); the server can only hold it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl RolloutState {
    /// The state's name, as it is serialised.
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
        }
    }
}

/// `GET /v1/fleet/channels/{channel}`: the signed release and the
/// rollout's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelView {
    /// The release metadata envelope, as the release keys signed it.
    pub release: edgeml_fleet::Envelope,
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
    pub timestamp: Option<edgeml_fleet::Envelope>,
    /// The step of the release's schedule the rollout is at (paced
    /// releases only): devices take that step's share, never more than the
    /// release's signed last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
}

/// A device's update state, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Downloaded and verified a new version; installs it in the next
    /// maintenance window.
    Deferred,
}

impl UpdateState {
    /// The state's name, as it is serialised (`installed`, `rolled_back`, ...).
    pub fn name(self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Downloading => "downloading",
            UpdateState::Checking => "checking",
            UpdateState::Installed => "installed",
            UpdateState::RolledBack => "rolled_back",
            UpdateState::Failed => "failed",
            UpdateState::Recovered => "recovered",
            UpdateState::Deferred => "deferred",
        }
    }
}

/// A model version as installed on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The code the device runs (`x86_64`, `aarch64`, `pulley32`): which
    /// precompiled artifact it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_target: Option<String>,
    /// Its engine fingerprint (`Runtime::engine_fingerprint`): artifacts
    /// must be compiled for exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Whether it can compile bundles itself; `false` means it runs only
    /// precompiled artifacts.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub can_compile: bool,
    /// Grows with every report the device sends; the server refuses a
    /// report whose sequence number is not above the last one it accepted
    /// from the device (a replayed report).
    #[serde(default)]
    pub seq: u64,
    /// The tags in the device's configuration (`[device] tags`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// One device in the fleet view (`GET /v1/fleet/devices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetDevice {
    /// Device id.
    pub device_id: String,
    /// When it last reported (ms since the epoch).
    pub last_seen_ms: u64,
    /// Its latest report.
    pub status: StatusReport,
    /// Its tags: those it reports, with those an admin set on the server
    /// in their place where both name a key.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The tags an admin set on the server (`PUT /v1/fleet/devices/{id}/tags`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub admin_tags: BTreeMap<String, String>,
}

/// The body of `PUT /v1/fleet/devices/{device}/tags`, and its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceTags {
    /// The tags an admin sets (replacing those set before); they take the
    /// place of the device's own tags of the same keys.
    pub tags: BTreeMap<String, String>,
}

/// `POST /v1/fleet/channels/{channel}/rollout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    /// Stop devices from taking the release.
    Pause,
    /// Let them take it again (also lifts a halt).
    Resume,
    /// Stop it and send the devices that took the release back to the
    /// version before (a halt by an operator).
    Abort,
    /// Go to the last step of a paced release's schedule at once.
    Promote,
}

/// The body of `POST /v1/fleet/channels/{channel}/rollout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutRequest {
    /// What to do.
    pub action: RolloutAction,
}

/// The reply to a rollout action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutChanged {
    /// The channel.
    pub channel: String,
    /// Its rollout's state now.
    pub state: RolloutState,
    /// The schedule step it is at (paced releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
}

/// Who changed a rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    /// The canary gate (error rate, drift against the previous version).
    Canary,
    /// Enough devices in the rollout rolled the release back.
    Rollbacks,
    /// An operator (`edgeml rollout pause|resume|promote|abort`).
    Operator,
    /// The pacer moved a paced rollout to its next step.
    Pacer,
    /// The release's abort criteria (a share of failed devices).
    Abort,
}

impl DecisionSource {
    /// The source's name, as it is serialised.
    pub fn name(self) -> &'static str {
        match self {
            DecisionSource::Canary => "canary",
            DecisionSource::Rollbacks => "rollbacks",
            DecisionSource::Operator => "operator",
            DecisionSource::Pacer => "pacer",
            DecisionSource::Abort => "abort",
        }
    }
}

/// One change of a rollout's state, recorded by the server replica that
/// made it, in the transaction that made it (so each is taken once, however
/// many replicas judge the rollout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutDecision {
    /// Order of the decisions (increasing).
    pub id: u64,
    /// The channel.
    pub channel: String,
    /// The model version being rolled out.
    pub model_version: String,
    /// The state before.
    pub from: RolloutState,
    /// The state after.
    pub to: RolloutState,
    /// Who decided.
    pub source: DecisionSource,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The server replica that took the decision (`--replica-id`).
    pub replica: String,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The schedule step the decision moved the rollout to (pacer and
    /// promote decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
}

/// `GET /v1/fleet/decisions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecisionList {
    /// Oldest first.
    pub decisions: Vec<RolloutDecision>,
}

/// The reply to `PUT /v1/fleet/roots/{version}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RootPublished {
    /// The root version stored.
    pub root_version: u64,
}

/// The reply to `PUT /v1/fleet/bundles/{sha256}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleStored {
    /// Hex SHA-256 of the bundle.
    pub sha256: String,
    /// Model name from its manifest.
    pub model: String,
    /// Model version from its manifest.
    pub version: String,
}

/// The reply to `PUT /v1/fleet/artifacts/{sha256}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactStored {
    /// Hex SHA-256 of the artifact file.
    pub sha256: String,
    /// Hex SHA-256 of the bundle it was compiled from.
    pub bundle_sha256: String,
    /// The target it was compiled for.
    pub target: String,
    /// The engine fingerprint it was compiled for.
    pub engine: String,
}

/// The reply to `PUT /v1/fleet/channels/{channel}/release`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleasePublished {
    /// The channel.
    pub channel: String,
    /// Release metadata version.
    pub version: u64,
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Share of the channel's devices that take it, in percent.
    pub rollout_percent: f64,
}

/// The reply to `POST /v1/fleet/report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportAccepted {
    /// The reporting device.
    pub device_id: String,
    /// Its tags as the server sees them (its own, with those an admin set
    /// in their place): the device matches release targets against these.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A channel's newest release and its rollout, as the server tracks it
/// (`GET /v1/fleet/channels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelStatus {
    /// The channel.
    pub channel: String,
    /// Release metadata version.
    pub version: u64,
    /// The release (its signed envelope is served to devices).
    pub release: edgeml_fleet::Release,
    /// When it was published (ms since the epoch).
    pub published_ms: u64,
    /// The rollout's state.
    pub state: RolloutState,
    /// Why it is paused or halted.
    #[serde(default)]
    pub reason: Option<String>,
    /// The model version the channel carried before this rollout started.
    #[serde(default)]
    pub previous_version: Option<String>,
    /// When this model version's rollout started (ms).
    pub started_ms: u64,
    /// Where the rollout's evidence window starts (ms): its start, or the
    /// last resume.
    pub evidence_from_ms: u64,
    /// The schedule step the rollout is at (0 without a schedule).
    #[serde(default)]
    pub step: u32,
    /// When it reached that step (ms).
    #[serde(default)]
    pub step_started_ms: u64,
}

/// `GET /v1/fleet/channels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelList {
    /// Every channel with a release.
    pub channels: Vec<ChannelStatus>,
}

/// `GET /v1/fleet/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetDeviceList {
    /// Every device that reported.
    pub devices: Vec<FleetDevice>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}
