//! What passes from the holder to a worker, and from a holder to the holder it execs for an
//! upgrade: which inherited descriptors are what, the worker generation, whether the FUSE
//! handshake was done and which crash route the kernel gets, and why the last restart happened.
//!
//! Carried in one environment variable as JSON; descriptors by number, inherited across exec
//! (their close-on-exec flag cleared in the child only: `shadowcopy::descriptors`). Owns the format and the taking of
//! descriptors; never decides when a worker starts or stops (the holder does).

use std::os::fd::RawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The variable a worker finds its handoff in.
pub const WORKER_ENV: &str = "SHADOWCOPYD_WORKER";
/// The variable a holder exec'd by its predecessor finds the held descriptors in.
pub const HOLDER_ENV: &str = "SHADOWCOPYD_HELD";

/// Why the current worker started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartReason {
    /// The daemon started.
    Start,
    /// The previous worker died (a crash or a kill): how.
    Crash(String),
    /// `shadowcopy daemon restart`: a new binary was exec'd.
    Upgrade,
    /// The holder died and its worker became the holder (the process id of the dead one).
    HolderLost(i32),
}

impl std::fmt::Display for StartReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartReason::Start => f.write_str("start"),
            StartReason::Crash(how) => write!(f, "the previous worker {how}"),
            StartReason::Upgrade => f.write_str("planned restart (daemon restart)"),
            StartReason::HolderLost(pid) => write!(f, "the holder (pid {pid}) died; its worker became the holder"),
        }
    }
}

/// How a worker that replaces a dead one gets the requests the dead one had read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CrashRoute {
    /// `FUSE_NOTIFY_RESEND` (Linux 6.9+): the kernel queues them again; nothing fails.
    Resend,
    /// No resend: the dead worker's clones are closed, which ends just the requests it had read
    /// with an error (ECONNABORTED); every other request waits for the new worker.
    ReplaceClones,
}

/// The descriptors and facts a worker starts with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handoff {
    /// The connection's original `/dev/fuse` descriptor (never read by a worker after the
    /// handshake).
    pub fuse: RawFd,
    /// One clone per serving thread.
    pub clones: Vec<RawFd>,
    /// The control socket's listening descriptor.
    pub control: RawFd,
    /// The node ledger (see [`crate::ledger`]).
    pub ledger: RawFd,
    /// Where the worker tells the holder how it is doing (worker only; -1 for a holder).
    pub status: RawFd,
    /// 1 for the first worker, one more for each replacement.
    pub generation: u64,
    /// Whether the FUSE handshake was done (by an earlier worker).
    pub initialized: bool,
    /// The crash route, once the first worker found out.
    pub route: Option<CrashRoute>,
    /// Why this worker started.
    pub reason: StartReason,
    /// When the holder started it, seconds since the Unix epoch.
    pub started_unix: f64,
    /// When the daemon (its first holder) started, seconds since the Unix epoch.
    pub daemon_started_unix: f64,
    /// The program to exec for a worker or an upgraded holder (the path it was started from,
    /// so a package upgrade that replaced the file is picked up).
    pub program: PathBuf,
    /// The holder's process id.
    pub holder_pid: u32,
    /// Where the daemon's state, mount and socket are, as its first holder resolved them
    /// (flags, then the configuration file): a configuration edited since applies at the next
    /// start, never under a running mount. `None` from a holder older than this field.
    #[serde(default)]
    pub paths: Option<DaemonPaths>,
    /// Whether the service manager passed the control socket (socket activation).
    #[serde(default)]
    pub socket_activated: bool,
}

/// Where a daemon keeps its state, mounts and listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonPaths {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The mount point.
    pub mount: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
}

impl Handoff {
    /// As the environment variable's value.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// From `var`, if it is set. An unreadable value is an error (not a fresh start: that would
    /// mount a second time over a live connection).
    pub fn from_env(var: &str) -> Result<Option<Handoff>, String> {
        match std::env::var(var) {
            Ok(v) => serde_json::from_str(&v).map(Some).map_err(|e| format!("{var} is not a handoff ({e})")),
            Err(_) => Ok(None),
        }
    }

    /// Every descriptor it names.
    pub fn descriptors(&self) -> Vec<RawFd> {
        let mut all = vec![self.fuse, self.control, self.ledger];
        all.extend(&self.clones);
        if self.status >= 0 {
            all.push(self.status);
        }
        all
    }
}

/// Now, in seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
