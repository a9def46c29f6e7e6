//! The durable spool: one file per record (`<seq>.json`), written to a
//! temporary file, fsynced and renamed, so a record is either wholly there or
//! not at all. Bounded in bytes; when full, the oldest records are dropped
//! and counted (the count is kept on disk and reported with every batch).

use crate::error::{Error, IoContext};
use crate::wire::{Record, SpoolStats};
use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

struct State {
    next_seq: u64,
    files: VecDeque<(u64, u64)>,
    bytes: u64,
    dropped: u64,
    quarantined: u64,
}

fn name(seq: u64) -> String {
    format!("{seq:016x}.json")
}

/// A spool's statistics read from its directory without opening it (for a
/// status command while the device runs): pending records and bytes, drops.
pub(crate) fn peek(dir: &Path) -> SpoolStats {
    let mut stats = SpoolStats::default();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let is_record = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .is_some_and(|stem| u64::from_str_radix(stem, 16).is_ok());
            if let (true, Ok(meta)) = (is_record, e.metadata()) {
                stats.pending_records += 1;
                stats.pending_bytes += meta.len();
            }
        }
    }
    stats.dropped_records = fs::read_to_string(dir.join("dropped"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    stats
}

#[cfg_attr(not(feature = "shipper"), allow(dead_code))]
impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, Error> {
        fs::create_dir_all(dir.join("tmp")).at(dir)?;
        fs::create_dir_all(dir.join("rejected")).at(dir)?;
        // Leftover temporary files are records that were never committed.
        for e in fs::read_dir(dir.join("tmp")).at(dir)?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut files = Vec::new();
        for e in fs::read_dir(dir).at(dir)?.flatten() {
            let n = e.file_name();
            let Some(stem) = n.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let (Ok(seq), Ok(meta)) = (u64::from_str_radix(stem, 16), e.metadata()) {
                files.push((seq, meta.len()));
            }
        }
        files.sort();
        let read_count = |f: &str| -> u64 {
            fs::read_to_string(dir.join(f))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        let state = State {
            next_seq: files.last().map_or(1, |f| f.0 + 1),
            bytes: files.iter().map(|f| f.1).sum(),
            files: files.into(),
            dropped: read_count("dropped"),
            quarantined: read_count("rejected/count"),
        };
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Durably add a record. Returns how many old records were dropped to make room.
    pub fn push(&self, record: &Record) -> Result<u64, Error> {
        let json = serde_json::to_vec(record).map_err(|e| Error::Config(e.to_string()))?;
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let tmp = self.dir.join("tmp").join(name(seq));
        let path = self.dir.join(name(seq));
        let mut f = fs::File::create(&tmp).at(&tmp)?;
        f.write_all(&json).at(&tmp)?;
        f.sync_data().at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        st.files.push_back((seq, json.len() as u64));
        st.bytes += json.len() as u64;
        let mut dropped = 0;
        while st.bytes > self.max_bytes && st.files.len() > 1 {
            if let Some((old, size)) = st.files.pop_front() {
                let _ = fs::remove_file(self.dir.join(name(old)));
                st.bytes -= size;
                dropped += 1;
            }
        }
        if dropped > 0 {
            st.dropped += dropped;
            let _ =
                crate::write_atomic(&self.dir.join("dropped"), st.dropped.to_string().as_bytes());
        }
        Ok(dropped)
    }

    /// The oldest records, up to `max_records` and about `max_bytes`.
    pub fn peek(&self, max_records: usize, max_bytes: usize) -> Vec<(u64, Vec<u8>)> {
        let seqs: Vec<u64> = self
            .lock()
            .files
            .iter()
            .map(|f| f.0)
            .take(max_records)
            .collect();
        let mut out = Vec::new();
        let mut size = 0;
        for seq in seqs {
            match fs::read(self.dir.join(name(seq))) {
                Ok(b) => {
                    if !out.is_empty() && size + b.len() > max_bytes {
                        break;
                    }
                    size += b.len();
                    out.push((seq, b));
                }
                // Dropped while we looked; skip it.
                Err(_) => continue,
            }
        }
        out
    }

    /// Forget shipped records.
    pub fn remove(&self, seqs: &[u64]) {
        let mut st = self.lock();
        for &seq in seqs {
            if let Some(i) = st.files.iter().position(|f| f.0 == seq) {
                let (_, size) = st.files.remove(i).unwrap_or_default();
                st.bytes -= size;
                let _ = fs::remove_file(self.dir.join(name(seq)));
            }
        }
    }

    /// Move a record the collector refuses as malformed out of the way.
    pub fn quarantine(&self, seq: u64) {
        let mut st = self.lock();
        if let Some(i) = st.files.iter().position(|f| f.0 == seq) {
            let (_, size) = st.files.remove(i).unwrap_or_default();
            st.bytes -= size;
            let _ = fs::rename(
                self.dir.join(name(seq)),
                self.dir.join("rejected").join(name(seq)),
            );
            st.quarantined += 1;
            let _ = crate::write_atomic(
                &self.dir.join("rejected/count"),
                st.quarantined.to_string().as_bytes(),
            );
        }
    }

    pub fn stats(&self) -> SpoolStats {
        let st = self.lock();
        SpoolStats {
            pending_records: st.files.len() as u64,
            pending_bytes: st.bytes,
            dropped_records: st.dropped,
        }
    }

    pub fn quarantined(&self) -> u64 {
        self.lock().quarantined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ModelRef, RecordBody, SampleInput, SampleReason, SampleRecord};

    fn record(i: u64) -> Record {
        Record {
            id: format!("{i:032x}"),
            body: RecordBody::Sample(SampleRecord {
                model: ModelRef {
                    name: "m".into(),
                    version: "1".into(),
                    digest: "d".into(),
                },
                at_ms: i,
                reason: SampleReason::Reservoir,
                prediction: None,
                prediction_id: None,
                value: None,
                input: SampleInput::media("text/plain", &[0u8; 1000]),
            }),
        }
    }

    #[test]
    fn full_spool_drops_oldest_first_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64 * 1024).unwrap();
        let mut dropped = 0;
        for i in 0..100 {
            dropped += spool.push(&record(i)).unwrap();
        }
        let st = spool.stats();
        assert!(dropped > 0 && st.dropped_records == dropped);
        assert_eq!(st.pending_records + dropped, 100);
        assert!(st.pending_bytes <= 64 * 1024);
        // The survivors are the newest, and the count survives a restart.
        let reopened = Spool::open(dir.path(), 64 * 1024).unwrap();
        assert_eq!(reopened.stats(), st);
        let oldest: Record = serde_json::from_slice(&reopened.peek(1, 1 << 20)[0].1).unwrap();
        assert_eq!(oldest.id, format!("{dropped:032x}"));
    }
}
