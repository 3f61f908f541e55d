//! When the daemon stops: the stop signals, `shadowcopy daemon stop`, and the rule that a stop
//! never pulls the disk from under a filesystem.
//!
//! Owns the main thread's wait. SIGHUP never stops the daemon (a closed SSH session sends it).
//! SIGTERM and SIGINT stop it only when no `live` file is open; otherwise the daemon says which
//! volumes are in use and by what (loop device, mount point, process) and keeps serving, or,
//! with `--stop-when-unused`, stops by itself once the last user is gone. `daemon stop --force`
//! is the only way to stop under a user. A refused stop still flushes every volume, since a
//! SIGKILL may follow it (a service manager's stop timeout).
//!
//! Never unmounts or flushes anything itself: it only decides when `main` may.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::service::Service;

/// Something that asks the daemon to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// A signal arrived (SIGTERM, SIGINT or SIGHUP).
    Signal(Signal),
    /// `shadowcopy daemon stop`; the service already checked `live` unless `force`.
    Asked {
        /// Stop even while `live` files are open.
        force: bool,
    },
    /// `shadowcopy daemon restart`: hand over to a new worker, unmounting nothing.
    Restart,
    /// The holder died (this process was re-parented): the worker hands over and becomes the
    /// holder itself, so that the next crash is survived again.
    HolderGone {
        /// The dead holder's process id.
        pid: i32,
    },
}

/// How a stop signal is treated while `live` files are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenInUse {
    /// Keep serving; the admin decides (`daemon stop --force`, or SIGTERM again once unused).
    KeepServing,
    /// Keep serving, and stop by itself once nothing uses `live` any more.
    StopWhenUnused,
}

/// Why the daemon stops (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A signal, with nothing using `live`.
    Signal(Signal),
    /// `daemon stop`.
    Asked {
        /// Whether `live` files may still be open.
        force: bool,
    },
    /// The last user of `live` went away after a stop signal (`--stop-when-unused`).
    Unused,
    /// `daemon restart`: not a stop; the worker hands over.
    Restart,
    /// The holder died: not a stop; the worker hands over and execs itself as the holder.
    HolderGone {
        /// The dead holder's process id.
        pid: i32,
    },
}

/// Watches the holder: once this process is re-parented (the holder died; its worker lives
/// on holding the connection alone), asks `main` to hand over and become the holder.
pub fn watch_holder(tx: mpsc::Sender<StopRequest>) -> std::io::Result<()> {
    let holder = nix::unistd::getppid();
    std::thread::Builder::new().name("holder-watch".into()).spawn(move || loop {
        std::thread::sleep(HOLDER_POLL);
        if nix::unistd::getppid() != holder {
            tracing::error!(holder = holder.as_raw(), "the holder died; this worker hands over and becomes the holder");
            let _ = tx.send(StopRequest::HolderGone { pid: holder.as_raw() });
            return;
        }
    })?;
    Ok(())
}

/// How often the worker checks that its holder is alive.
const HOLDER_POLL: Duration = Duration::from_millis(200);

/// How long a stop signal waits for `live` files closing right then (a `losetup -d` just
/// before the signal: the kernel sends the release a moment later).
const CLOSING_GRACE: Duration = Duration::from_secs(2);

/// How often a pending `--stop-when-unused` stop looks again.
const UNUSED_POLL: Duration = Duration::from_millis(500);

/// Forwards the stop signals (blocked in every thread by `main`) into `tx`.
pub fn forward_signals(signals: SigSet, tx: mpsc::Sender<StopRequest>) -> std::io::Result<()> {
    std::thread::Builder::new().name("shadowcopyd-signals".into()).spawn(move || loop {
        match signals.wait() {
            Ok(sig) => {
                if tx.send(StopRequest::Signal(sig)).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "waiting for signals failed; stop the daemon with `shadowcopy daemon stop`");
                return;
            }
        }
    })?;
    Ok(())
}

/// Waits until the daemon may stop, and says why.
/// With `unmount_at_stop`, a stop signal first undoes the configured attachments (in reverse
/// order; retried while waiting for `live` to be unused).
pub fn wait_for_stop(
    service: &Service,
    requests: &mpsc::Receiver<StopRequest>,
    when_in_use: WhenInUse,
    unmount_at_stop: bool,
) -> StopReason {
    let mut pending = false;
    loop {
        let next = if pending { requests.recv_timeout(UNUSED_POLL) } else { requests.recv().map_err(|_| RecvTimeoutError::Disconnected) };
        match next {
            Ok(StopRequest::Signal(Signal::SIGHUP)) => {
                tracing::info!("SIGHUP ignored: shadowcopyd keeps running (stop it with SIGTERM or `shadowcopy daemon stop`)");
            }
            Ok(StopRequest::Signal(sig)) => {
                if unmount_at_stop {
                    if let Err(e) = service.detach_configured() {
                        tracing::warn!(signal = ?sig, "unmounting what the configuration mounted failed: {e}");
                    }
                }
                let in_use = in_use_after_grace(service);
                if in_use.is_empty() {
                    return StopReason::Signal(sig);
                }
                // Whoever sent the signal may follow it with SIGKILL (a service manager's stop
                // timeout): make every acknowledged write durable now, so that loses nothing.
                service.flush_all();
                tell_service_manager(Notice::Status(&format!("serving; a stop was refused: {in_use}")));
                match when_in_use {
                    WhenInUse::KeepServing => tracing::warn!(
                        signal = ?sig,
                        "not stopping: {in_use}. Unmount and detach them (umount, losetup -d) and send the signal again, or stop anyway with `shadowcopy daemon stop --force` (their filesystems then fail)"
                    ),
                    WhenInUse::StopWhenUnused => {
                        tracing::warn!(signal = ?sig, "stopping once nothing uses live any more: {in_use}");
                        pending = true;
                    }
                }
            }
            Ok(StopRequest::Asked { force }) => return StopReason::Asked { force },
            Ok(StopRequest::Restart) => return StopReason::Restart,
            Ok(StopRequest::HolderGone { pid }) => return StopReason::HolderGone { pid },
            Err(RecvTimeoutError::Timeout) => {
                if unmount_at_stop {
                    if let Err(e) = service.detach_configured() {
                        tracing::debug!("unmounting what the configuration mounted still fails: {e}");
                    }
                }
                if service.live_in_use(false).is_empty() {
                    return StopReason::Unused;
                }
            }
            // Nobody can ask any more (cannot happen while `main` holds a sender): stop.
            Err(RecvTimeoutError::Disconnected) => return StopReason::Asked { force: false },
        }
    }
}

/// The `live` files still in use once any close in flight has arrived, described.
fn in_use_after_grace(service: &Service) -> String {
    let deadline = Instant::now() + CLOSING_GRACE;
    while !service.live_in_use(false).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::service::describe_in_use(&service.live_in_use(true))
}

/// What the service manager is told (systemd's `Type=notify`: `READY=1` once every volume is
/// served, `STATUS=` lines, `STOPPING=1`). Nothing without `NOTIFY_SOCKET`; a failure to tell is
/// logged, never fatal.
pub enum Notice<'a> {
    /// Serving: the mount, the control socket and every volume that could be opened.
    Ready(&'a str),
    /// What the daemon is doing, in words (`systemctl status` shows it).
    Status(&'a str),
    /// Stopping: flushing, unmounting.
    Stopping,
}

/// Tells the service manager, if there is one.
pub fn tell_service_manager(n: Notice<'_>) {
    use sd_notify::NotifyState;
    let states: Vec<NotifyState<'_>> = match &n {
        Notice::Ready(status) => vec![NotifyState::Ready, NotifyState::Status(status)],
        Notice::Status(status) => vec![NotifyState::Status(status)],
        Notice::Stopping => vec![NotifyState::Stopping, NotifyState::Status("stopping: flushing every volume and unmounting")],
    };
    if let Err(e) = sd_notify::notify(false, &states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
