//! The thaw keeper: a small process that outlives the daemon and keeps the flush-and-hold
//! promise (writes are never held longer than the hold limit) even if the daemon dies between
//! `FIFREEZE` and `FITHAW`.
//!
//! The daemon starts it once (`shadowcopyd --thaw-keeper`, the same binary) with one end of a
//! socket pair as its standard input. Before freezing a set's filesystems the daemon *arms* it
//! with their mount points and the limit; after thawing them it *disarms* it and waits for the
//! answer. The keeper thaws what is armed when the limit passes, or at once when the daemon's
//! end of the socket closes (the daemon exited, crashed or was killed), then exits when the
//! socket is closed. Stop signals are blocked in it: it ends with the daemon, not before.
//!
//! Owns nothing else: it never freezes, never reads volumes, never talks to anything but the
//! daemon. One JSON line per message each way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The hidden first argument that makes `shadowcopyd` the keeper.
pub const KEEPER_ARG: &str = "--thaw-keeper";

/// How long the daemon waits for the keeper's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    /// Keep these filesystems from staying frozen past `limit_ms` from now.
    Arm { id: u64, limit_ms: u64, mount_points: Vec<PathBuf> },
    /// The daemon thawed them itself.
    Disarm { id: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Response {
    Armed { id: u64 },
    Disarmed { id: u64 },
    Refused { id: u64, message: String },
}

/// Why the keeper could not be armed.
#[derive(Debug, Error)]
pub enum KeeperError {
    /// Starting the keeper process failed.
    #[error("cannot start the thaw keeper ({0}); no filesystem was frozen")]
    Start(#[source] io::Error),
    /// Talking to it failed.
    #[error("the thaw keeper does not answer ({0}); no filesystem was frozen")]
    Talk(#[source] io::Error),
    /// It could not open a mount point.
    #[error("the thaw keeper cannot watch the filesystem: {0}; no filesystem was frozen")]
    Refused(String),
}

/// The daemon's side: starts the keeper when first needed (and again if it died).
pub struct ThawKeeper {
    program: PathBuf,
    conn: Mutex<Option<Conn>>,
    next_id: AtomicU64,
}

struct Conn {
    child: Child,
    stream: UnixStream,
    pending: Vec<u8>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing our end tells the keeper to finish; it thaws nothing that is disarmed.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

impl ThawKeeper {
    /// A keeper run from `program` (this daemon's own binary).
    pub fn new(program: PathBuf) -> ThawKeeper {
        ThawKeeper { program, conn: Mutex::new(None), next_id: AtomicU64::new(1) }
    }

    /// Starts the keeper now, so that the first hold does not pay for it.
    pub fn start(&self) -> Result<(), KeeperError> {
        let mut conn = self.conn.lock();
        if conn.is_none() {
            *conn = Some(self.spawn()?);
        }
        Ok(())
    }

    /// The keeper's process id, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let mut conn = self.conn.lock();
        let c = conn.as_mut()?;
        match c.child.try_wait() {
            Ok(None) => Some(c.child.id()),
            _ => None,
        }
    }

    fn spawn(&self) -> Result<Conn, KeeperError> {
        let (ours, theirs) = UnixStream::pair().map_err(KeeperError::Start)?;
        let child = Command::new(&self.program)
            .arg(KEEPER_ARG)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .map_err(KeeperError::Start)?;
        ours.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(KeeperError::Start)?;
        tracing::debug!(pid = child.id(), "thaw keeper started");
        Ok(Conn { child, stream: ours, pending: Vec::new() })
    }

    /// Arms the keeper for `mount_points` (about to be frozen) for `limit`; disarmed when the
    /// returned guard drops. Starts (or restarts) the keeper if needed.
    pub fn arm(&self, mount_points: &[PathBuf], limit: Duration) -> Result<Armed<'_>, KeeperError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request::Arm { id, limit_ms: limit.as_millis() as u64, mount_points: mount_points.to_vec() };
        let mut conn = self.conn.lock();
        // A keeper that died (killed by hand) is replaced once.
        for attempt in 0..2 {
            if conn.is_none() {
                *conn = Some(self.spawn()?);
            }
            let c = conn.as_mut().expect("started above");
            match c.ask(&request) {
                Ok(Response::Armed { id: got }) if got == id => return Ok(Armed { keeper: self, id }),
                Ok(Response::Refused { message, .. }) => return Err(KeeperError::Refused(message)),
                Ok(other) => return Err(KeeperError::Talk(io::Error::other(format!("unexpected answer {other:?}")))),
                Err(e) if attempt == 0 => {
                    tracing::warn!(error = %e, "the thaw keeper is gone; starting a new one");
                    *conn = None;
                }
                Err(e) => return Err(KeeperError::Talk(e)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn disarm(&self, id: u64) {
        let mut conn = self.conn.lock();
        let Some(c) = conn.as_mut() else { return };
        match c.ask(&Request::Disarm { id }) {
            Ok(Response::Disarmed { id: got }) if got == id => {}
            Ok(other) => tracing::warn!(?other, "the thaw keeper answered a disarm oddly"),
            Err(e) => {
                tracing::warn!(error = %e, "the thaw keeper did not answer a disarm; starting a new one next time");
                *conn = None;
            }
        }
    }
}

/// The keeper armed for one hold; disarmed on drop (after the daemon thawed).
pub struct Armed<'a> {
    keeper: &'a ThawKeeper,
    id: u64,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.keeper.disarm(self.id);
    }
}

impl Conn {
    fn ask(&mut self, request: &Request) -> io::Result<Response> {
        let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
        line.push(b'\n');
        self.stream.write_all(&line)?;
        let line = read_line(&mut self.stream, &mut self.pending)?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        serde_json::from_slice(&line).map_err(io::Error::other)
    }
}

/// The next line from `stream` (without its newline), `None` at end of stream. Bytes after it
/// stay in `pending`.
fn read_line(stream: &mut UnixStream, pending: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    const MAX_LINE: usize = 1 << 20;
    loop {
        if let Some(n) = pending.iter().position(|b| *b == b'\n') {
            let line = pending[..n].to_vec();
            pending.drain(..=n);
            return Ok(Some(line));
        }
        if pending.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the keeper watches: per hold, its deadline and the open mount points.
type ArmedHolds = HashMap<u64, (Instant, Vec<(PathBuf, File)>)>;

/// The keeper process's life: serve the daemon on standard input until it closes, thawing what
/// is armed at its deadline or when the daemon goes away.
pub fn run_keeper() -> io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut stops = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stops.add(s);
    }
    stops.thread_block().map_err(io::Error::from)?;
    let mut stream = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut pending = Vec::new();
    let mut armed = ArmedHolds::new();
    loop {
        let next_deadline = armed.values().map(|(d, _)| *d).min();
        let wait = next_deadline.map(|d| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
        stream.set_read_timeout(wait)?;
        match read_line(&mut stream, &mut pending) {
            Ok(Some(line)) => {
                let response = match serde_json::from_slice::<Request>(&line) {
                    Ok(Request::Arm { id, limit_ms, mount_points }) => match open_all(&mount_points) {
                        Ok(dirs) => {
                            armed.insert(id, (Instant::now() + Duration::from_millis(limit_ms), dirs));
                            Response::Armed { id }
                        }
                        Err(message) => Response::Refused { id, message },
                    },
                    Ok(Request::Disarm { id }) => {
                        armed.remove(&id);
                        Response::Disarmed { id }
                    }
                    Err(e) => Response::Refused { id: 0, message: format!("not a request: {e}") },
                };
                let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
                out.push(b'\n');
                if stream.write_all(&out).is_err() {
                    thaw_everything(&mut armed, "the daemon went away");
                    return Ok(());
                }
            }
            Ok(None) => {
                thaw_everything(&mut armed, "the daemon went away mid-hold");
                return Ok(());
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                let now = Instant::now();
                let expired: Vec<u64> = armed.iter().filter(|(_, (d, _))| *d <= now).map(|(id, _)| *id).collect();
                for id in expired {
                    if let Some((_, dirs)) = armed.remove(&id) {
                        thaw(&dirs, "the hold limit passed");
                    }
                }
            }
            Err(e) => {
                thaw_everything(&mut armed, "the daemon's socket failed");
                return Err(e);
            }
        }
    }
}

fn open_all(mount_points: &[PathBuf]) -> Result<Vec<(PathBuf, File)>, String> {
    mount_points.iter().map(|p| File::open(p).map(|f| (p.clone(), f)).map_err(|e| format!("{}: {e}", p.display()))).collect()
}

fn thaw_everything(armed: &mut ArmedHolds, why: &str) {
    for (_, (_, dirs)) in armed.drain() {
        thaw(&dirs, why);
    }
}

/// Thaws each filesystem; one that was not frozen (the daemon thawed it already) is fine.
fn thaw(dirs: &[(PathBuf, File)], why: &str) {
    for (mount_point, dir) in dirs {
        match shadowcopy::hold::thaw(dir) {
            Ok(true) => tracing::warn!(mount_point = %mount_point.display(), "thaw keeper: thawed the filesystem because {why}"),
            Ok(false) => {}
            Err(e) => tracing::error!(mount_point = %mount_point.display(), error = %e, "thaw keeper: thawing failed"),
        }
    }
}

/// Thaws every still-frozen filesystem on a loop device backed by a file under `mount` (left
/// so by a daemon and keeper that both died mid-hold); the mount points it thawed. Must run
/// before a stale mount at `mount` is detached: the kernel then names the backing files
/// relative to the detached mount, and they no longer match.
pub fn thaw_leftovers(mount: &std::path::Path) -> Vec<PathBuf> {
    let Ok(devices) = shadowcopy::probe::loop_devices() else { return Vec::new() };
    let backing: Vec<PathBuf> = devices.into_iter().map(|l| l.backing_file).filter(|f| f.starts_with(mount)).collect();
    if backing.is_empty() {
        return Vec::new();
    }
    let Ok(filesystems) = shadowcopy::hold::filesystems_on(&backing) else { return Vec::new() };
    filesystems
        .into_iter()
        .filter(|fs| File::open(&fs.mount_point).is_ok_and(|dir| matches!(shadowcopy::hold::thaw(&dir), Ok(true))))
        .map(|fs| fs.mount_point)
        .collect()
}
