//! Progress on stderr for long work (indicatif): uploads, downloads,
//! compiling a component, benchmark iterations. Bars are hidden when stderr
//! is not a terminal, so scripts, logs and tests see only the results.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `len` bytes to move (an upload).
pub fn bytes(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len).with_style(style(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ));
    pb.set_message(what.to_string());
    pb
}

/// Bytes of unknown total (a download).
pub fn download(what: &str) -> ProgressBar {
    let pb = ProgressBar::no_length().with_style(style("{spinner} {msg} {bytes} {bytes_per_sec}"));
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Work without a measure (compiling a component, pushing to a registry).
pub fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner().with_style(style("{spinner} {msg} {elapsed}"));
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// `n` steps (benchmark iterations).
pub fn steps(n: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n).with_style(style("{msg} [{bar:30}] {pos}/{len} eta {eta}"));
    pb.set_message(what.to_string());
    pb
}
