//! The per-model journal: every prediction's event is copied into a
//! memory-mapped file before `predict` returns, so a killed process loses at
//! most the event being written. Windows are aggregated from the journal, in
//! normal operation and after a crash alike.
//!
//! Layout: `EDGEMLJ1`, generation (u64), window start (u64 ms), metadata
//! length (u32), metadata JSON, then frames from [`Journal::data_start`]:
//! `len u32 | crc32(generation ‖ payload) u32 | payload`. A reset bumps the
//! generation, so frames left over from an earlier window fail their CRC.

use crate::wire::ModelRef;
use memmap2::MmapMut;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

const MAGIC: &[u8; 8] = b"EDGEMLJ1";

/// What a journal's events refer to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JournalMeta {
    pub model: ModelRef,
    pub monitoring_features: Vec<String>,
    pub labels: Vec<String>,
}

/// One prediction, as journaled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub t_ms: u64,
    pub latency_us: u32,
    /// 0 = ok, else [`crate::ErrorKind::code`].
    pub outcome: u8,
    pub monitoring: Vec<f32>,
    /// (label index, score), best first.
    pub scores: Vec<(u16, f32)>,
}

impl Event {
    pub(crate) fn encode_into(
        out: &mut Vec<u8>,
        t_ms: u64,
        latency_us: u32,
        outcome: u8,
        monitoring: &[f32],
        scores: impl ExactSizeIterator<Item = (u16, f32)>,
    ) {
        out.clear();
        out.extend(t_ms.to_le_bytes());
        out.extend(latency_us.to_le_bytes());
        out.push(outcome);
        let n_mon = monitoring.len().min(u16::MAX as usize);
        out.extend((n_mon as u16).to_le_bytes());
        out.extend((scores.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for v in &monitoring[..n_mon] {
            out.extend(v.to_le_bytes());
        }
        for (i, s) in scores.take(u16::MAX as usize) {
            out.extend(i.to_le_bytes());
            out.extend(s.to_le_bytes());
        }
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Event> {
        let t_ms = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
        let latency_us = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
        let outcome = *b.get(12)?;
        let n_mon = u16::from_le_bytes(b.get(13..15)?.try_into().ok()?) as usize;
        let n_scores = u16::from_le_bytes(b.get(15..17)?.try_into().ok()?) as usize;
        let mut p = 17;
        let f32_at = |p: &mut usize| -> Option<f32> {
            let v = f32::from_le_bytes(b.get(*p..*p + 4)?.try_into().ok()?);
            *p += 4;
            Some(v)
        };
        let monitoring = (0..n_mon)
            .map(|_| f32_at(&mut p))
            .collect::<Option<Vec<_>>>()?;
        let mut scores = Vec::with_capacity(n_scores);
        for _ in 0..n_scores {
            let i = u16::from_le_bytes(b.get(p..p + 2)?.try_into().ok()?);
            p += 2;
            scores.push((i, f32_at(&mut p)?));
        }
        Some(Event {
            t_ms,
            latency_us,
            outcome,
            monitoring,
            scores,
        })
    }
}

pub(crate) struct Journal {
    map: MmapMut,
    _file: File,
    data_start: usize,
    pos: usize,
    generation: u64,
    pub events: u64,
}

impl Journal {
    /// Create (or overwrite) a journal of `capacity` bytes.
    pub fn create(
        path: &Path,
        capacity: u64,
        meta: &JournalMeta,
        start_ms: u64,
    ) -> io::Result<Self> {
        let meta_json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let data_start = (28 + meta_json.len()).next_multiple_of(64);
        let capacity = capacity.max(data_start as u64 + 4096);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(capacity)?;
        // SAFETY: the file is ours (the telemetry directory is locked against
        // other edgeml processes) and is not truncated while mapped.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        map[..8].copy_from_slice(MAGIC);
        map[24..28].copy_from_slice(&(meta_json.len() as u32).to_le_bytes());
        map[28..28 + meta_json.len()].copy_from_slice(&meta_json);
        let mut j = Journal {
            map,
            _file: file,
            data_start,
            pos: data_start,
            generation: 0,
            events: 0,
        };
        j.reset(start_ms);
        Ok(j)
    }

    /// Start a new window: bump the generation, forget the events.
    pub fn reset(&mut self, start_ms: u64) {
        self.generation += 1;
        self.map[16..24].copy_from_slice(&start_ms.to_le_bytes());
        self.map[8..16].copy_from_slice(&self.generation.to_le_bytes());
        self.pos = self.data_start;
        self.events = 0;
    }

    pub fn start_ms(&self) -> u64 {
        u64::from_le_bytes(self.map[16..24].try_into().unwrap_or_default())
    }

    /// Append one event; `false` when the journal is full.
    pub fn append(&mut self, payload: &[u8]) -> bool {
        let end = self.pos + 8 + payload.len();
        if end > self.map.len() {
            return false;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&self.generation.to_le_bytes());
        h.update(payload);
        self.map[self.pos + 8..end].copy_from_slice(payload);
        self.map[self.pos + 4..self.pos + 8].copy_from_slice(&h.finalize().to_le_bytes());
        self.map[self.pos..self.pos + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        self.pos = end;
        self.events += 1;
        true
    }

    /// The current generation's events.
    pub fn events(&self) -> Vec<Event> {
        scan(&self.map, self.data_start, self.generation)
    }

    /// Ask the OS to write the mapping to disk (power-loss safety; a killed
    /// process loses nothing either way).
    pub fn sync(&self) {
        let _ = self.map.flush_async();
    }
}

fn scan(map: &[u8], data_start: usize, generation: u64) -> Vec<Event> {
    let mut out = Vec::new();
    let mut p = data_start;
    while p + 8 <= map.len() {
        let len = u32::from_le_bytes(map[p..p + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(map[p + 4..p + 8].try_into().unwrap_or_default());
        if len == 0 || p + 8 + len > map.len() {
            break;
        }
        let payload = &map[p + 8..p + 8 + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&generation.to_le_bytes());
        h.update(payload);
        if h.finalize() != crc {
            break;
        }
        match Event::decode(payload) {
            Some(e) => out.push(e),
            None => break,
        }
        p += 8 + len;
    }
    out
}

/// Read a journal left by an earlier process: its metadata, window start and
/// the events of its last generation. `None` if it is not a journal.
pub(crate) fn recover(path: &Path) -> io::Result<Option<(JournalMeta, u64, Vec<Event>)>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < 28 || &bytes[..8] != MAGIC {
        return Ok(None);
    }
    let generation = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
    let start_ms = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
    let meta_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap_or_default()) as usize;
    let Some(meta_bytes) = bytes.get(28..28 + meta_len) else {
        return Ok(None);
    };
    let Ok(meta) = serde_json::from_slice::<JournalMeta>(meta_bytes) else {
        return Ok(None);
    };
    let data_start = (28 + meta_len).next_multiple_of(64);
    Ok(Some((meta, start_ms, scan(&bytes, data_start, generation))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> JournalMeta {
        JournalMeta {
            model: ModelRef {
                name: "m".into(),
                version: "1.0.0".into(),
                digest: "ab".into(),
            },
            monitoring_features: vec!["a".into()],
            labels: vec![],
        }
    }

    #[test]
    fn events_survive_reopen_and_reset_hides_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, 64 * 1024, &meta(), 1000).unwrap();
        let mut buf = Vec::new();
        for i in 0..3u32 {
            Event::encode_into(
                &mut buf,
                1000 + u64::from(i),
                i,
                0,
                &[i as f32],
                [(1u16, 0.5f32)].into_iter(),
            );
            assert!(j.append(&buf));
        }
        let (m, start, events) = recover(&path).unwrap().unwrap();
        assert_eq!((m, start, events.len()), (meta(), 1000, 3));
        assert_eq!(events[2].monitoring, vec![2.0]);
        assert_eq!(events[2].scores, vec![(1, 0.5)]);
        j.reset(2000);
        Event::encode_into(&mut buf, 2001, 9, 1, &[], [].into_iter());
        assert!(j.append(&buf));
        let (_, start, events) = recover(&path).unwrap().unwrap();
        assert_eq!((start, events.len(), events[0].outcome), (2000, 1, 1));
    }

    #[test]
    fn torn_frame_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, 64 * 1024, &meta(), 0).unwrap();
        let mut buf = Vec::new();
        Event::encode_into(&mut buf, 1, 1, 0, &[1.0], [].into_iter());
        j.append(&buf);
        j.append(&buf);
        let second = j.data_start + 8 + buf.len();
        j.map[second + 9] ^= 0xff; // corrupt the second frame's payload
        assert_eq!(j.events().len(), 1);
    }
}
