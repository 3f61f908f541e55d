//! Writers and the requester sequence: the registered writers, their states (like `VSS_WS_*`),
//! sending an event and waiting for its answer with a timeout, and the order of events around a
//! set's instant:
//!
//! Identify → PrepareForBackup → PrepareForSnapshot → Freeze (all) → [flush and hold: the
//! service freezes filesystems and commits the set] → Thaw → PostSnapshot → BackupComplete (now,
//! or when the requester says it has read the copies) → BackupShutdown (when the backup session
//! ends: the requester is gone and BackupComplete was sent, or the set was released).
//!
//! Around a revert: PreRestore (a failure refuses the revert) → [the revert] → PostRestore.
//!
//! Any failure or timeout before the set is kept: Abort to every writer that saw
//! PrepareForSnapshot, and an error naming the writer, the event and its message. The writers'
//! freeze window (from the first Freeze to the last Thaw) is at most [`FREEZE_WINDOW`]; [`Limits`]
//! holds it with the event and abort timeouts. The sequence runs in the daemon, so these limits
//! hold even if the requester disconnects.
//!
//! Never touches volume bytes or the engine: the hold (filesystem freeze and the engine's commit)
//! is handed to [`run_set`] by the daemon.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use uuid::Uuid;

use crate::protocol::{EventMessage, Reply, WriterEvent, WriterOutcome, WriterRegistration, WriterSelection, WriterState, WriterView};

/// How long a writer may take to answer one event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Abort waits for each writer (a writer that just timed out is likely still stuck).
pub const ABORT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a writer may be kept frozen (Freeze → Thaw), as VSS's 60 s.
pub const FREEZE_WINDOW: Duration = Duration::from_secs(60);

/// The sequence's time limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a writer may take to answer one event.
    pub event: Duration,
    /// How long Abort waits for each writer.
    pub abort: Duration,
    /// The longest any writer is kept frozen: from the first Freeze sent to the last Thaw.
    pub freeze_window: Duration,
}

impl Limits {
    /// VSS's limits.
    pub const VSS: Limits = Limits { event: EVENT_TIMEOUT, abort: ABORT_TIMEOUT, freeze_window: FREEZE_WINDOW };
}

/// One connected writer.
pub struct WriterConn {
    /// What the writer said about itself when it registered.
    pub registration: WriterRegistration,
    /// Where events go: any byte stream (a Unix socket today; a named pipe on Windows later).
    out: Mutex<Box<dyn Write + Send>>,
    pending: Mutex<HashMap<u64, mpsc::SyncSender<WriterOutcome>>>,
    next_seq: AtomicU64,
    alive: AtomicBool,
    state: Mutex<(WriterState, Option<String>)>,
}

fn failed_state(event: WriterEvent) -> WriterState {
    match event {
        WriterEvent::Identify => WriterState::FailedAtIdentify,
        WriterEvent::PrepareForBackup => WriterState::FailedAtPrepareBackup,
        WriterEvent::PrepareForSnapshot => WriterState::FailedAtPrepareSnapshot,
        WriterEvent::Freeze => WriterState::FailedAtFreeze,
        WriterEvent::Thaw => WriterState::FailedAtThaw,
        WriterEvent::PostSnapshot => WriterState::FailedAtPostSnapshot,
        WriterEvent::BackupShutdown => WriterState::FailedAtBackupShutdown,
        WriterEvent::PreRestore => WriterState::FailedAtPreRestore,
        WriterEvent::PostRestore => WriterState::FailedAtPostRestore,
        WriterEvent::Abort | WriterEvent::BackupComplete => WriterState::FailedAtBackupComplete,
    }
}

fn waiting_state(after: WriterEvent) -> WriterState {
    match after {
        WriterEvent::PrepareForSnapshot => WriterState::WaitingForFreeze,
        WriterEvent::Freeze => WriterState::WaitingForThaw,
        WriterEvent::Thaw => WriterState::WaitingForPostSnapshot,
        WriterEvent::PostSnapshot => WriterState::WaitingForBackupComplete,
        _ => WriterState::Stable,
    }
}

impl WriterConn {
    /// Sends `event` and waits for the answer; the error says what went wrong.
    pub fn send(&self, mut msg: EventMessage, timeout: Duration) -> Result<(), String> {
        if !self.alive.load(Ordering::Acquire) {
            return Err("the writer is not connected".into());
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        msg.seq = seq;
        let event = msg.event;
        let (tx, rx) = mpsc::sync_channel(1);
        self.pending.lock().insert(seq, tx);
        let sent = self.write_reply(&Reply::Event(msg));
        let result = match sent {
            Err(e) => Err(format!("the writer's connection failed: {e}")),
            Ok(()) => match rx.recv_timeout(timeout) {
                Ok(WriterOutcome::Ok) => Ok(()),
                Ok(WriterOutcome::Failed { message, retryable }) => Err(if retryable { format!("{message} (retryable)") } else { message }),
                Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("no answer within {timeout:?}")),
                Err(mpsc::RecvTimeoutError::Disconnected) => Err("the writer disconnected".into()),
            },
        };
        self.pending.lock().remove(&seq);
        let mut st = self.state.lock();
        let failed_before = !matches!(
            st.0,
            WriterState::Stable
                | WriterState::WaitingForFreeze
                | WriterState::WaitingForThaw
                | WriterState::WaitingForPostSnapshot
                | WriterState::WaitingForBackupComplete
        );
        match &result {
            // An abort or a shutdown leaves a failed writer's state as it was (it says where it
            // failed).
            Ok(()) if matches!(event, WriterEvent::Abort | WriterEvent::BackupShutdown) && failed_before => {}
            // A new set starts from a clean slate.
            Ok(()) if event == WriterEvent::Identify => *st = (WriterState::Stable, None),
            Ok(()) => *st = (waiting_state(event), st.1.clone()),
            Err(e) if event != WriterEvent::Abort => {
                *st = (
                    if self.alive.load(Ordering::Acquire) { failed_state(event) } else { WriterState::Disconnected },
                    Some(format!("{}: {e}", event.as_str())),
                )
            }
            Err(_) => {}
        }
        result
    }

    /// Writes one line on the writer's connection. Events and replies share it, so every line
    /// goes through here, whole, under one lock.
    pub fn write_reply(&self, reply: &Reply) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.out.lock().write_all(&line)
    }

    /// An answer arrived on the writer's connection.
    pub fn answer(&self, seq: u64, outcome: WriterOutcome) {
        if let Some(tx) = self.pending.lock().remove(&seq) {
            let _ = tx.send(outcome);
        }
    }

    /// The connection ended: waiting senders see a disconnect.
    pub fn disconnected(&self) {
        self.alive.store(false, Ordering::Release);
        self.pending.lock().clear();
        let mut st = self.state.lock();
        st.0 = WriterState::Disconnected;
        tracing::warn!(writer = %self.registration.name, "writer disconnected");
    }

    /// The writer as `shadowcopy writers` shows it.
    pub fn view(&self) -> WriterView {
        let st = self.state.lock();
        WriterView {
            name: self.registration.name.clone(),
            class_id: self.registration.class_id,
            instance_id: self.registration.instance_id,
            state: st.0,
            last_error: st.1.clone(),
            components: self.registration.components.clone(),
        }
    }

    fn connected(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn components_on(&self, volumes: &[String]) -> Vec<String> {
        self.registration.components.iter().filter(|c| c.volumes.iter().any(|v| volumes.contains(v))).map(|c| c.name.clone()).collect()
    }
}

/// The registered writers.
#[derive(Default)]
pub struct Writers {
    list: Mutex<Vec<Arc<WriterConn>>>,
}

/// The writers chosen for a set, and those left out with the reason.
pub struct Chosen {
    /// The writers that take part, each with its components on the set's volumes.
    pub writers: Vec<ChosenWriter>,
    /// Writers left out, with the reason.
    pub skipped: Vec<String>,
}

impl Writers {
    /// Registers a writer whose events go to `out`; a writer of the same name and instance
    /// replaces its old (disconnected) entry. The transport's owner makes sure a writer that
    /// stops reading cannot block a write forever (e.g. a write timeout of [`EVENT_TIMEOUT`]).
    pub fn register(&self, registration: WriterRegistration, out: impl Write + Send + 'static) -> Arc<WriterConn> {
        let conn = Arc::new(WriterConn {
            registration,
            out: Mutex::new(Box::new(out)),
            pending: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            state: Mutex::new((WriterState::Stable, None)),
        });
        let mut list = self.list.lock();
        list.retain(|w| !(w.registration.name == conn.registration.name && w.registration.instance_id == conn.registration.instance_id));
        list.push(Arc::clone(&conn));
        tracing::info!(writer = %conn.registration.name, components = conn.registration.components.len(), "writer registered");
        conn
    }

    /// Whether another connected writer (another instance) already has this registration's
    /// name. The same instance registering again (after a reconnect) is not another.
    pub fn name_taken(&self, registration: &WriterRegistration) -> bool {
        self.list
            .lock()
            .iter()
            .any(|w| w.connected() && w.registration.name == registration.name && w.registration.instance_id != registration.instance_id)
    }

    /// The connected writer named `name`, if any (a writer that reconnected after the daemon's
    /// worker was replaced is found again by its name).
    pub fn connected_named(&self, name: &str) -> Option<Arc<WriterConn>> {
        self.list.lock().iter().rev().find(|w| w.connected() && w.registration.name == name).cloned()
    }

    /// Every registered writer as `shadowcopy writers` shows it.
    pub fn views(&self) -> Vec<WriterView> {
        self.list.lock().iter().map(|w| w.view()).collect()
    }

    /// Default: the connected writers with components on the set's volumes.
    pub fn choose(&self, volumes: &[String], sel: &WriterSelection) -> Result<Chosen, String> {
        let list = self.list.lock().clone();
        for n in sel.only.iter().chain(&sel.exclude) {
            if !list.iter().any(|w| &w.registration.name == n) {
                return Err(format!("no writer named `{n}` (see `shadowcopy writers`)"));
            }
        }
        let mut chosen = Chosen { writers: Vec::new(), skipped: Vec::new() };
        if sel.none {
            return Ok(chosen);
        }
        for w in list {
            let name = &w.registration.name;
            let wanted = if sel.only.is_empty() { !w.components_on(volumes).is_empty() } else { sel.only.contains(name) };
            if !wanted {
                continue;
            }
            if sel.exclude.contains(name) {
                chosen.skipped.push(format!("{name} (excluded)"));
            } else if !w.connected() {
                chosen.skipped.push(format!("{name} (disconnected)"));
            } else {
                let comps = w.components_on(volumes);
                chosen.writers.push((w, comps));
            }
        }
        Ok(chosen)
    }
}

/// A chosen writer and its components in the set.
pub type ChosenWriter = (Arc<WriterConn>, Vec<String>);

fn event_for(event: WriterEvent, set_id: Option<Uuid>, volumes: &[String], copy_ids: &[Uuid], comps: &[String]) -> EventMessage {
    EventMessage { seq: 0, event, set_id, volumes: volumes.to_vec(), copy_ids: copy_ids.to_vec(), components: comps.to_vec() }
}

/// One set's sequence: who takes part, on which volumes, within which limits.
#[derive(Clone, Copy)]
pub struct Sequence<'a> {
    /// The writers that take part.
    pub writers: &'a [ChosenWriter],
    /// The set's volumes.
    pub volumes: &'a [String],
    /// The time limits.
    pub limits: Limits,
    /// Stop after PostSnapshot; BackupComplete comes when the requester asks.
    pub defer_backup_complete: bool,
}

/// Why the writers' side of a set failed; the set was aborted and nothing was kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetError {
    /// A writer failed or did not answer an event before the set was kept.
    #[error("writer `{writer}` failed at {event}: {reason}; the set was aborted, everything thawed, no copy kept")]
    WriterFailed {
        /// The writer's name.
        writer: String,
        /// The event (`freeze`, `thaw`, …).
        event: &'static str,
        /// What it said, or why there was no answer.
        reason: String,
    },
    /// The requester disconnected while the writers were frozen.
    #[error("the requester disconnected before the instant; the set was aborted and the writers thawed")]
    RequesterGone,
    /// The writers took longer than the freeze window to freeze.
    #[error("the writers took longer than the {0:?} freeze window to freeze; the set was aborted and the writers thawed")]
    FreezeWindow(Duration),
}

impl SetError {
    /// The protocol's kind for it.
    pub fn kind(&self) -> crate::protocol::ErrorKind {
        match self {
            SetError::FreezeWindow(_) => crate::protocol::ErrorKind::Timeout,
            _ => crate::protocol::ErrorKind::Failed,
        }
    }
}

/// What [`run_set`] hands back: the hold's result and the set as the writers know it.
pub struct Taken<T> {
    /// What the hold returned.
    pub result: T,
    /// The set's id.
    pub set_id: Uuid,
    /// Its copies' ids.
    pub copy_ids: Vec<Uuid>,
}

/// The requester sequence for one set, from Identify to PostSnapshot (and BackupComplete unless
/// `defer_backup_complete`), around `hold` (which freezes filesystems and takes the set). `undo`
/// deletes the set if the writers fail after it was taken. Returns `hold`'s result, or the error
/// that aborted the set.
pub fn run_set<T, E: From<SetError>>(
    seq: &Sequence<'_>,
    stage: &mut dyn FnMut(&str),
    requester_alive: &dyn Fn() -> bool,
    hold: impl FnOnce() -> Result<(T, Uuid, Vec<Uuid>), E>,
    undo: impl FnOnce(&T),
) -> Result<Taken<T>, E> {
    let Sequence { writers: chosen, volumes, limits, defer_backup_complete } = *seq;
    let msg = |event, set_id: Option<Uuid>, copy_ids: &[Uuid], comps: &[String]| event_for(event, set_id, volumes, copy_ids, comps);
    let mut prepared: Vec<&Arc<WriterConn>> = Vec::new();
    let abort = |prepared: &[&Arc<WriterConn>], set_id: Option<Uuid>| {
        for w in prepared {
            if let Err(e) = w.send(msg(WriterEvent::Abort, set_id, &[], &[]), limits.abort) {
                tracing::warn!(writer = %w.registration.name, error = %e, "abort was not acknowledged");
            }
        }
    };
    let fail = |w: &WriterConn, event: WriterEvent, reason: String| {
        E::from(SetError::WriterFailed { writer: w.registration.name.clone(), event: event.as_str(), reason })
    };
    // The first writer frozen starts the window every writer's Thaw must arrive within.
    let mut frozen_at: Option<Instant> = None;
    for event in [WriterEvent::Identify, WriterEvent::PrepareForBackup, WriterEvent::PrepareForSnapshot, WriterEvent::Freeze] {
        for (w, comps) in chosen {
            if event == WriterEvent::PrepareForSnapshot {
                prepared.push(w);
            }
            if event == WriterEvent::Freeze {
                frozen_at.get_or_insert_with(Instant::now);
            }
            stage(&format!("{}: waiting for writer `{}`", event.as_str(), w.registration.name));
            if let Err(e) = w.send(msg(event, None, &[], comps), limits.event) {
                abort(&prepared, None);
                return Err(fail(w, event, e));
            }
        }
    }
    // A requester that went away while the writers froze does not get a set: abort, thaw.
    if !requester_alive() {
        abort(&prepared, None);
        return Err(SetError::RequesterGone.into());
    }
    let frozen_at = frozen_at.unwrap_or_else(Instant::now);
    if frozen_at.elapsed() >= limits.freeze_window {
        abort(&prepared, None);
        return Err(SetError::FreezeWindow(limits.freeze_window).into());
    }
    stage("flush and hold: freezing filesystems, taking the set");
    let (result, set_id, copy_ids) = match hold() {
        Ok(r) => r,
        Err(e) => {
            abort(&prepared, None);
            return Err(e);
        }
    };
    for (w, comps) in chosen {
        stage(&format!("thaw: waiting for writer `{}`", w.registration.name));
        let left = limits.freeze_window.saturating_sub(frozen_at.elapsed()).max(Duration::from_millis(1));
        if let Err(e) = w.send(msg(WriterEvent::Thaw, Some(set_id), &copy_ids, comps), left.min(limits.event)) {
            // A writer that cannot confirm its data was consistent spoils the set.
            undo(&result);
            abort(&prepared, Some(set_id));
            return Err(fail(w, WriterEvent::Thaw, e));
        }
    }
    let after: &[WriterEvent] =
        if defer_backup_complete { &[WriterEvent::PostSnapshot] } else { &[WriterEvent::PostSnapshot, WriterEvent::BackupComplete] };
    for &event in after {
        // The copies are good; a writer's own bookkeeping failing is logged and kept in its state.
        let _ = tell_all(chosen, event, set_id, volumes, &copy_ids);
    }
    Ok(Taken { result, set_id, copy_ids })
}

/// Sends `event` to each writer after the set was taken; returns the failures, as messages.
fn tell_all(writers: &[ChosenWriter], event: WriterEvent, set_id: Uuid, volumes: &[String], copy_ids: &[Uuid]) -> Vec<String> {
    let mut failures = Vec::new();
    for (w, comps) in writers {
        if let Err(e) = w.send(event_for(event, Some(set_id), volumes, copy_ids, comps), EVENT_TIMEOUT) {
            tracing::warn!(writer = %w.registration.name, event = event.as_str(), error = %e, "writer failed after the set was taken");
            failures.push(format!("writer `{}` failed at {}: {e}", w.registration.name, event.as_str()));
        }
    }
    failures
}

/// A set's backup session: its writers, from PostSnapshot until BackupShutdown.
struct Session {
    writers: Vec<ChosenWriter>,
    volumes: Vec<String>,
    copy_ids: Vec<Uuid>,
    backup_complete_sent: bool,
    requester_gone: bool,
}

/// The set has no writers waiting for BackupComplete.
#[derive(Debug)]
pub struct NoSession;

/// The open backup sessions, by set id. A session ends (its writers get BackupShutdown) when
/// the requester is gone and BackupComplete was sent, or when the set is released.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<Uuid, Session>>,
}

impl Sessions {
    /// Opens the session of a set just taken.
    pub fn open(&self, set_id: Uuid, writers: Vec<ChosenWriter>, volumes: Vec<String>, copy_ids: Vec<Uuid>, backup_complete_sent: bool) {
        let s = Session { writers, volumes, copy_ids, backup_complete_sent, requester_gone: false };
        self.open.lock().insert(set_id, s);
    }

    /// Whether set `set_id` has a session.
    pub fn is_open(&self, set_id: Uuid) -> bool {
        self.open.lock().contains_key(&set_id)
    }

    /// Sends BackupComplete for a deferred set (once); says what happened.
    pub fn backup_complete(&self, set_id: Uuid) -> Result<String, NoSession> {
        let mut open = self.open.lock();
        match open.get(&set_id) {
            None => return Err(NoSession),
            Some(s) if s.backup_complete_sent => return Ok(format!("BackupComplete was already sent to the writers of set {set_id}")),
            Some(_) => {}
        }
        // Events are sent outside the lock (a writer may take seconds to answer).
        let mut s = open.remove(&set_id).expect("present");
        drop(open);
        let failures = tell_all(&s.writers, WriterEvent::BackupComplete, set_id, &s.volumes, &s.copy_ids);
        s.backup_complete_sent = true;
        let told = s.writers.len();
        if s.requester_gone {
            shutdown(set_id, &s);
        } else {
            self.open.lock().insert(set_id, s);
        }
        Ok(if failures.is_empty() {
            format!("BackupComplete sent to {told} writer(s) of set {set_id}")
        } else {
            format!("BackupComplete sent to {told} writer(s) of set {set_id}; {}", failures.join("; "))
        })
    }

    /// The requester that created the set disconnected.
    pub fn requester_gone(&self, set_id: Uuid) {
        let mut open = self.open.lock();
        let Some(s) = open.get_mut(&set_id) else { return };
        s.requester_gone = true;
        if s.backup_complete_sent {
            let s = open.remove(&set_id).expect("present");
            drop(open);
            shutdown(set_id, &s);
        }
    }

    /// The set was deleted or released: its session ends.
    pub fn released(&self, set_id: Uuid) {
        let s = self.open.lock().remove(&set_id);
        if let Some(s) = s {
            shutdown(set_id, &s);
        }
    }
}

fn shutdown(set_id: Uuid, s: &Session) {
    let _ = tell_all(&s.writers, WriterEvent::BackupShutdown, set_id, &s.volumes, &s.copy_ids);
}

/// Tells `writers` a restore of `copy_id` is about to happen; the first failure refuses it (the
/// writers already told get PostRestore, as nothing changed).
pub fn pre_restore(writers: &[ChosenWriter], set_id: Uuid, volumes: &[String], copy_id: Uuid) -> Result<(), String> {
    for (i, (w, comps)) in writers.iter().enumerate() {
        if let Err(e) = w.send(event_for(WriterEvent::PreRestore, Some(set_id), volumes, &[copy_id], comps), EVENT_TIMEOUT) {
            post_restore(&writers[..i], set_id, volumes, copy_id);
            return Err(format!("writer `{}` refused the restore at pre_restore: {e}; nothing was changed", w.registration.name));
        }
    }
    Ok(())
}

/// Tells `writers` a restore of `copy_id` ended; returns the failures, as messages.
pub fn post_restore(writers: &[ChosenWriter], set_id: Uuid, volumes: &[String], copy_id: Uuid) -> Vec<String> {
    tell_all(writers, WriterEvent::PostRestore, set_id, volumes, &[copy_id])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;
    use std::io::{BufRead, BufReader};

    /// The error a test's hold gives, or the sequence's own.
    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("{0}")]
        Hold(&'static str),
        #[error(transparent)]
        Set(#[from] SetError),
    }

    /// A writer on the other end of a socket pair: records each event it gets and answers it
    /// with `answer(event)`.
    struct FakeWriter {
        conn: Arc<WriterConn>,
        seen: Arc<Mutex<Vec<WriterEvent>>>,
    }

    fn fake(writers: &Writers, name: &str, answer: fn(WriterEvent) -> WriterOutcome) -> FakeWriter {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let reg = WriterRegistration { name: name.into(), class_id: Uuid::new_v4(), instance_id: Uuid::new_v4(), components: vec![] };
        let conn = writers.register(reg, ours);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (Arc::clone(&conn), Arc::clone(&seen));
        std::thread::spawn(move || {
            for line in BufReader::new(theirs).lines() {
                let Ok(line) = line else { return };
                if let Ok(Reply::Event(e)) = serde_json::from_str::<Reply>(&line) {
                    s.lock().push(e.event);
                    c.answer(e.seq, answer(e.event));
                }
            }
        });
        FakeWriter { conn, seen }
    }

    fn ok(_: WriterEvent) -> WriterOutcome {
        WriterOutcome::Ok
    }

    fn events(w: &FakeWriter) -> Vec<&'static str> {
        w.seen.lock().iter().map(|e| e.as_str()).collect()
    }

    fn chosen(ws: &[&FakeWriter]) -> Vec<ChosenWriter> {
        ws.iter().map(|w| (Arc::clone(&w.conn), vec![])).collect()
    }

    #[test]
    fn a_failed_hold_aborts_every_prepared_writer() {
        let writers = Writers::default();
        let (a, b) = (fake(&writers, "a", ok), fake(&writers, "b", ok));
        let r = run_set(
            &Sequence { writers: &chosen(&[&a, &b]), volumes: &["v".into()], limits: Limits::VSS, defer_backup_complete: false },
            &mut |_| {},
            &|| true,
            || Err::<((), Uuid, Vec<Uuid>), _>(TestError::Hold("held too long")),
            |_| {},
        );
        assert!(matches!(r, Err(TestError::Hold(_))));
        for w in [&a, &b] {
            assert_eq!(events(w), ["identify", "prepare_for_backup", "prepare_for_snapshot", "freeze", "abort"]);
        }
    }

    #[test]
    fn a_thaw_failure_undoes_the_set() {
        let writers = Writers::default();
        let bad = fake(&writers, "bad", |e| {
            if e == WriterEvent::Thaw {
                WriterOutcome::Failed { message: "lost the lock".into(), retryable: true }
            } else {
                WriterOutcome::Ok
            }
        });
        let undone = AtomicBool::new(false);
        let r = run_set(
            &Sequence { writers: &chosen(&[&bad]), volumes: &["v".into()], limits: Limits::VSS, defer_backup_complete: false },
            &mut |_| {},
            &|| true,
            || Ok::<_, TestError>(((), Uuid::new_v4(), vec![])),
            |_| undone.store(true, Ordering::Relaxed),
        );
        let msg = r.err().expect("the set fails").to_string();
        assert!(msg.contains("`bad` failed at thaw: lost the lock (retryable)"), "{msg}");
        assert!(undone.load(Ordering::Relaxed), "the taken set was deleted");
        assert_eq!(events(&bad).last(), Some(&"abort"));
        assert_eq!(bad.conn.view().state, WriterState::FailedAtThaw, "abort keeps where it failed");
    }

    #[test]
    fn the_freeze_window_counts_from_the_first_freeze() {
        let writers = Writers::default();
        let quick = fake(&writers, "quick", ok);
        let slow = fake(&writers, "slow", |e| {
            if e == WriterEvent::Freeze {
                std::thread::sleep(Duration::from_millis(300));
            }
            WriterOutcome::Ok
        });
        let limits = Limits { event: Duration::from_secs(5), abort: Duration::from_secs(1), freeze_window: Duration::from_millis(200) };
        let held = AtomicBool::new(false);
        let r = run_set(
            &Sequence { writers: &chosen(&[&quick, &slow]), volumes: &["v".into()], limits, defer_backup_complete: false },
            &mut |_| {},
            &|| true,
            || {
                held.store(true, Ordering::Relaxed);
                Ok::<_, TestError>(((), Uuid::new_v4(), vec![]))
            },
            |_| {},
        );
        let e = r.err().expect("the window passed before the instant");
        assert!(matches!(&e, TestError::Set(s) if s.kind() == ErrorKind::Timeout), "{e}");
        assert!(!held.load(Ordering::Relaxed), "no set is taken outside the window");
        assert_eq!(events(&quick).last(), Some(&"abort"), "the writer frozen first is thawed by Abort");
    }

    #[test]
    fn a_deferred_session_ends_with_one_backup_complete_and_one_shutdown() {
        let writers = Writers::default();
        let w = fake(&writers, "w", ok);
        let set = Uuid::new_v4();
        let taken = run_set(
            &Sequence { writers: &chosen(&[&w]), volumes: &["v".into()], limits: Limits::VSS, defer_backup_complete: true },
            &mut |_| {},
            &|| true,
            || Ok::<_, TestError>(((), set, vec![])),
            |_| {},
        )
        .unwrap();
        assert_eq!(taken.set_id, set);
        assert_eq!(events(&w).last(), Some(&"post_snapshot"));
        assert_eq!(w.conn.view().state, WriterState::WaitingForBackupComplete);
        let sessions = Sessions::default();
        sessions.open(set, chosen(&[&w]), vec!["v".into()], vec![], false);
        sessions.requester_gone(set);
        assert_eq!(events(&w).last(), Some(&"post_snapshot"), "the backup is not over until BackupComplete");
        assert!(sessions.backup_complete(set).unwrap().contains("1 writer"));
        assert!(sessions.backup_complete(set).is_err(), "the session ended");
        sessions.released(set);
        assert_eq!(events(&w)[5..], ["post_snapshot", "backup_complete", "backup_shutdown"]);
        assert_eq!(w.conn.view().state, WriterState::Stable);
    }

    #[test]
    fn a_released_set_shuts_its_session_down_without_backup_complete() {
        let writers = Writers::default();
        let w = fake(&writers, "w", ok);
        let sessions = Sessions::default();
        let set = Uuid::new_v4();
        sessions.open(set, chosen(&[&w]), vec!["v".into()], vec![], false);
        sessions.released(set);
        sessions.requester_gone(set);
        assert_eq!(events(&w), ["backup_shutdown"]);
    }

    #[test]
    fn a_refused_pre_restore_tells_the_others_post_restore() {
        let writers = Writers::default();
        let (a, b) = (
            fake(&writers, "a", ok),
            fake(&writers, "b", |e| {
                if e == WriterEvent::PreRestore {
                    WriterOutcome::Failed { message: "busy".into(), retryable: false }
                } else {
                    WriterOutcome::Ok
                }
            }),
        );
        let err = pre_restore(&chosen(&[&a, &b]), Uuid::new_v4(), &["v".into()], Uuid::new_v4()).unwrap_err();
        assert!(err.contains("`b` refused the restore at pre_restore: busy"), "{err}");
        assert_eq!(events(&a), ["pre_restore", "post_restore"]);
        assert_eq!(events(&b), ["pre_restore"]);
    }
}
