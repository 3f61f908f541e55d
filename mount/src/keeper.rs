//! The thaw keeper: a small process beside the worker that freezes and thaws the filesystems
//! on `live` files for a set, and keeps the flush-and-hold promise (writes are never held
//! longer than the hold limit) even if the worker dies between `FIFREEZE` and `FITHAW`.
//!
//! Why the freeze and thaw run here, not in the worker: both make the kernel write through the
//! loop device to `live`, which only a worker answers. A worker SIGKILLed inside `FIFREEZE`
//! would wait uninterruptibly for its own answer and never finish dying, so the holder could
//! never start its replacement. The keeper waiting instead is harmless: the next worker
//! answers, the ioctl returns, and the keeper then thaws what the dead worker held.
//!
//! The worker starts it once (`shadowcopyd --thaw-keeper`, the same binary) with one end of a
//! socket pair as its standard input, and asks it to *hold* a set's filesystems (freeze them,
//! with the limit's watchdog running) and to *release* them (thaw). The keeper thaws what it
//! holds when the limit passes, or at once when the worker's end of the socket closes (the
//! worker exited, crashed or was killed), then exits. A restarted worker also asks it to thaw
//! what an earlier worker and keeper that both died left frozen. Stop signals are blocked in
//! it: it ends with the worker, not before.
//!
//! Owns nothing else: it never reads volumes, never talks to anything but the worker. One JSON
//! line per message each way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shadowcopy::hold::{self, HoldError, MountedFs};
use thiserror::Error;

/// The hidden first argument that makes `shadowcopyd` the keeper.
pub const KEEPER_ARG: &str = "--thaw-keeper";

/// How long the worker waits for the keeper's answer, beyond the time the request may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long thawing leftovers may take (each thaw writes a superblock through `live`).
const LEFTOVERS_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    /// Freeze these filesystems, in order, and keep them frozen for at most `limit_ms`.
    Hold { id: u64, limit_ms: u64, filesystems: Vec<MountedFs> },
    /// Thaw what hold `id` froze.
    Release { id: u64 },
    /// Thaw whatever is still frozen on a loop device over a file under `mount`.
    ThawLeftovers { mount: PathBuf },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Response {
    Held { id: u64 },
    Released { id: u64, held_ms: u64, expired: bool },
    Thawed { mount_points: Vec<PathBuf> },
    Refused { id: u64, message: String, timeout: bool },
}

/// Why a hold could not be had.
#[derive(Debug, Error)]
pub enum KeeperError {
    /// Starting the keeper process failed.
    #[error("cannot start the thaw keeper ({0}); no filesystem was frozen")]
    Start(#[source] io::Error),
    /// Talking to it failed.
    #[error("the thaw keeper does not answer ({0}); nothing is left frozen by this request")]
    Talk(#[source] io::Error),
    /// A freeze failed; everything was thawed.
    #[error("{0}")]
    Refused(String),
    /// A freeze did not return within the hold limit; everything was thawed.
    #[error("{0}")]
    FreezeTimeout(String),
}

/// The worker's side: starts the keeper when first needed (and again if it died).
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
        // Closing our end tells the keeper to finish; it thaws what it still holds.
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

    /// Ends the keeper (it thaws what it still holds) and waits for it; the next hold starts
    /// a new one.
    pub fn stop(&self) {
        self.conn.lock().take();
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
        tracing::debug!(pid = child.id(), "thaw keeper started");
        Ok(Conn { child, stream: ours, pending: Vec::new() })
    }

    /// Has the keeper freeze `filesystems` (in order) for at most `limit`; thawed when the
    /// returned hold is released or dropped, or by the keeper at the limit or when this
    /// process dies. Starts (or restarts) the keeper if needed.
    pub fn hold(&self, filesystems: &[MountedFs], limit: Duration) -> Result<KeeperHold<'_>, KeeperError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request::Hold { id, limit_ms: limit.as_millis() as u64, filesystems: filesystems.to_vec() };
        let mut conn = self.conn.lock();
        // A keeper that died (killed by hand) is replaced once.
        for attempt in 0..2 {
            if conn.is_none() {
                *conn = Some(self.spawn()?);
            }
            let c = conn.as_mut().expect("started above");
            match c.ask(&request, limit + ANSWER_TIMEOUT) {
                Ok(Response::Held { id: got }) if got == id => {
                    let mount_points = filesystems.iter().map(|f| f.mount_point.clone()).collect();
                    return Ok(KeeperHold { keeper: self, id, mount_points, released: false });
                }
                Ok(Response::Refused { message, timeout: true, .. }) => return Err(KeeperError::FreezeTimeout(message)),
                Ok(Response::Refused { message, .. }) => return Err(KeeperError::Refused(message)),
                Ok(other) => return Err(KeeperError::Talk(io::Error::other(format!("unexpected answer {other:?}")))),
                Err(e) if attempt == 0 && c.child.try_wait().is_ok_and(|s| s.is_some()) => {
                    tracing::warn!(error = %e, "the thaw keeper is gone; starting a new one");
                    *conn = None;
                }
                Err(e) => {
                    // A keeper that does not answer may be frozen in a freeze: dropping the
                    // connection makes it thaw whatever it got to.
                    *conn = None;
                    return Err(KeeperError::Talk(e));
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Thaws hold `id`: how long the filesystems were held and whether the limit passed first.
    fn release(&self, id: u64, mount_points: &[PathBuf]) -> (Duration, bool) {
        let mut conn = self.conn.lock();
        let answer = match conn.as_mut() {
            Some(c) => c.ask(&Request::Release { id }, ANSWER_TIMEOUT + LEFTOVERS_TIMEOUT),
            None => Err(io::Error::other("no keeper")),
        };
        match answer {
            Ok(Response::Released { id: got, held_ms, expired }) if got == id => (Duration::from_millis(held_ms), expired),
            other => {
                // The keeper died with the filesystems frozen (killed by hand): thaw them here,
                // on a thread of their own.
                tracing::error!(?other, "the thaw keeper did not release a hold; thawing its filesystems directly");
                *conn = None;
                let mount_points = mount_points.to_vec();
                let _ = std::thread::Builder::new().name("shadowcopyd-thaw".into()).spawn(move || {
                    for mp in mount_points {
                        if let Ok(dir) = File::open(&mp) {
                            let _ = hold::thaw(&dir);
                        }
                    }
                });
                (Duration::ZERO, true)
            }
        }
    }

    /// Has the keeper thaw whatever is still frozen on a loop device over a file under `mount`
    /// (left so by a worker and keeper that both died mid-hold); the mount points it thawed.
    pub fn thaw_leftovers(&self, mount: &std::path::Path) -> Result<Vec<PathBuf>, KeeperError> {
        let mut conn = self.conn.lock();
        if conn.is_none() {
            *conn = Some(self.spawn()?);
        }
        let c = conn.as_mut().expect("started above");
        match c.ask(&Request::ThawLeftovers { mount: mount.to_path_buf() }, LEFTOVERS_TIMEOUT) {
            Ok(Response::Thawed { mount_points }) => Ok(mount_points),
            Ok(other) => Err(KeeperError::Talk(io::Error::other(format!("unexpected answer {other:?}")))),
            Err(e) => {
                *conn = None;
                Err(KeeperError::Talk(e))
            }
        }
    }
}

/// Filesystems the keeper holds frozen for one set; thawed by [`KeeperHold::release`] or on
/// drop.
pub struct KeeperHold<'a> {
    keeper: &'a ThawKeeper,
    id: u64,
    mount_points: Vec<PathBuf>,
    released: bool,
}

impl KeeperHold<'_> {
    /// Where the held filesystems are mounted.
    pub fn mount_points(&self) -> &[PathBuf] {
        &self.mount_points
    }

    /// Thaws now: how long the filesystems were held, and whether the limit passed first (the
    /// keeper thawed them then).
    pub fn release(mut self) -> (Duration, bool) {
        self.released = true;
        self.keeper.release(self.id, &self.mount_points)
    }
}

impl Drop for KeeperHold<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.keeper.release(self.id, &self.mount_points);
        }
    }
}

impl Conn {
    fn ask(&mut self, request: &Request, timeout: Duration) -> io::Result<Response> {
        let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
        line.push(b'\n');
        self.stream.set_read_timeout(Some(timeout))?;
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

/// What the keeper holds: per hold, the frozen filesystems (thawed when dropped).
type Holds = HashMap<u64, hold::Frozen>;

/// The keeper process's life: serve the worker on standard input until it closes; the limit's
/// watchdog of each hold thaws at the deadline.
pub fn run_keeper() -> io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut stops = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stops.add(s);
    }
    stops.thread_block().map_err(io::Error::from)?;
    let mut stream = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut pending = Vec::new();
    let mut holds = Holds::new();
    loop {
        match read_line(&mut stream, &mut pending) {
            Ok(Some(line)) => {
                let response = match serde_json::from_slice::<Request>(&line) {
                    Ok(Request::Hold { id, limit_ms, filesystems }) => match hold::freeze(&filesystems, Duration::from_millis(limit_ms)) {
                        Ok(frozen) => {
                            holds.insert(id, frozen);
                            Response::Held { id }
                        }
                        Err(e) => Response::Refused { id, timeout: matches!(e, HoldError::FreezeTimeout { .. }), message: e.to_string() },
                    },
                    Ok(Request::Release { id }) => match holds.remove(&id) {
                        Some(frozen) => {
                            let (held, expired) = frozen.release();
                            Response::Released { id, held_ms: held.as_millis() as u64, expired }
                        }
                        None => Response::Refused { id, message: format!("no hold {id}"), timeout: false },
                    },
                    Ok(Request::ThawLeftovers { mount }) => Response::Thawed { mount_points: thaw_leftovers(&mount) },
                    Err(e) => Response::Refused { id: 0, message: format!("not a request: {e}"), timeout: false },
                };
                let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
                out.push(b'\n');
                if stream.write_all(&out).is_err() {
                    thaw_everything(holds, "the daemon went away");
                    return Ok(());
                }
            }
            Ok(None) => {
                thaw_everything(holds, "the daemon went away mid-hold");
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                thaw_everything(holds, "the daemon's socket failed");
                return Err(e);
            }
        }
    }
}

fn thaw_everything(holds: Holds, why: &str) {
    for (_, frozen) in holds {
        if frozen.expired() {
            continue;
        }
        for mount_point in &frozen.mount_points {
            tracing::warn!(mount_point = %mount_point.display(), "thaw keeper: thawed the filesystem because {why}");
        }
        drop(frozen);
    }
}

/// Thaws every still-frozen filesystem on a loop device backed by a file under `mount` (left
/// so by a worker and keeper that both died mid-hold); the mount points it thawed. Must run
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
