//! The node ledger: which serial (and so which FUSE node ids) and which name each volume and
//! copy was given, and which `live` files are open, for the life of one FUSE connection.
//!
//! The kernel caches node ids, names and open files across a worker's death; a worker that
//! replaces a dead one must answer each node id with the object it named before, never with
//! another. The ledger is a file the holder keeps for the connection (an anonymous memfd it
//! passes to every worker): one JSON line per fact, written before the kernel can see the fact
//! (a process death keeps what `write` accepted). Replaying it gives the next worker the same
//! serials, names and open counts.
//!
//! Owns nothing else: never decides a name (the registry does) and never talks to the kernel.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::expose::Place;

/// One fact, one line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Fact {
    /// Volume `name` is served as `serial`.
    Volume { name: String, serial: u32 },
    /// Volume `serial` is no longer served: its name may get a new serial.
    Retired { serial: u32 },
    /// Copy `id` is served as `serial` under `name`.
    Copy { id: Uuid, serial: u32, name: String },
    /// A `live` file of volume `serial` was opened, by request `request` (if the frontend
    /// names requests).
    Opened {
        serial: u32,
        #[serde(default)]
        request: Option<u64>,
    },
    /// One of those opens was released.
    Released { serial: u32 },
    /// Copy `copy` was exposed at `place`.
    Exposed { copy: Uuid, place: Place },
    /// The exposure at `place` was undone.
    Unexposed { place: Place },
    /// Set `set_id` was taken with `--defer-backup-complete`: its writers wait for
    /// BackupComplete (each by name, with its components).
    SessionOpened { set_id: Uuid, writers: Vec<(String, Vec<String>)>, volumes: Vec<String>, copy_ids: Vec<Uuid> },
    /// That session's BackupComplete was sent, or its set released.
    SessionEnded { set_id: Uuid },
}

/// A deferred backup session a previous worker opened: what a new worker needs to send
/// BackupComplete for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSession {
    /// The writers, by name, each with its components in the set.
    pub writers: Vec<(String, Vec<String>)>,
    /// The set's volumes.
    pub volumes: Vec<String>,
    /// The set's copies.
    pub copy_ids: Vec<Uuid>,
}

#[derive(Default)]
struct Known {
    volumes: HashMap<String, u32>,
    copies: HashMap<Uuid, (u32, String)>,
    live_opens: HashMap<u32, usize>,
    /// The requests of the latest opens, newest last (at most [`RECENT_OPENS`]): a request the
    /// kernel resends after a worker died is found here if that worker had counted it.
    recent_opens: VecDeque<u64>,
    exposures: Vec<(Uuid, Place)>,
    sessions: HashMap<Uuid, PendingSession>,
    /// The highest serial given so far.
    last: u32,
}

impl Known {
    fn apply(&mut self, fact: &Fact) {
        match fact {
            Fact::Volume { name, serial } => {
                self.volumes.insert(name.clone(), *serial);
                self.last = self.last.max(*serial);
            }
            Fact::Retired { serial } => {
                self.volumes.retain(|_, s| s != serial);
                self.live_opens.remove(serial);
            }
            Fact::Copy { id, serial, name } => {
                self.copies.insert(*id, (*serial, name.clone()));
                self.last = self.last.max(*serial);
            }
            Fact::Opened { serial, request } => {
                *self.live_opens.entry(*serial).or_default() += 1;
                if let Some(r) = request {
                    if self.recent_opens.len() == RECENT_OPENS {
                        self.recent_opens.pop_front();
                    }
                    self.recent_opens.push_back(*r);
                }
            }
            Fact::Released { serial } => {
                if let Some(n) = self.live_opens.get_mut(serial) {
                    *n = n.saturating_sub(1);
                }
            }
            Fact::Exposed { copy, place } => self.exposures.push((*copy, place.clone())),
            Fact::Unexposed { place } => self.exposures.retain(|(_, p)| p != place),
            Fact::SessionOpened { set_id, writers, volumes, copy_ids } => {
                let s = PendingSession { writers: writers.clone(), volumes: volumes.clone(), copy_ids: copy_ids.clone() };
                self.sessions.insert(*set_id, s);
            }
            Fact::SessionEnded { set_id } => {
                self.sessions.remove(set_id);
            }
        }
    }
}

/// How many of the latest opens are remembered by request: far more than can be in flight when a
/// worker dies (one per serving thread).
const RECENT_OPENS: usize = 1024;

/// The request an open answers, as the frontend names it: the same `id` when the kernel sends it
/// again to the next worker (`resent`), so that it is counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRequest {
    /// The request's id (FUSE: its `unique`, without the resend bit).
    pub id: u64,
    /// Whether this is a resend of a request a dead worker had read.
    pub resent: bool,
}

/// The ledger of one FUSE connection.
pub struct NodeLedger {
    inner: Mutex<(Option<File>, Known)>,
}

impl std::fmt::Debug for NodeLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLedger").field("last_serial", &self.inner.lock().1.last).finish()
    }
}

impl Default for NodeLedger {
    fn default() -> Self {
        NodeLedger::in_memory()
    }
}

impl NodeLedger {
    /// A ledger kept in this process only (a connection that dies with it).
    pub fn in_memory() -> NodeLedger {
        NodeLedger { inner: Mutex::new((None, Known::default())) }
    }

    /// A new, empty ledger file for a new connection (an anonymous memfd), and a second
    /// descriptor of it for the first worker.
    pub fn create_file() -> std::io::Result<OwnedFd> {
        let fd = nix::sys::memfd::memfd_create(c"shadowcopyd-nodes", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        Ok(fd)
    }

    /// The ledger in `fd`, replaying what earlier workers wrote. A line that does not parse
    /// (a worker killed mid-write) ends the replay: everything before it stands.
    pub fn open(fd: OwnedFd) -> std::io::Result<NodeLedger> {
        let mut file = File::from(fd);
        let mut text = Vec::new();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
        file.read_to_end(&mut text)?;
        let mut known = Known::default();
        let mut good = 0;
        for line in text.split_inclusive(|b| *b == b'\n') {
            if !line.ends_with(b"\n") {
                break;
            }
            match serde_json::from_slice::<Fact>(line) {
                Ok(fact) => known.apply(&fact),
                Err(_) => break,
            }
            good += line.len();
        }
        if good < text.len() {
            tracing::warn!(dropped = text.len() - good, "the node ledger ended in a torn line; dropped it");
            file.set_len(good as u64)?;
        }
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(good as u64))?;
        Ok(NodeLedger { inner: Mutex::new((Some(file), known)) })
    }

    fn record(file: &mut Option<File>, known: &mut Known, fact: Fact) {
        if let Some(f) = file {
            let mut line = serde_json::to_vec(&fact).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = f.write_all(&line) {
                // Only a replacement worker would miss it; this one carries on.
                tracing::error!(error = %e, "writing the node ledger failed: a worker restart may not resume this node");
            }
        }
        known.apply(&fact);
    }

    /// The serial of volume `name`: the one it had on this connection, or a new one.
    pub fn volume_serial(&self, name: &str) -> u32 {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        if let Some(s) = known.volumes.get(name) {
            return *s;
        }
        let serial = known.last + 1;
        Self::record(file, known, Fact::Volume { name: name.to_string(), serial });
        serial
    }

    /// Volume `serial` is gone: its name gets a new serial if it comes back.
    pub fn retire_volume(&self, serial: u32) {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        Self::record(file, known, Fact::Retired { serial });
    }

    /// The name copy `id` had on this connection, if any.
    pub fn copy_name(&self, id: Uuid) -> Option<String> {
        self.inner.lock().1.copies.get(&id).map(|(_, n)| n.clone())
    }

    /// The serial of copy `id`, served as `name`: the one it had, or a new one.
    pub fn copy_serial(&self, id: Uuid, name: &str) -> u32 {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        if let Some((s, n)) = known.copies.get(&id) {
            if n == name {
                return *s;
            }
        }
        let serial = known.last + 1;
        Self::record(file, known, Fact::Copy { id, serial, name: name.to_string() });
        serial
    }

    /// How many opens of volume `serial`'s `live` file are not released.
    pub fn live_opens(&self, serial: u32) -> usize {
        self.inner.lock().1.live_opens.get(&serial).copied().unwrap_or(0)
    }

    /// A `live` file of volume `serial` was opened by `request`. A resent request that a dead
    /// worker had already counted (its answer was lost with it) is not counted again.
    pub fn live_opened(&self, serial: u32, request: Option<OpenRequest>) {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        if let Some(r) = request.filter(|r| r.resent) {
            if known.recent_opens.contains(&r.id) {
                tracing::debug!(request = r.id, "a resent open of live was counted by the previous worker");
                return;
            }
        }
        Self::record(file, known, Fact::Opened { serial, request: request.map(|r| r.id) });
    }

    /// An open of volume `serial`'s `live` file was released.
    pub fn live_released(&self, serial: u32) {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        Self::record(file, known, Fact::Released { serial });
    }

    /// The exposures made on this connection and not undone.
    pub fn exposures(&self) -> Vec<(Uuid, Place)> {
        self.inner.lock().1.exposures.clone()
    }

    /// Copy `copy` was exposed at `place`.
    pub fn exposed(&self, copy: Uuid, place: &Place) {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        Self::record(file, known, Fact::Exposed { copy, place: place.clone() });
    }

    /// The exposure at `place` was undone.
    pub fn unexposed(&self, place: &Place) {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        Self::record(file, known, Fact::Unexposed { place: place.clone() });
    }

    /// Set `set_id`'s writers wait for a deferred BackupComplete.
    pub fn session_opened(&self, set_id: Uuid, session: &PendingSession) {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        let fact = Fact::SessionOpened {
            set_id,
            writers: session.writers.clone(),
            volumes: session.volumes.clone(),
            copy_ids: session.copy_ids.clone(),
        };
        Self::record(file, known, fact);
    }

    /// Set `set_id`'s session needs nothing more (BackupComplete sent, or the set released).
    pub fn session_ended(&self, set_id: Uuid) {
        let mut g = self.inner.lock();
        let (file, known) = &mut *g;
        if known.sessions.contains_key(&set_id) {
            Self::record(file, known, Fact::SessionEnded { set_id });
        }
    }

    /// The deferred session of set `set_id`, if one was opened on this connection and not ended.
    pub fn pending_session(&self, set_id: Uuid) -> Option<PendingSession> {
        self.inner.lock().1.sessions.get(&set_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn reopen(fd: &OwnedFd) -> NodeLedger {
        NodeLedger::open(fd.as_fd().try_clone_to_owned().unwrap()).unwrap()
    }

    #[test]
    fn a_second_worker_gets_the_same_serials_names_and_open_counts() {
        let fd = NodeLedger::create_file().unwrap();
        let a = reopen(&fd);
        let v = a.volume_serial("data");
        let id = Uuid::new_v4();
        let c = a.copy_serial(id, "@GMT-2026.12.02-10.00.00");
        a.live_opened(v, None);
        a.live_opened(v, None);
        a.live_released(v);
        a.exposed(id, &Place::Device("/dev/loop9".into()));
        a.exposed(id, &Place::Folder("/srv/restore".into()));
        a.unexposed(&Place::Device("/dev/loop9".into()));
        drop(a);
        let b = reopen(&fd);
        assert_eq!(b.volume_serial("data"), v);
        assert_eq!(b.copy_name(id).as_deref(), Some("@GMT-2026.12.02-10.00.00"));
        assert_eq!(b.copy_serial(id, "@GMT-2026.12.02-10.00.00"), c);
        assert_eq!(b.live_opens(v), 1);
        assert_eq!(b.exposures(), vec![(id, Place::Folder("/srv/restore".into()))]);
        // New objects never reuse a serial.
        let w = b.volume_serial("other");
        assert!(w > v && w > c);
    }

    #[test]
    fn a_deferred_session_is_pending_for_the_next_worker_until_it_ends() {
        let fd = NodeLedger::create_file().unwrap();
        let a = reopen(&fd);
        let (set, other) = (Uuid::new_v4(), Uuid::new_v4());
        let pending = PendingSession {
            writers: vec![("app".into(), vec!["db".into()])],
            volumes: vec!["data".into()],
            copy_ids: vec![Uuid::new_v4()],
        };
        a.session_opened(set, &pending);
        a.session_opened(other, &pending);
        a.session_ended(other);
        let b = reopen(&fd);
        assert_eq!(b.pending_session(set), Some(pending));
        assert_eq!(b.pending_session(other), None);
        b.session_ended(set);
        assert_eq!(reopen(&fd).pending_session(set), None);
    }

    #[test]
    fn a_resent_open_the_dead_worker_counted_is_counted_once() {
        let fd = NodeLedger::create_file().unwrap();
        let a = reopen(&fd);
        let v = a.volume_serial("data");
        a.live_opened(v, Some(OpenRequest { id: 7, resent: false }));
        drop(a);
        // The next worker gets request 7 again (its answer died with the first worker), and
        // request 8, which the first worker had read but not counted.
        let b = reopen(&fd);
        b.live_opened(v, Some(OpenRequest { id: 7, resent: true }));
        assert_eq!(b.live_opens(v), 1);
        b.live_opened(v, Some(OpenRequest { id: 8, resent: true }));
        assert_eq!(b.live_opens(v), 2);
        b.live_opened(v, Some(OpenRequest { id: 9, resent: false }));
        assert_eq!(reopen(&fd).live_opens(v), 3);
    }

    #[test]
    fn a_retired_volume_name_gets_a_new_serial() {
        let fd = NodeLedger::create_file().unwrap();
        let a = reopen(&fd);
        let v = a.volume_serial("data");
        a.live_opened(v, None);
        a.retire_volume(v);
        let b = reopen(&fd);
        let again = b.volume_serial("data");
        assert_ne!(again, v);
        assert_eq!(b.live_opens(v), 0);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_rest_kept() {
        let fd = NodeLedger::create_file().unwrap();
        let a = reopen(&fd);
        let v = a.volume_serial("data");
        drop(a);
        let mut f = File::from(fd.as_fd().try_clone_to_owned().unwrap());
        std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).unwrap();
        f.write_all(br#"{"volume":{"name":"x","ser"#).unwrap();
        let b = reopen(&fd);
        assert_eq!(b.volume_serial("data"), v);
        let x = b.volume_serial("x");
        assert_eq!(x, v + 1);
        assert_eq!(reopen(&fd).volume_serial("x"), x, "the torn line was replaced by a whole one");
    }
}
