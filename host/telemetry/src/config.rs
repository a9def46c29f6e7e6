//! Telemetry configuration, in code or from a TOML file.

use crate::drift::DriftThresholds;
use crate::error::{Error, IoContext};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Device-side telemetry settings. `TelemetryConfig::new` gives the
/// defaults; the TOML form uses the same field names, durations as `"60s"`.
///
/// ```toml
/// device_id = "gw-0001"
/// dir = "/var/lib/edgeml/telemetry"
/// window = "60s"
///
/// [collector]
/// url = "http://collector.example:7070"
/// enrolment_token_file = "/etc/edgeml/enrolment-token"
///
/// [samples]            # raw inputs: opt-in
/// per_window = 8
/// max_per_day = 500
/// low_confidence_below = 0.6
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The off switch (default on). Off, the host records no predictions;
    /// records already in the spool still ship.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// This device's id (`[A-Za-z0-9._-]`, at most 64 characters).
    pub device_id: String,
    /// Directory for the journal, spool, samples and device key.
    pub dir: PathBuf,
    /// Window length (default 60 s).
    #[serde(default = "default_window", deserialize_with = "duration")]
    pub window: Duration,
    /// KLL accuracy parameter for feature sketches (default 200: ~1.7% rank error).
    #[serde(default = "default_k")]
    pub sketch_k: u16,
    /// Bands for the device's local drift check.
    #[serde(default)]
    pub drift: DriftThresholds,
    /// Size of each journal buffer (default 8 MiB); a window closes early when one fills.
    #[serde(default = "default_journal_bytes")]
    pub journal_bytes: u64,
    /// Largest spool on disk (default 64 MiB); the oldest records go first when full.
    #[serde(default = "default_spool_bytes")]
    pub spool_max_bytes: u64,
    /// Raw input samples; `None` (the default) keeps none.
    #[serde(default)]
    pub samples: Option<SampleConfig>,
    /// Where to ship; `None` keeps everything in the spool.
    #[serde(default)]
    pub collector: Option<CollectorConfig>,
}

/// Raw input sampling (opt-in: inputs can be sensitive).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Reservoir size per model and window (default 8).
    #[serde(default = "default_per_window")]
    pub per_window: u32,
    /// At most this many samples per UTC day (default 500).
    #[serde(default = "default_per_day")]
    pub max_per_day: u64,
    /// At most this many raw bytes per UTC day (default 32 MiB).
    #[serde(default = "default_bytes_per_day")]
    pub max_bytes_per_day: u64,
    /// Also keep inputs whose top score is below this.
    #[serde(default)]
    pub low_confidence_below: Option<f32>,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            per_window: default_per_window(),
            max_per_day: default_per_day(),
            max_bytes_per_day: default_bytes_per_day(),
            low_confidence_below: None,
        }
    }
}

/// The collector to ship to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Base URL, e.g. `http://127.0.0.1:7070`.
    pub url: String,
    /// Enrolment token (or `enrolment_token_file`); needed until the device is enrolled.
    #[serde(default)]
    pub enrolment_token: Option<String>,
    /// File holding the enrolment token.
    #[serde(default)]
    pub enrolment_token_file: Option<PathBuf>,
    /// How often to ship (default 10 s).
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Records per batch (default 500).
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// Uncompressed bytes per batch (default 4 MiB).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// Per-request timeout (default 30 s).
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// First retry delay after a failure (default 1 s); doubles each time, with full jitter.
    #[serde(default = "default_backoff_base", deserialize_with = "duration")]
    pub backoff_base: Duration,
    /// Longest retry delay (default 5 min).
    #[serde(default = "default_backoff_max", deserialize_with = "duration")]
    pub backoff_max: Duration,
}

impl CollectorConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        CollectorConfig {
            url: url.into(),
            enrolment_token: None,
            enrolment_token_file: None,
            interval: default_interval(),
            batch_records: default_batch_records(),
            batch_bytes: default_batch_bytes(),
            timeout: default_timeout(),
            backoff_base: default_backoff_base(),
            backoff_max: default_backoff_max(),
        }
    }

    #[cfg_attr(not(feature = "shipper"), allow(dead_code))]
    pub(crate) fn token(&self) -> Result<Option<String>, Error> {
        if let Some(t) = &self.enrolment_token {
            return Ok(Some(t.trim().to_string()));
        }
        match &self.enrolment_token_file {
            Some(p) => Ok(Some(std::fs::read_to_string(p).at(p)?.trim().to_string())),
            None => Ok(None),
        }
    }
}

impl TelemetryConfig {
    /// Defaults for a device id and directory; nothing shipped, no samples.
    pub fn new(device_id: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        TelemetryConfig {
            enabled: true,
            device_id: device_id.into(),
            dir: dir.into(),
            window: default_window(),
            sketch_k: default_k(),
            drift: DriftThresholds::default(),
            journal_bytes: default_journal_bytes(),
            spool_max_bytes: default_spool_bytes(),
            samples: None,
            collector: None,
        }
    }

    /// Read a TOML file. Relative `dir` and token paths are relative to the file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).at(path)?;
        let mut c: TelemetryConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        c.dir = base.join(&c.dir);
        if let Some(col) = &mut c.collector {
            if let Some(f) = &col.enrolment_token_file {
                col.enrolment_token_file = Some(base.join(f));
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Check values that serde does not.
    pub fn validate(&self) -> Result<(), Error> {
        if !crate::wire::valid_device_id(&self.device_id) {
            return Err(Error::Config(format!(
                "device_id `{}` must be 1-64 characters of letters, digits, `.`, `_` or `-`",
                self.device_id
            )));
        }
        if self.window < Duration::from_millis(100) {
            return Err(Error::Config(format!(
                "window {:?} is shorter than the 100 ms minimum",
                self.window
            )));
        }
        if self.journal_bytes < 64 * 1024 {
            return Err(Error::Config(
                "journal_bytes must be at least 64 KiB".into(),
            ));
        }
        if self.spool_max_bytes < 64 * 1024 {
            return Err(Error::Config(
                "spool_max_bytes must be at least 64 KiB".into(),
            ));
        }
        if let Some(c) = &self.collector {
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "collector url `{}` must start with http:// or https://",
                    c.url
                )));
            }
            if c.batch_records == 0 || c.batch_bytes < 1024 {
                return Err(Error::Config(
                    "collector batch_records must be > 0 and batch_bytes >= 1024".into(),
                ));
            }
        }
        Ok(())
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn default_enabled() -> bool {
    true
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_k() -> u16 {
    crate::sketch::DEFAULT_K
}
fn default_journal_bytes() -> u64 {
    8 << 20
}
fn default_spool_bytes() -> u64 {
    64 << 20
}
fn default_per_window() -> u32 {
    8
}
fn default_per_day() -> u64 {
    500
}
fn default_bytes_per_day() -> u64 {
    32 << 20
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_batch_records() -> usize {
    500
}
fn default_batch_bytes() -> usize {
    4 << 20
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_base() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}
