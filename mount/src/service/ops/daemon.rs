//! `daemon stop`, and who uses each volume's `live` file (what a stop would pull the disk from).

use shadowcopy::probe::{self, FileUsers};
use shadowcopy::protocol::Answer;

use super::super::{OpResult, Service, ServiceError};
use crate::lifecycle::StopRequest;

impl Service {
    /// Every volume whose `live` file is open, with who holds it (as far as this namespace
    /// shows: loop devices and their mounts, and with `processes` the processes too).
    pub fn live_in_use(&self, processes: bool) -> Vec<(String, FileUsers)> {
        self.volumes()
            .iter()
            .filter(|v| v.live_opens() > 0)
            .map(|v| (v.name.clone(), probe::users_of(&self.live_path(v), processes).unwrap_or_default()))
            .collect()
    }

    pub(in crate::service) fn daemon_stop(&self, force: bool, unmount: bool) -> OpResult {
        if unmount {
            self.detach_configured()?;
        }
        if !force {
            let in_use = self.live_in_use(true);
            if !in_use.is_empty() {
                return Err(ServiceError::InUseAtStop(describe_in_use(&in_use)));
            }
        }
        let sent = self.stop_requests.get().is_some_and(|tx| tx.lock().send(StopRequest::Asked { force }).is_ok());
        if !sent {
            return Err(ServiceError::Failed("this daemon takes no stop requests (it is stopping already)".into()));
        }
        Ok(Answer::Done(if force { "stopping (forced)".into() } else { "stopping".into() }))
    }
}

impl Service {
    pub(in crate::service) fn daemon_restart(&self) -> OpResult {
        let Some(w) = self.worker.get() else {
            return Err(ServiceError::Failed("this daemon runs without a holder: it cannot restart in place; stop and start it".into()));
        };
        let sent = self.stop_requests.get().is_some_and(|tx| tx.lock().send(StopRequest::Restart).is_ok());
        if !sent {
            return Err(ServiceError::Failed("this daemon takes no restart requests (it is stopping already)".into()));
        }
        Ok(Answer::Done(format!(
            "restarting worker {} in place: the mount and the socket stay; requests wait meanwhile",
            w.status.generation
        )))
    }

    /// Waits for the state-changing operations and timer runs in progress, then refuses new
    /// ones (`restarting`: the client retries on the next worker). For a worker about to exit
    /// for a restart or a stop; reads go on being answered.
    pub fn quiesce(&self) {
        *self.quiesced.write() = true;
    }

    /// Whether [`Service::quiesce`] was called: the control server stops accepting.
    pub fn is_quiesced(&self) -> bool {
        *self.quiesced.read_recursive()
    }

    /// Runs `f` unless the service quiesced, holding it off meanwhile (for timer work).
    pub(in crate::service) fn unless_quiesced(&self, f: impl FnOnce()) {
        let gate = self.quiesced.read_recursive();
        if !*gate {
            f();
        }
    }
}

/// `volume `a` is used by …; volume `b` is used by …`.
pub fn describe_in_use(in_use: &[(String, FileUsers)]) -> String {
    in_use.iter().map(|(volume, users)| format!("volume `{volume}`'s live is used by {users}")).collect::<Vec<_>>().join("; ")
}
