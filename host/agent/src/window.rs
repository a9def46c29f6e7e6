//! Maintenance windows: the times of day, in the device's local time, when
//! the agent may switch to a new version. Outside the window a new release
//! is downloaded and verified at once, kept aside, and installed at the
//! first poll inside the window, from disk.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A daily window `HH:MM-HH:MM` in local time; it may wrap midnight
/// (`22:00-04:00`). The start is inside the window, the end is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Minutes after local midnight.
    start: u16,
    /// Minutes after local midnight.
    end: u16,
}

impl MaintenanceWindow {
    /// Parse `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<MaintenanceWindow, String> {
        let bad = || {
            format!("maintenance window `{s}` is not HH:MM-HH:MM (local time, e.g. 02:00-05:00)")
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && !t.trim().starts_with('+')).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!(
                "maintenance window `{s}` is empty: leave `install.window` out to install at any time"
            ));
        }
        Ok(MaintenanceWindow { start, end })
    }

    /// Whether `minute` (after local midnight) is inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// Whether now, in the device's local time, is inside.
    pub fn is_open(&self) -> bool {
        self.contains(local_minute_now())
    }
}

impl fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl<'de> Deserialize<'de> for MaintenanceWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MaintenanceWindow::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Minutes after midnight now, in the local time zone the C library uses
/// (`TZ`, else `/etc/localtime`): what the device's clock on the wall says.
pub fn local_minute_now() -> u16 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    local_minute(now)
}

#[cfg(unix)]
fn local_minute(unix_secs: u64) -> u16 {
    let t = unix_secs as libc::time_t;
    // SAFETY: localtime_r writes only to `tm`, which outlives the call; a
    // null result (time out of range) leaves us on UTC below.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        (tm.tm_hour * 60 + tm.tm_min) as u16
    } else {
        ((unix_secs / 60) % 1440) as u16
    }
}

#[cfg(not(unix))]
fn local_minute(unix_secs: u64) -> u16 {
    // No C time zone database: UTC.
    ((unix_secs / 60) % 1440) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_contain_their_start_not_their_end_and_wrap_midnight() {
        let w = MaintenanceWindow::parse("02:00-05:30").unwrap();
        assert!(w.contains(120) && w.contains(329));
        assert!(!w.contains(330) && !w.contains(119));
        let night = MaintenanceWindow::parse("22:00-04:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(239));
        assert!(!night.contains(240) && !night.contains(12 * 60));
        assert_eq!(night.to_string(), "22:00-04:00");
    }

    #[test]
    fn rejects_malformed_and_empty_windows() {
        for bad in [
            "2-5",
            "02:00",
            "25:00-01:00",
            "02:60-03:00",
            "x-y",
            "+1:00-02:00",
        ] {
            let e = MaintenanceWindow::parse(bad).unwrap_err();
            assert!(e.contains("is not HH:MM-HH:MM"), "{bad}: {e}");
        }
        let e = MaintenanceWindow::parse("03:00-03:00").unwrap_err();
        assert!(e.contains("is empty"), "{e}");
    }
}
