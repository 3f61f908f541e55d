//! One small pool of threads per volume for the requests that may parse a copy's filesystem.
//!
//! Owns the pools and their queues. The kernel-facing FUSE threads only hand work over, so a
//! volume whose copies are slow to parse (a hostile image, a cold disk) keeps its own threads
//! busy and nobody else's. Never decides what runs where (the frontend does) and never answers
//! a request itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Work for a volume's pool.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Threads per volume: enough for parallel reads of its copies, few enough that many volumes
/// cost little.
const THREADS_PER_VOLUME: usize = 4;

/// The pools, by volume serial (serials are never reused, so a pool is never shared).
#[derive(Default)]
pub(super) struct VolumePools {
    queues: parking_lot::Mutex<HashMap<u32, mpsc::Sender<Job>>>,
    /// Jobs queued or running (a worker that hands over waits for none).
    busy: Arc<AtomicUsize>,
}

/// Waits for the pools to have nothing queued or running.
#[derive(Clone)]
pub struct Drain(Arc<AtomicUsize>);

impl Drain {
    /// Whether the pools became idle within `limit`.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.0.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl VolumePools {
    /// A handle that waits for every job to be done.
    pub(super) fn drain(&self) -> Drain {
        Drain(Arc::clone(&self.busy))
    }

    /// Queues `job` on volume `serial`'s pool, starting the pool on first use. If no thread
    /// can be started, the job runs here rather than being lost.
    pub(super) fn run(&self, serial: u32, job: Job) {
        let busy = Arc::clone(&self.busy);
        busy.fetch_add(1, Ordering::AcqRel);
        let job: Job = Box::new(move || {
            struct Done(Arc<AtomicUsize>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::AcqRel);
                }
            }
            let _done = Done(busy);
            job();
        });
        let mut queues = self.queues.lock();
        let tx = match queues.get(&serial) {
            Some(tx) => tx.clone(),
            None => match start(serial) {
                Some(tx) => {
                    queues.insert(serial, tx.clone());
                    tx
                }
                None => {
                    drop(queues);
                    return job();
                }
            },
        };
        drop(queues);
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            job();
        }
    }
}

/// Starts a pool; its threads end when its queue's sender is dropped with the pools.
fn start(serial: u32) -> Option<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..THREADS_PER_VOLUME {
        let rx = Arc::clone(&rx);
        let spawned = std::thread::Builder::new().name(format!("sc-vol{serial}-{i}")).spawn(move || loop {
            // Take one job, then let the next thread wait for the next one.
            let job = match rx.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            match job {
                // The namespace contains panics already; one that still escapes loses this
                // request (fuser answers a dropped reply with an error), not the thread.
                Ok(job) => {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
                Err(_) => return,
            }
        });
        if spawned.is_ok() {
            started += 1;
        }
    }
    if started == 0 {
        tracing::error!(volume = serial, "cannot start the volume's request threads; serving its requests inline");
        return None;
    }
    Some(tx)
}
