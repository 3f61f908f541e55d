//! The control socket: accepts connections, frames lines, checks who is asking, and hands each
//! request to the [`Service`].
//!
//! Access: anyone who can connect may read (the socket's mode and group decide who can connect);
//! requests that change state need root or membership in the admin group (checked with the
//! peer's credentials, `SO_PEERCRED`, and its supplementary groups). A malformed, oversized or
//! unauthorised request gets an error reply; the connection and the daemon carry on. A line
//! longer than the limit closes the connection after the reply (its end cannot be found safely).
//!
//! Limits, so that no client can lock others out: connections that are neither root's nor the
//! admin group's share [`SHARED_SLOTS`], at most [`SLOTS_PER_USER`] per user; root and the admin
//! group may also take [`ADMIN_SLOTS`] more that nobody else can. A connection that sends nothing
//! for [`IDLE_TIMEOUT`] is closed, unless it is a registered writer (which waits for events) or
//! owns sets that live as long as it does. A refused connection gets a `busy` reply that says
//! why.
//!
//! Never interprets an operation itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shadowcopy::protocol::{ErrorKind, Op, Reply, Request, MAX_MESSAGE, VERSION};

use crate::service::Service;

/// Connections of users who are not admins, together.
pub const SHARED_SLOTS: usize = 48;
/// Connections of one user who is not an admin.
pub const SLOTS_PER_USER: usize = 16;
/// Connections only root and the admin group may take (besides the shared ones).
pub const ADMIN_SLOTS: usize = 16;
/// How long a connection may wait between requests (writers and set owners excepted).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Who holds which connection slots.
#[derive(Default)]
struct Slots {
    /// Shared slots in use, per user.
    shared_by_user: std::collections::HashMap<u32, usize>,
    shared: usize,
    admin_only: usize,
}

/// Which pool a connection's slot came from.
#[derive(Clone, Copy)]
enum Slot {
    Shared(u32),
    AdminOnly,
}

impl Slots {
    /// A slot for a connection of `uid`, or why there is none.
    fn take(&mut self, uid: u32, admin: bool) -> Result<Slot, String> {
        let mine = self.shared_by_user.get(&uid).copied().unwrap_or(0);
        if self.shared < SHARED_SLOTS && (admin || mine < SLOTS_PER_USER) {
            self.shared += 1;
            *self.shared_by_user.entry(uid).or_default() += 1;
            return Ok(Slot::Shared(uid));
        }
        if admin && self.admin_only < ADMIN_SLOTS {
            self.admin_only += 1;
            return Ok(Slot::AdminOnly);
        }
        Err(if admin {
            format!("shadowcopyd is busy: all {} connections are in use; try again", SHARED_SLOTS + ADMIN_SLOTS)
        } else if mine >= SLOTS_PER_USER {
            format!("shadowcopyd is busy: user {uid} already has {SLOTS_PER_USER} connections open; close some and try again")
        } else {
            format!("shadowcopyd is busy: all {SHARED_SLOTS} connections for users outside the admin group are in use; try again")
        })
    }

    fn give_back(&mut self, slot: Slot) {
        match slot {
            Slot::Shared(uid) => {
                self.shared -= 1;
                if let Some(n) = self.shared_by_user.get_mut(&uid) {
                    *n -= 1;
                    if *n == 0 {
                        self.shared_by_user.remove(&uid);
                    }
                }
            }
            Slot::AdminOnly => self.admin_only -= 1,
        }
    }
}

/// Who may change state besides root.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// Members of this group may change state (besides root).
    pub admin_gid: Option<u32>,
}

/// Binds the socket (replacing a stale one), with mode 0660 and the given group.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("a daemon already answers on {}; stop it or choose another --socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    Ok(listener)
}

/// The listening socket the service manager passed (systemd's socket activation: `LISTEN_PID`
/// is this process, `LISTEN_FDS` ≥ 1, the socket is descriptor 3), if it passed one. The
/// variables are removed so that nothing this process starts takes them for its own.
pub fn inherited_from_service_manager() -> Result<Option<UnixListener>> {
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if !for_us || count == 0 {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!(count, "the service manager passed more than one socket; the control socket is the first, the others are ignored");
    }
    const FIRST: std::os::fd::RawFd = 3;
    let fd = shadowcopy::descriptors::take_inherited(FIRST).context("taking the socket the service manager passed")?;
    let listening = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false);
    let unix = nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(std::os::fd::AsRawFd::as_raw_fd(&fd)).is_ok();
    if !listening || !unix {
        bail!("the socket the service manager passed is not a listening Unix stream socket (ListenStream= a path in shadowcopyd.socket)");
    }
    Ok(Some(UnixListener::from(fd)))
}

/// Serves connections until the listener is shut down.
pub fn serve(listener: UnixListener, service: Arc<Service>, access: Access) {
    let slots = Arc::new(parking_lot::Mutex::new(Slots::default()));
    loop {
        // A worker handing over stops accepting: new connections wait in the socket's queue for
        // the next worker.
        if service.is_quiesced() {
            return;
        }
        if !readable_within(&listener, Duration::from_millis(100)) {
            continue;
        }
        let stream = match listener.accept().map(|(s, _)| s) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a control connection failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Ok(cred) = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) else {
            continue;
        };
        let admin = is_admin(&stream, access);
        let slot = match slots.lock().take(cred.uid(), admin) {
            Ok(s) => s,
            Err(why) => {
                tracing::warn!(uid = cred.uid(), pid = cred.pid(), "control connection refused: {why}");
                let _ = write_reply(&stream, &Reply::error(ErrorKind::Busy, why));
                continue;
            }
        };
        let svc = Arc::clone(&service);
        let slots2 = Arc::clone(&slots);
        let spawned = std::thread::Builder::new().name("shadowcopyd-conn".into()).spawn(move || {
            if let Err(e) = connection(stream, &svc, admin) {
                tracing::debug!(error = %e, "control connection ended");
            }
            slots2.lock().give_back(slot);
        });
        if let Err(e) = spawned {
            slots.lock().give_back(slot);
            tracing::error!(error = %e, "cannot start a thread for a control connection");
        }
    }
}

/// Whether a connection waits on `listener` within `limit`.
fn readable_within(listener: &UnixListener, limit: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::NONE);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

fn write_reply(mut s: &UnixStream, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)
}

/// Writes `r` on the connection; on a writer's connection through the writer's framing lock
/// (its events go out on the same stream from other threads).
fn reply_on(as_writer: Option<&shadowcopy::coordinator::WriterConn>, s: &UnixStream, r: &Reply) -> std::io::Result<()> {
    match as_writer {
        Some(w) => w.write_reply(r),
        None => write_reply(s, r),
    }
}

/// Whether the peer is root or in the admin group.
fn is_admin(stream: &UnixStream, access: Access) -> bool {
    let Ok(cred) = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials) else { return false };
    if cred.uid() == 0 {
        return true;
    }
    let Some(admin) = access.admin_gid else { return false };
    if cred.gid() == admin {
        return true;
    }
    // Supplementary groups of the peer process.
    let status = std::fs::read_to_string(format!("/proc/{}/status", cred.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse::<u32>().ok() == Some(admin)))
}

/// What a connection leaves behind when it ends, however it ends: a writer is marked
/// disconnected, and the sets it created as a requester learn it is gone (auto-release sets are
/// released, backup sessions may end).
struct ConnectionEnd<'a> {
    service: &'a Service,
    as_writer: Option<Arc<shadowcopy::coordinator::WriterConn>>,
    sets: Vec<uuid::Uuid>,
}

impl Drop for ConnectionEnd<'_> {
    fn drop(&mut self) {
        if let Some(w) = &self.as_writer {
            w.disconnected();
        }
        self.service.requester_gone(&self.sets);
    }
}

fn connection(stream: UnixStream, service: &Service, admin: bool) -> std::io::Result<()> {
    let writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut end = ConnectionEnd { service, as_writer: None, sets: Vec::new() };
    loop {
        // Idle connections are closed; writers wait for events and set owners keep their sets.
        let idle_limit = if end.as_writer.is_none() && end.sets.is_empty() { Some(IDLE_TIMEOUT) } else { None };
        reader.get_ref().set_read_timeout(idle_limit)?;
        let mut line = Vec::new();
        let n = match Read::take(&mut reader, MAX_MESSAGE as u64 + 1).read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                let _ = write_reply(&writer, &Reply::error(ErrorKind::Busy, format!("closed after {IDLE_TIMEOUT:?} without a request")));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        let as_writer = &end.as_writer;
        if line.len() > MAX_MESSAGE || (line.last() != Some(&b'\n') && n as u64 > MAX_MESSAGE as u64) {
            write_reply(&writer, &Reply::error(ErrorKind::BadRequest, format!("request longer than {MAX_MESSAGE} bytes")))?;
            return Ok(());
        }
        let reply = match serde_json::from_slice::<Request>(&line) {
            Err(e) => Reply::error(ErrorKind::BadRequest, format!("not a valid request: {e} (see docs/protocol.md)")),
            Ok(req) if req.v != VERSION => Reply::error(
                ErrorKind::Version,
                format!("protocol version {} is not this daemon's ({VERSION}); use a matching shadowcopy CLI", req.v),
            ),
            Ok(req) if req.op.changes_state() && !admin => Reply::error(
                ErrorKind::PermissionDenied,
                "this request changes state: run it as root or as a member of the daemon's admin group",
            ),
            Ok(Request { op: Op::WriterAnswer { seq, outcome }, .. }) => {
                match &as_writer {
                    // Answers get no reply: the writer's next line from us is its next event.
                    Some(w) => {
                        w.answer(seq, outcome);
                        continue;
                    }
                    None => Reply::error(ErrorKind::BadRequest, "an answer on a connection that did not register as a writer"),
                }
            }
            Ok(Request { op: Op::WriterRegister(reg), .. }) => {
                if as_writer.is_some() {
                    Reply::error(ErrorKind::BadRequest, "this connection is already a registered writer")
                } else if reg.name.is_empty() || reg.name.len() > 128 {
                    Reply::error(ErrorKind::BadRequest, "a writer needs a name of 1-128 characters")
                } else if service.writers.name_taken(&reg) {
                    Reply::error(
                        ErrorKind::AlreadyExists,
                        format!("a writer named `{}` is connected already; stop it, or give this one another name", reg.name),
                    )
                } else if let Some(v) = reg.components.iter().flat_map(|c| &c.volumes).find(|v| service.volume(v).is_none()) {
                    Reply::error(
                        ErrorKind::NotFound,
                        format!("writer `{}` names volume `{v}`, which is not registered (see `shadowcopy volume list`)", reg.name),
                    )
                } else {
                    let name = reg.name.clone();
                    // Replies and events share the connection: register, then answer.
                    write_reply(&writer, &Reply::Ok(shadowcopy::protocol::Answer::Done(format!("writer `{name}` registered"))))?;
                    let events = writer.try_clone()?;
                    // A writer that stops reading must not block an event forever.
                    events.set_write_timeout(Some(shadowcopy::coordinator::EVENT_TIMEOUT))?;
                    end.as_writer = Some(service.writers.register(reg, events));
                    continue;
                }
            }
            Ok(Request { op: Op::Events { after, limit, follow: true }, .. }) => {
                // The connection is the follower's from now on, until it goes away.
                return follow_events(service, &writer, after, limit.unwrap_or(100));
            }
            Ok(req) => {
                tracing::debug!(op = ?req.op, "control request");
                let send = |r: &Reply| {
                    let _ = reply_on(as_writer.as_deref(), &writer, r);
                };
                // At most one progress line per percent (the engine reports every chunk).
                let mut last = u64::MAX;
                let reply = service.handle(
                    req.op,
                    &mut |done, total| {
                        let pct = done.saturating_mul(100) / total.max(1);
                        if pct != last {
                            last = pct;
                            send(&Reply::Progress { done, total });
                        }
                    },
                    &mut |message| send(&Reply::Stage { message: message.to_string() }),
                    &mut |message| send(&Reply::Notice { message: message.to_string() }),
                    &|| still_connected(&writer),
                );
                if let Reply::Ok(shadowcopy::protocol::Answer::Set(set)) = &reply {
                    end.sets.push(set.set_id);
                }
                reply
            }
        };
        reply_on(end.as_writer.as_deref(), &writer, &reply)?;
    }
}

/// `events --follow`: the backlog, then each event as it happens, until the client is gone.
fn follow_events(service: &Service, stream: &UnixStream, after: Option<u64>, limit: usize) -> std::io::Result<()> {
    let backlog = service.events.since(after, limit);
    let mut last = backlog.last().map_or(after.unwrap_or_else(|| service.events.last_seq()), |e| e.seq);
    for e in backlog {
        write_reply(stream, &Reply::Record(e))?;
    }
    while still_connected(stream) {
        for e in service.events.wait_after(last, Duration::from_secs(1)) {
            last = e.seq;
            write_reply(stream, &Reply::Record(e))?;
        }
    }
    Ok(())
}

/// Whether the client on `stream` is still there (it has not closed its end), without blocking:
/// a non-blocking peek reads 0 bytes only once the peer is gone.
fn still_connected(stream: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    match recv(stream.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => false,
        Ok(_) => true,
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => true,
        Err(_) => false,
    }
}

/// The default socket path for this user (see [`shadowcopy::protocol::default_socket_path`]).
pub fn default_socket() -> PathBuf {
    shadowcopy::protocol::default_socket_path()
}
