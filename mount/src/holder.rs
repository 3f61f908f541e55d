//! The holder: the small process that keeps the FUSE connection and the control socket while
//! workers come and go, so that no worker's death or upgrade takes the disk away.
//!
//! It keeps the connection's original `/dev/fuse` descriptor, one clone per serving thread, the
//! control socket's listening descriptor and the node ledger, and runs one worker at a time
//! (`shadowcopyd` again, told by [`crate::handoff`]) that does everything else. When the worker:
//! - exits 0 (it decided to stop): unmounts and exits 0;
//! - exits [`RESTART_EXIT`] (`shadowcopy daemon restart`; the worker drained first, so it held
//!   no request): execs the program file again, which may be a newer version, keeping every
//!   descriptor; the new holder starts the next worker;
//! - dies any other way: starts the next worker with the same connection. On the resend route
//!   the new worker asks the kernel to queue again what the dead one had read; on the other,
//!   the dead worker's clones are closed first (ending just its requests with an error) and
//!   new ones made.
//!
//! SIGTERM and SIGINT go to the worker (it decides whether stopping is safe); SIGHUP is
//! ignored. It never reads a request, opens a volume or parses the control protocol.

use std::io::BufRead;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::handoff::{self, CrashRoute, Handoff, StartReason};

/// The worker's exit status that asks for a planned restart (EX_TEMPFAIL).
pub const RESTART_EXIT: i32 = 75;

/// What a worker tells its holder, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerNews {
    /// The FUSE handshake is done; the kernel's crash route.
    Initialized {
        /// How a replacement gets the requests a dead worker had read.
        route: CrashRoute,
    },
    /// Serving every volume, the mount and the socket.
    Ready,
}

/// The connection and everything else the holder keeps.
pub struct Held {
    /// The original `/dev/fuse` descriptor.
    pub fuse: OwnedFd,
    /// One clone per serving thread.
    pub clones: Vec<OwnedFd>,
    /// The control socket's listening descriptor.
    pub control: OwnedFd,
    /// The node ledger.
    pub ledger: OwnedFd,
    /// The mount point.
    pub mount: PathBuf,
    /// The control socket's path (removed at the end).
    pub socket: PathBuf,
    /// The mount, when this process made it (else it is unmounted by path).
    pub handle: Option<fuser::MountHandle>,
    /// The last worker's generation (0 before the first).
    pub generation: u64,
    /// Whether the handshake was done.
    pub initialized: bool,
    /// The crash route, once known.
    pub route: Option<CrashRoute>,
    /// Why the next worker starts.
    pub reason: StartReason,
    /// When the daemon started.
    pub daemon_started_unix: f64,
    /// The program file (exec'd for workers and upgrades).
    pub program: PathBuf,
    /// The state directory (passed to workers with the mount and the socket).
    pub state_dir: PathBuf,
    /// Whether the service manager passed the control socket (then its path is the manager's:
    /// left in place at the end).
    pub socket_activated: bool,
}

impl Held {
    /// A holder's descriptors as its exec'd successor finds them.
    /// `fallback` gives the paths when the previous holder did not pass them.
    pub fn adopt(h: Handoff, fallback: crate::handoff::DaemonPaths) -> std::io::Result<Held> {
        let take = shadowcopy::descriptors::take_inherited;
        let crate::handoff::DaemonPaths { state_dir, mount, socket } = h.paths.clone().unwrap_or(fallback);
        Ok(Held {
            fuse: take(h.fuse)?,
            clones: h.clones.iter().map(|&fd| take(fd)).collect::<Result<_, _>>()?,
            control: take(h.control)?,
            ledger: take(h.ledger)?,
            mount,
            socket,
            handle: None,
            generation: h.generation,
            initialized: h.initialized,
            route: h.route,
            reason: h.reason,
            daemon_started_unix: h.daemon_started_unix,
            program: h.program,
            state_dir,
            socket_activated: h.socket_activated,
        })
    }

    fn handoff(&self, status: i32, started_unix: f64) -> Handoff {
        Handoff {
            fuse: self.fuse.as_raw_fd(),
            clones: self.clones.iter().map(|c| c.as_raw_fd()).collect(),
            control: self.control.as_raw_fd(),
            ledger: self.ledger.as_raw_fd(),
            status,
            generation: self.generation,
            initialized: self.initialized,
            route: self.route,
            reason: self.reason.clone(),
            started_unix,
            daemon_started_unix: self.daemon_started_unix,
            program: self.program.clone(),
            holder_pid: std::process::id(),
            socket_activated: self.socket_activated,
            paths: Some(crate::handoff::DaemonPaths {
                state_dir: self.state_dir.clone(),
                mount: self.mount.clone(),
                socket: self.socket.clone(),
            }),
        }
    }

    /// Removes the control socket's path, unless the service manager owns it.
    fn remove_socket(&self) {
        if !self.socket_activated {
            let _ = std::fs::remove_file(&self.socket);
        }
    }

    fn unmount(&mut self) {
        let done = match self.handle.take() {
            Some(h) => h.umount().map_err(|e| e.to_string()),
            None => nix::mount::umount(&self.mount).map_err(|e| e.to_string()),
        };
        if let Err(e) = done {
            tracing::warn!(mount = %self.mount.display(), error = %e, "unmounting failed; detaching the mount lazily");
            if nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH).is_err() {
                // Not root: fusermount does it.
                let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mount).status();
            }
        }
    }
}

/// How the last worker ended, in words, and whether it asked for a restart or a stop.
enum Ended {
    Stopped,
    Restart,
    Died(String),
}

fn ended(status: std::process::ExitStatus) -> Ended {
    match (status.code(), status.signal()) {
        (Some(0), _) => Ended::Stopped,
        (Some(RESTART_EXIT), _) => Ended::Restart,
        (Some(code), _) => Ended::Died(format!("exited with status {code}")),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {sig}"));
            Ended::Died(format!("was killed by {name}"))
        }
        (None, None) => Ended::Died("ended".into()),
    }
}

/// Runs workers until one stops the daemon; the process's exit status.
pub fn run(mut held: Held, worker_args: Vec<std::ffi::OsString>) -> i32 {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        tracing::error!(error = %e, "cannot block signals in the holder");
        return 1;
    }
    let mut quick_deaths = 0u32;
    let mut program = held.program.clone();
    loop {
        held.generation += 1;
        let started = Instant::now();
        let (mut child, news) = match spawn(&held, &program, &worker_args) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(program = %program.display(), error = %e, "cannot start a worker");
                if !held.initialized {
                    held.unmount();
                    return 1;
                }
                quick_deaths += 1;
                std::thread::sleep(backoff(quick_deaths));
                // The file may be gone or broken (a half-done upgrade): this program's own
                // image still runs.
                program = PathBuf::from("/proc/self/exe");
                continue;
            }
        };
        tracing::info!(generation = held.generation, pid = child.id(), reason = %held.reason, "worker started");
        let status = wait_worker(&mut child, &signals);
        // Everything the worker said before it ended.
        let mut served = false;
        if let Ok(news) = news.join() {
            let news = news.lock();
            if let Some(route) = news.route {
                held.initialized = true;
                held.route = Some(route);
            }
            served = news.ready;
        }
        match ended(status) {
            Ended::Stopped => {
                tracing::info!("the worker stopped the daemon: unmounting");
                held.unmount();
                held.remove_socket();
                return 0;
            }
            Ended::Restart => {
                tracing::info!(program = %held.program.display(), "planned restart: executing the program again");
                let err = exec_successor(&held);
                tracing::error!(error = %err, "cannot execute the program again; starting a worker of this version instead");
                program = PathBuf::from("/proc/self/exe");
                held.reason = StartReason::Upgrade;
            }
            Ended::Died(how) => {
                if !held.initialized {
                    tracing::error!("the first worker {how} before the FUSE handshake: the daemon did not start");
                    held.unmount();
                    held.remove_socket();
                    return 1;
                }
                tracing::warn!(generation = held.generation, "the worker {how}; starting another on the same connection");
                if held.route == Some(CrashRoute::ReplaceClones) {
                    replace_clones(&mut held);
                }
                // A worker that dies before serving, again and again (a bad state directory, a
                // broken upgrade), is restarted ever more slowly; one killed while serving at once.
                quick_deaths = if served || started.elapsed() > Duration::from_secs(30) { 0 } else { quick_deaths + 1 };
                if quick_deaths > 2 {
                    std::thread::sleep(backoff(quick_deaths));
                }
                held.reason = StartReason::Crash(how);
            }
        }
    }
}

/// Waits between restarts of a worker that keeps dying at once: 0.2 s, doubling, at most 5 s.
fn backoff(quick_deaths: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << quick_deaths.min(5))).min(Duration::from_secs(5))
}

/// Closes the dead worker's clones (the requests it had read end with ECONNABORTED, instead of
/// waiting forever on a kernel that cannot resend them) and makes new ones.
fn replace_clones(held: &mut Held) {
    let n = held.clones.len();
    held.clones.clear();
    for _ in 0..n {
        match fuser::clone_device(held.fuse.as_fd()) {
            Ok(c) => held.clones.push(c),
            Err(e) => tracing::error!(error = %e, "cloning the FUSE descriptor failed"),
        }
    }
}

#[derive(Default)]
struct News {
    route: Option<CrashRoute>,
    /// The worker said it was serving: its death is not a start-up failure.
    ready: bool,
}

fn spawn(
    held: &Held,
    program: &PathBuf,
    args: &[std::ffi::OsString],
) -> std::io::Result<(Child, std::thread::JoinHandle<Arc<Mutex<News>>>)> {
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let handoff = held.handoff(status_w.as_raw_fd(), handoff::now_unix());
    let fds = handoff.descriptors();
    let mut cmd = Command::new(program);
    cmd.args(args).env(handoff::WORKER_ENV, handoff.encode()).env_remove(handoff::HOLDER_ENV);
    let child = shadowcopy::descriptors::spawn_keeping(&mut cmd, &fds)?;
    drop(status_w);
    let news = Arc::new(Mutex::new(News::default()));
    let shared = Arc::clone(&news);
    let reader = std::thread::Builder::new().name("holder-news".into()).spawn(move || {
        let lines = std::io::BufReader::new(std::fs::File::from(status_r)).lines();
        for line in lines.map_while(Result::ok) {
            match serde_json::from_str::<WorkerNews>(&line) {
                Ok(WorkerNews::Initialized { route }) => {
                    tracing::info!(?route, "{}", route_words(route));
                    shared.lock().route = Some(route);
                }
                Ok(WorkerNews::Ready) => {
                    tracing::debug!("the worker is serving");
                    shared.lock().ready = true;
                }
                Err(e) => tracing::warn!(error = %e, %line, "the worker said something the holder does not understand"),
            }
        }
        shared
    })?;
    Ok((child, reader))
}

/// What a worker crash costs on this route, said once at start.
pub fn route_words(route: CrashRoute) -> &'static str {
    match route {
        CrashRoute::Resend => {
            "this kernel resends requests (FUSE_NOTIFY_RESEND): a worker crash delays I/O until the next worker is up; nothing fails"
        }
        CrashRoute::ReplaceClones => {
            "this kernel cannot resend requests (before Linux 6.9, or --no-resend): a worker crash fails the requests it was answering (ECONNABORTED, I/O errors in a loop device on live); every other request waits for the next worker"
        }
    }
}

/// Waits for the worker to end, forwarding stop signals to it.
fn wait_worker(child: &mut Child, signals: &SigSet) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        match signals.wait() {
            Ok(Signal::SIGHUP) => tracing::info!("SIGHUP ignored"),
            Ok(sig @ (Signal::SIGTERM | Signal::SIGINT)) => {
                let _ = nix::sys::signal::kill(pid, sig);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "waiting for signals failed; waiting for the worker only");
                return child.wait().unwrap_or_else(|_| std::process::ExitStatus::from_raw(1 << 8));
            }
        }
    }
}

/// Executes the program again with every held descriptor; returns only on failure.
fn exec_successor(held: &Held) -> std::io::Error {
    let mut h = held.handoff(-1, handoff::now_unix());
    h.reason = StartReason::Upgrade;
    let fds = h.descriptors();
    let mut cmd = Command::new(&held.program);
    cmd.args(std::env::args_os().skip(1)).env(handoff::HOLDER_ENV, h.encode()).env_remove(handoff::WORKER_ENV);
    shadowcopy::descriptors::exec_keeping(&mut cmd, &fds)
}
