//! The event log: what happened to copies, volumes and writers (`shadowcopy events`), kept in
//! memory (the newest [`KEPT`]) and appended to `<state-dir>/events.jsonl`, one JSON line per
//! event, so that it survives a restart. The file is rotated to `events.jsonl.1` past
//! [`ROTATE_BYTES`]; at start the newest lines of the current file are read back (at most
//! [`ROTATE_BYTES`] of it, damaged lines skipped).
//!
//! Owns sequence numbers and the waiting of `events --follow`. Never decides what is an event:
//! the service records them. Writing the file is best effort (an event is never a reason for an
//! operation to fail), and it is not synced: after a power loss the newest events may be gone.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use shadowcopy::protocol::{EventKind, EventView};
use uuid::Uuid;

/// Events kept in memory.
pub const KEPT: usize = 1000;
/// The file is rotated once it is this large.
pub const ROTATE_BYTES: u64 = 1 << 20;

/// The daemon's events.
pub struct EventLog {
    inner: Mutex<Recent>,
    grew: Condvar,
    file: Option<PathBuf>,
    clock: fn() -> SystemTime,
}

struct Recent {
    next_seq: u64,
    events: VecDeque<EventView>,
}

/// One event, before it has a number and a time.
pub struct NewEvent<'a> {
    /// What kind of thing happened.
    pub kind: EventKind,
    /// The volume it concerns.
    pub volume: Option<&'a str>,
    /// The copy it concerns.
    pub copy: Option<Uuid>,
    /// Why (deletions).
    pub reason: Option<&'static str>,
    /// In words.
    pub message: String,
}

impl EventLog {
    /// The log kept in `file` (read back now), or in memory only.
    pub fn open(file: Option<PathBuf>, clock: fn() -> SystemTime) -> EventLog {
        let events = file.as_deref().map(read_back).unwrap_or_default();
        let next_seq = events.back().map_or(1, |e| e.seq + 1);
        EventLog { inner: Mutex::new(Recent { next_seq, events }), grew: Condvar::new(), file, clock }
    }

    /// Records an event: logged, kept, appended to the file, and sent to followers.
    pub fn record(&self, e: NewEvent<'_>) -> EventView {
        let time_unix = (self.clock)().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut recent = self.inner.lock();
        let view = EventView {
            seq: recent.next_seq,
            time_unix,
            kind: e.kind,
            volume: e.volume.map(String::from),
            copy: e.copy,
            reason: e.reason.map(String::from),
            message: e.message,
        };
        recent.next_seq += 1;
        match view.kind {
            EventKind::CopyCreated => tracing::info!(seq = view.seq, "{}", view.message),
            _ => tracing::warn!(seq = view.seq, "{}", view.message),
        }
        if let Some(path) = &self.file {
            if let Err(err) = append(path, &view) {
                tracing::warn!(file = %path.display(), error = %err, "cannot append to the event log");
            }
        }
        recent.events.push_back(view.clone());
        if recent.events.len() > KEPT {
            recent.events.pop_front();
        }
        drop(recent);
        self.grew.notify_all();
        view
    }

    /// The events after `after` (all kept if `None`), at most the newest `limit`.
    pub fn since(&self, after: Option<u64>, limit: usize) -> Vec<EventView> {
        let recent = self.inner.lock();
        let newer: Vec<&EventView> = recent.events.iter().filter(|e| after.is_none_or(|a| e.seq > a)).collect();
        newer[newer.len().saturating_sub(limit)..].iter().map(|e| (*e).clone()).collect()
    }

    /// Waits up to `patience` for events after `after`; returns them (empty after the wait).
    pub fn wait_after(&self, after: u64, patience: Duration) -> Vec<EventView> {
        let mut recent = self.inner.lock();
        if recent.next_seq <= after + 1 {
            self.grew.wait_for(&mut recent, patience);
        }
        recent.events.iter().filter(|e| e.seq > after).cloned().collect()
    }

    /// The newest sequence number given (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().next_seq - 1
    }
}

fn append(path: &Path, e: &EventView) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= ROTATE_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    std::fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(&line)
}

/// The newest [`KEPT`] readable events of the file (bounded: a larger file is read from its
/// last [`ROTATE_BYTES`]).
fn read_back(path: &Path) -> VecDeque<EventView> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = VecDeque::new();
    let Ok(mut f) = std::fs::File::open(path) else { return out };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(ROTATE_BYTES);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(ROTATE_BYTES).read_to_end(&mut bytes).is_err() {
        return out;
    }
    for line in bytes.split(|b| *b == b'\n') {
        // The first line after a seek may be cut: it does not parse and is skipped.
        if let Ok(e) = serde_json::from_slice::<EventView>(line) {
            if out.back().is_none_or(|last: &EventView| e.seq > last.seq) {
                out.push_back(e);
            }
        }
        if out.len() > KEPT {
            out.pop_front();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(log: &EventLog, n: usize) -> EventView {
        log.record(NewEvent { kind: EventKind::CopyCreated, volume: Some("v"), copy: None, reason: None, message: format!("event {n}") })
    }

    #[test]
    fn events_survive_a_restart_and_numbers_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::open(Some(path.clone()), SystemTime::now);
        for n in 0..3 {
            event(&log, n);
        }
        // A torn last line (a crash mid-append) and garbage are skipped.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"seq\":4,\"ti").unwrap();
        let again = EventLog::open(Some(path.clone()), SystemTime::now);
        let seen: Vec<u64> = again.since(None, 100).iter().map(|e| e.seq).collect();
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(event(&again, 3).seq, 4);
        assert_eq!(again.since(Some(2), 100).len(), 2);
        assert_eq!(again.since(None, 1)[0].seq, 4, "a limit keeps the newest");
    }

    #[test]
    fn memory_and_file_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::open(Some(path.clone()), SystemTime::now);
        let big = "x".repeat(2000);
        for n in 0..(KEPT + 200) {
            log.record(NewEvent { kind: EventKind::CopyFailed, volume: None, copy: None, reason: None, message: format!("{n} {big}") });
        }
        assert_eq!(log.since(None, usize::MAX).len(), KEPT);
        assert!(std::fs::metadata(&path).unwrap().len() <= ROTATE_BYTES + 4096, "rotated");
        assert!(dir.path().join("events.jsonl.1").exists());
        let again = EventLog::open(Some(path), SystemTime::now);
        assert_eq!(again.last_seq(), (KEPT + 200) as u64, "numbering continues after the rotation");
    }

    #[test]
    fn a_follower_wakes_for_a_new_event() {
        let log = std::sync::Arc::new(EventLog::open(None, SystemTime::now));
        let l2 = std::sync::Arc::clone(&log);
        let waiter = std::thread::spawn(move || l2.wait_after(0, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        event(&log, 1);
        let got = waiter.join().unwrap();
        assert_eq!(got.len(), 1);
        assert!(log.wait_after(1, Duration::from_millis(10)).is_empty());
    }
}
