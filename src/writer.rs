//! The writer SDK: what an application implements to take part in shadow copy sets, like
//! `CVssWriter`. Implement [`Writer`] (every event has a default that succeeds) and hand it to
//! [`run`], which connects to the daemon, registers, answers events, and reconnects after the
//! daemon restarts.
//!
//! The daemon's side of the protocol (timeouts, abort, states) is in the daemon; this module only
//! answers. Never touches volume bytes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::protocol::{Answer, Client, ClientError, EventMessage, Op, Reply, WriterEvent, WriterOutcome, WriterRegistration};

/// A writer's refusal of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, for the requester and the logs.
    pub message: String,
    /// Trying again later may work (`VSS_E_WRITERERROR_RETRYABLE`).
    pub retryable: bool,
}

impl Failure {
    /// A failure that is not worth retrying.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), retryable: false }
    }
}

/// What a writer does at each event. Every method defaults to success.
#[allow(unused_variables)]
pub trait Writer {
    /// Identify: the writer is asked what it writes.
    fn identify(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// PrepareForBackup: a backup is being prepared.
    fn prepare_for_backup(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// PrepareForSnapshot: get ready, Freeze follows.
    fn prepare_for_snapshot(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// Stop writing and make the data on disk consistent; hold until `thaw` (or `abort`).
    fn freeze(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// Thaw: writes may go on.
    fn thaw(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// PostSnapshot: the set exists.
    fn post_snapshot(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// The set failed: undo whatever `prepare_for_snapshot` and `freeze` did.
    fn abort(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// BackupComplete: the copies were read.
    fn backup_complete(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// BackupShutdown: the set's backup session is over.
    fn backup_shutdown(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// PreRestore: a copy is about to be restored (a failure refuses the restore).
    fn pre_restore(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// PostRestore: the restore is done.
    fn post_restore(&mut self, e: &EventMessage) -> Result<(), Failure> {
        Ok(())
    }
    /// Dispatches an event to its method (override to handle all events in one place).
    fn handle(&mut self, e: &EventMessage) -> Result<(), Failure> {
        match e.event {
            WriterEvent::Identify => self.identify(e),
            WriterEvent::PrepareForBackup => self.prepare_for_backup(e),
            WriterEvent::PrepareForSnapshot => self.prepare_for_snapshot(e),
            WriterEvent::Freeze => self.freeze(e),
            WriterEvent::Thaw => self.thaw(e),
            WriterEvent::PostSnapshot => self.post_snapshot(e),
            WriterEvent::Abort => self.abort(e),
            WriterEvent::BackupComplete => self.backup_complete(e),
            WriterEvent::BackupShutdown => self.backup_shutdown(e),
            WriterEvent::PreRestore => self.pre_restore(e),
            WriterEvent::PostRestore => self.post_restore(e),
        }
    }
}

/// Serves `writer` until `stop` is set: connects to the daemon at `socket`, registers, answers
/// events; when the daemon goes away, reconnects (every second) and registers again.
pub fn run(socket: &Path, registration: &WriterRegistration, writer: &mut dyn Writer, stop: &AtomicBool) -> Result<(), ClientError> {
    let mut announced = false;
    while !stop.load(Ordering::Relaxed) {
        let mut client = match Client::connect(socket) {
            Ok(c) => c,
            Err(e) => {
                if !announced {
                    tracing::warn!(error = %e, "cannot reach the daemon; retrying every second");
                    announced = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        match client.call(Op::WriterRegister(registration.clone()), &mut |_, _| {}) {
            Ok(Answer::Done(_)) => tracing::info!(writer = %registration.name, "registered with the daemon"),
            Ok(other) => return Err(ClientError::BadReply(format!("unexpected answer to a registration: {other:?}"))),
            // Refusals (permissions, a bad registration) do not get better by retrying.
            Err(ClientError::Daemon(e)) => return Err(ClientError::Daemon(e)),
            Err(e) => {
                tracing::warn!(error = %e, "registration failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        }
        announced = false;
        loop {
            match client.next_reply() {
                Ok(Some(Reply::Event(e))) => {
                    tracing::debug!(event = e.event.as_str(), seq = e.seq, "event");
                    let outcome = match writer.handle(&e) {
                        Ok(()) => WriterOutcome::Ok,
                        Err(f) => WriterOutcome::Failed { message: f.message, retryable: f.retryable },
                    };
                    if client.send(Op::WriterAnswer { seq: e.seq, outcome }).is_err() {
                        break;
                    }
                }
                Ok(Some(Reply::Error(e))) => tracing::warn!(message = %e.message, "the daemon refused an answer"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    tracing::warn!("the daemon went away; reconnecting");
                    break;
                }
            }
        }
    }
    Ok(())
}
