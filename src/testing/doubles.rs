//! Test doubles for the [`Storage`] seam, shared by unit and integration tests and benchmarks
//! (feature `testing`).
//!
//! - [`MemStorage`]: bytes in memory.
//! - [`SimDisk`]: several files on one simulated disk that keeps, per file, what readers see and
//!   what is durable. A chosen sync can "lose power": from then on every call fails, and
//!   [`SimDisk::after_power_loss`] builds the disk a reboot would find — the durable bytes, plus
//!   (in [`PowerLoss::Writeback`] mode) any subset of the writes since the last sync, in order,
//!   one of them possibly torn at a sector boundary, as a kernel's writeback may leave them.
//!   [`SimDisk::after_process_death`] builds what a restarted process finds instead: every
//!   completed write (the page cache survived), on the same boot.
//!   Writes can also be made to fail with an errno (a full disk, a dying device).
//! - [`ZeroStorage`]: reads zeros, drops writes, keeps a length.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::volume::Storage;

/// Bytes in memory.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: Mutex<Vec<u8>>,
}

impl MemStorage {
    /// A disk of `len` zero bytes.
    pub fn new(len: usize) -> Self {
        MemStorage { data: Mutex::new(vec![0; len]) }
    }

    /// A disk holding `v`.
    pub fn from_vec(v: Vec<u8>) -> Self {
        MemStorage { data: Mutex::new(v) }
    }

    /// A copy of its bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.lock().clone()
    }
}

fn read_from(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
    let src = data.get(start..start + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
    buf.copy_from_slice(src);
    Ok(())
}

fn write_into(data: &mut Vec<u8>, buf: &[u8], offset: u64) {
    let start = offset as usize;
    if data.len() < start + buf.len() {
        data.resize(start + buf.len(), 0);
    }
    data[start..start + buf.len()].copy_from_slice(buf);
}

impl Storage for MemStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.lock().len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_from(&self.data.lock(), buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_into(&mut self.data.lock(), buf, offset);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.data.lock().resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Storage whose bytes are all zeros and whose writes are dropped: only its length is kept.
/// For building diff areas of millions of records through the engine's own write path without
/// writing their bytes (`shadowcopy-bench scale`), where the records are the point, not the
/// content.
#[derive(Debug, Default)]
pub struct ZeroStorage {
    len: AtomicU64,
}

impl ZeroStorage {
    /// `len` bytes of zeros.
    pub fn new(len: u64) -> Self {
        ZeroStorage { len: AtomicU64::new(len) }
    }
}

impl Storage for ZeroStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len.load(Ordering::Acquire))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.len.load(Ordering::Acquire) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.len.fetch_max(offset + buf.len() as u64, Ordering::AcqRel);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.len.store(len, Ordering::Release);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}

/// What a power loss keeps of the writes made since a file's last sync.
#[derive(Debug, Clone, Copy)]
pub enum PowerLoss {
    /// Nothing: only synced bytes survive.
    DropUnsynced,
    /// Any subset, in order, with one write possibly torn at a 512-byte boundary.
    Writeback {
        /// Seed of the random choice.
        seed: u64,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct SimFileState {
    visible: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Op>,
    write_error: Option<i32>,
}

#[derive(Debug, Default)]
struct SimState {
    files: Vec<SimFileState>,
    /// Which boot of the simulated machine this is: a power loss starts the next one.
    boot: u64,
    syncs: u64,
    crash_at_sync: Option<u64>,
    crashed: bool,
}

/// A simulated disk holding several files.
#[derive(Debug, Default)]
pub struct SimDisk {
    state: Mutex<SimState>,
}

/// One file of a [`SimDisk`].
#[derive(Debug)]
pub struct SimFile {
    disk: Arc<SimDisk>,
    id: usize,
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

impl SimDisk {
    /// A disk with nothing written.
    pub fn new() -> Arc<Self> {
        Arc::new(SimDisk::default())
    }

    /// Adds a file with durable initial content.
    pub fn add_file(self: &Arc<Self>, content: Vec<u8>) -> Arc<SimFile> {
        let mut s = self.state.lock();
        s.files.push(SimFileState { visible: content.clone(), durable: content, ..Default::default() });
        Arc::new(SimFile { disk: Arc::clone(self), id: s.files.len() - 1 })
    }

    /// The `id`-th file added.
    pub fn file(self: &Arc<Self>, id: usize) -> Arc<SimFile> {
        Arc::new(SimFile { disk: Arc::clone(self), id })
    }

    /// Loses power at the `n`-th sync from now (1 = the next one): that sync and every call
    /// after it fail.
    pub fn crash_at_sync(&self, n: u64) {
        let mut s = self.state.lock();
        s.crash_at_sync = Some(s.syncs + n);
    }

    /// Loses power now.
    pub fn crash_now(&self) {
        self.state.lock().crashed = true;
    }

    /// Whether power was lost.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Makes writes to file `id` fail with `errno` (or succeed again with `None`).
    pub fn set_write_error(&self, id: usize, errno: Option<i32>) {
        self.state.lock().files[id].write_error = errno;
    }

    /// The disk a reboot finds.
    pub fn after_power_loss(&self, mode: PowerLoss) -> Arc<SimDisk> {
        let s = self.state.lock();
        let mut rng = match mode {
            PowerLoss::Writeback { seed } => Some(StdRng::seed_from_u64(seed)),
            PowerLoss::DropUnsynced => None,
        };
        let files = s
            .files
            .iter()
            .map(|f| {
                let mut data = f.durable.clone();
                if let Some(rng) = rng.as_mut() {
                    let torn = if f.unsynced.is_empty() { usize::MAX } else { rng.random_range(0..f.unsynced.len() * 2) };
                    for (i, op) in f.unsynced.iter().enumerate() {
                        if !rng.random_bool(0.5) {
                            continue;
                        }
                        match op {
                            Op::Write { offset, data: d } if i == torn && d.len() > 512 => {
                                let sectors = d.len() / 512;
                                let keep = rng.random_range(1..=sectors) * 512;
                                write_into(&mut data, &d[..keep.min(d.len())], *offset);
                            }
                            Op::Write { offset, data: d } => write_into(&mut data, d, *offset),
                            Op::SetLen(len) => data.resize(*len as usize, 0),
                        }
                    }
                }
                SimFileState { visible: data.clone(), durable: data, unsynced: Vec::new(), write_error: None }
            })
            .collect();
        Arc::new(SimDisk { state: Mutex::new(SimState { files, boot: s.boot + 1, ..Default::default() }) })
    }

    /// The disk a restarted process finds after the one using this disk died: every completed
    /// write is there, as the kernel's page cache keeps it, and nothing more is durable than
    /// before (a later power loss may still lose the unsynced writes). This disk fails every
    /// call from now on, so the dead process's last steps reach nothing.
    pub fn after_process_death(&self) -> Arc<SimDisk> {
        let mut s = self.state.lock();
        s.crashed = true;
        let files = s.files.iter().map(|f| SimFileState { write_error: None, ..f.clone() }).collect();
        Arc::new(SimDisk { state: Mutex::new(SimState { files, boot: s.boot, ..Default::default() }) })
    }

    /// The id of the simulated boot, as the redo log wants it: it changes with every power loss.
    pub fn boot_id(&self) -> [u8; 16] {
        let mut id = [0x5a; 16];
        id[..8].copy_from_slice(&self.state.lock().boot.to_le_bytes());
        id
    }

    /// What readers of file `id` see now.
    pub fn visible(&self, id: usize) -> Vec<u8> {
        self.state.lock().files[id].visible.clone()
    }
}

impl Storage for SimFile {
    fn len(&self) -> io::Result<u64> {
        let s = self.disk.state.lock();
        if s.crashed {
            return Err(power_lost());
        }
        Ok(s.files[self.id].visible.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.disk.state.lock();
        if s.crashed {
            return Err(power_lost());
        }
        read_from(&s.files[self.id].visible, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        if s.crashed {
            return Err(power_lost());
        }
        let f = &mut s.files[self.id];
        if let Some(errno) = f.write_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        write_into(&mut f.visible, buf, offset);
        f.unsynced.push(Op::Write { offset, data: buf.to_vec() });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        if s.crashed {
            return Err(power_lost());
        }
        let f = &mut s.files[self.id];
        f.visible.resize(len as usize, 0);
        f.unsynced.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        if s.crashed {
            return Err(power_lost());
        }
        s.syncs += 1;
        if s.crash_at_sync == Some(s.syncs) {
            s.crashed = true;
            return Err(power_lost());
        }
        let f = &mut s.files[self.id];
        for op in std::mem::take(&mut f.unsynced) {
            match op {
                Op::Write { offset, data } => write_into(&mut f.durable, &data, offset),
                Op::SetLen(len) => f.durable.resize(len as usize, 0),
            }
        }
        Ok(())
    }
}
