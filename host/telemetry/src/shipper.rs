//! Ships spooled records to the collector: enrol once, then batches of the
//! oldest records, gzip, signed by the device key. Records leave the spool
//! only when the collector has stored them. Failures back off exponentially
//! with jitter; a batch the collector calls malformed is split until the bad
//! record is found and set aside.

use crate::wire::{self, EnrolRequest};
use crate::{lock, now_ms, xorshift, Inner, Signal};
use serde::Serialize;
use serde_json::value::RawValue;
use std::io::Write;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

enum Outcome {
    /// Nothing to send.
    Idle,
    /// Records delivered.
    Shipped,
    /// Try again later.
    Retry(String),
    /// The collector refused the batch as malformed.
    Malformed(String),
}

#[derive(Serialize)]
struct OutgoingBatch<'a> {
    device_id: &'a str,
    sent_ms: u64,
    spool: wire::SpoolStats,
    records: Vec<&'a RawValue>,
}

pub(crate) fn run(weak: Weak<Inner>, signal: Arc<Signal>) {
    let mut attempt: u32 = 0;
    let mut next = Instant::now();
    let mut one_at_a_time = false;
    let mut rng = crate::seed();
    let client = {
        let Some(inner) = weak.upgrade() else { return };
        let Some(c) = &inner.config.collector else {
            return;
        };
        match reqwest::blocking::Client::builder()
            .timeout(c.timeout)
            .connect_timeout(c.timeout.min(Duration::from_secs(10)))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                lock(&inner.stats).last_error = Some(format!("cannot build an HTTP client: {e}"));
                return;
            }
        }
    };
    loop {
        let wait = {
            let Some(inner) = weak.upgrade() else { return };
            if inner.shutdown.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let Some(c) = inner.config.collector.clone() else {
                return;
            };
            if Instant::now() >= next {
                match ship_once(&inner, &client, one_at_a_time) {
                    Outcome::Idle => next = Instant::now() + c.interval,
                    Outcome::Shipped => {
                        attempt = 0;
                        one_at_a_time = false;
                        lock(&inner.stats).last_error = None;
                        next = Instant::now();
                    }
                    Outcome::Malformed(why) => {
                        tracing::warn!(error = %why, "the collector refused a record; quarantined");
                        lock(&inner.stats).last_error = Some(why);
                        one_at_a_time = true;
                        next = Instant::now();
                    }
                    Outcome::Retry(why) => {
                        // Once per outage, not once per retry.
                        if attempt == 0 {
                            tracing::warn!(
                                error = %why,
                                spool_records = inner.spool.stats().pending_records,
                                "telemetry not delivered; kept in the spool, retrying"
                            );
                        }
                        lock(&inner.stats).last_error = Some(why);
                        attempt = attempt.saturating_add(1);
                        let cap = c
                            .backoff_base
                            .saturating_mul(1u32 << attempt.min(20))
                            .min(c.backoff_max);
                        // Equal jitter: half fixed, half random.
                        let half = cap.as_millis() as u64 / 2;
                        let jitter = xorshift(&mut rng) % (half + 1);
                        next = Instant::now() + Duration::from_millis(half + jitter);
                    }
                }
            }
            next.saturating_duration_since(Instant::now())
        };
        if !wait.is_zero() {
            signal.wait(wait);
            // A notification (new records, flush) is a reason to look, but
            // not to cut a backoff short.
            if attempt == 0 {
                next = next.min(Instant::now());
            }
        }
    }
}

fn ship_once(inner: &Inner, client: &reqwest::blocking::Client, one: bool) -> Outcome {
    let Some(c) = &inner.config.collector else {
        return Outcome::Idle;
    };
    let pending = inner
        .spool
        .peek(if one { 1 } else { c.batch_records }, c.batch_bytes);
    if pending.is_empty() {
        return Outcome::Idle;
    }
    if !lock(&inner.stats).enrolled {
        if let Err(why) = enrol(inner, client) {
            return Outcome::Retry(why);
        }
    }
    let mut raws = Vec::with_capacity(pending.len());
    let mut seqs = Vec::with_capacity(pending.len());
    for (seq, bytes) in &pending {
        match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw) => {
                raws.push(raw);
                seqs.push(*seq);
            }
            // Not JSON: a damaged file. Set it aside rather than block the spool.
            Err(_) => inner.spool.quarantine(*seq),
        }
    }
    if raws.is_empty() {
        return Outcome::Shipped;
    }
    let mut spool = inner.spool.stats();
    spool.pending_records = spool.pending_records.saturating_sub(raws.len() as u64);
    spool.pending_bytes = spool
        .pending_bytes
        .saturating_sub(raws.iter().map(|r| r.get().len() as u64).sum());
    let batch = OutgoingBatch {
        device_id: inner.identity.device_id(),
        sent_ms: now_ms(),
        spool,
        records: raws,
    };
    let json = match serde_json::to_vec(&batch) {
        Ok(j) => j,
        Err(e) => return Outcome::Retry(format!("cannot encode a batch: {e}")),
    };
    let body = match gzip(&json) {
        Ok(b) => b,
        Err(e) => return Outcome::Retry(format!("cannot compress a batch: {e}")),
    };
    let body_len = body.len() as u64;
    let sig = inner.identity.sign_batch(&body);
    let url = format!("{}/v1/ingest", c.url.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header(wire::DEVICE_HEADER, inner.identity.device_id())
        .header(wire::SIGNATURE_HEADER, sig)
        .body(body)
        .send();
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(format!("collector unreachable at {url}: {e}")),
    };
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    match status {
        200..=299 => {
            // Update the stats before removing, so whoever sees the spool
            // empty also sees the count and no stale error.
            {
                let mut stats = lock(&inner.stats);
                stats.shipped_records += seqs.len() as u64;
                stats.shipped_bytes += body_len;
                stats.last_error = None;
            }
            inner.spool.remove(&seqs);
            let left = inner.spool.stats();
            tracing::info!(
                records = seqs.len(),
                bytes = body_len,
                spool_records = left.pending_records,
                spool_bytes = left.pending_bytes,
                "telemetry shipped"
            );
            Outcome::Shipped
        }
        401 | 403 => {
            // Perhaps the collector lost our enrolment: enrol again next time.
            lock(&inner.stats).enrolled = false;
            let _ = std::fs::remove_file(inner.config.dir.join("enrolled"));
            Outcome::Retry(format!(
                "collector refused the device credential ({status}): {text}"
            ))
        }
        400 | 413 | 422 => {
            if seqs.len() == 1 {
                inner.spool.quarantine(seqs[0]);
            }
            Outcome::Malformed(format!(
                "collector refused a batch as malformed ({status}): {text}"
            ))
        }
        _ => Outcome::Retry(format!("collector answered {status}: {text}")),
    }
}

fn enrol(inner: &Inner, client: &reqwest::blocking::Client) -> Result<(), String> {
    let Some(c) = &inner.config.collector else {
        return Ok(());
    };
    let token = c
        .token()
        .map_err(|e| e.to_string())?
        .ok_or("the device is not enrolled and no enrolment token is configured (collector.enrolment_token or enrolment_token_file)")?;
    enrol_device(client, &c.url, &token, &inner.identity)?;
    let _ = std::fs::write(inner.config.dir.join("enrolled"), &c.url);
    lock(&inner.stats).enrolled = true;
    Ok(())
}

/// Enrol `identity` with the collector at `url` (idempotent: enrolling
/// again with the same key succeeds). The shipper's own copy of
/// `edgeml_client::Client::enrol`: this crate cannot depend on the client,
/// which depends on it for the wire types.
fn enrol_device(
    client: &reqwest::blocking::Client,
    url: &str,
    token: &str,
    identity: &crate::DeviceIdentity,
) -> Result<(), String> {
    let url = format!("{}/v1/enrol", url.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .bearer_auth(token)
        .json(&EnrolRequest {
            device_id: identity.device_id().into(),
            public_key: identity.public_key_hex(),
        })
        .send()
        .map_err(|e| format!("collector unreachable at {url}: {e}"))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        let text = resp.text().unwrap_or_default();
        return Err(format!("enrolment refused ({status}): {text}"));
    }
    Ok(())
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes)?;
    enc.finish()
}
