//! Crash safety, exhaustively: one fixed workload is run once to count its syncs, then again with
//! the power lost at every one of them — once dropping everything not synced, once letting the
//! kernel's writeback keep a random subset of the unsynced writes with one torn in half. After
//! each reboot every persistent copy that was confirmed equals its reference, a copy being
//! created or deleted at the crash is either absent or exact, and every flushed byte is there.

mod common;

use shadowcopy::testing::PowerLoss;
use shadowcopy::{create_set, CreateOptions, DiffAreaOptions, MaxSize, ShadowVolume};
use uuid::Uuid;

use common::*;

const SIZE: usize = 256 << 10;

struct Outcome {
    /// (id, image, confirmed) of every copy the workload created, in order.
    copies: Vec<(Option<Uuid>, Vec<u8>, bool)>,
    deleted: Vec<(Uuid, bool)>,
    flushed: Vec<u8>,
    dirty: Vec<bool>,
}

/// The workload; stops at the first failure (the power is gone).
fn workload(vol: &ShadowVolume, out: &mut Outcome, live: &mut Vec<u8>) {
    let mut step = 0u64;
    let mut write = |vol: &ShadowVolume, live: &mut Vec<u8>, out: &mut Outcome, off: usize, len: usize| -> bool {
        step += 1;
        let data = pattern(step, len);
        live[off..off + len].copy_from_slice(&data);
        out.dirty[off..off + len].iter_mut().for_each(|d| *d = true);
        vol.write_at(&data, off as u64).is_ok()
    };
    let flush = |vol: &ShadowVolume, live: &Vec<u8>, out: &mut Outcome| -> bool {
        if vol.flush().is_err() {
            return false;
        }
        out.flushed = live.clone();
        out.dirty.iter_mut().for_each(|d| *d = false);
        true
    };
    let create = |vol: &ShadowVolume, live: &Vec<u8>, out: &mut Outcome, volatile: bool| -> bool {
        out.copies.push((None, live.clone(), false));
        match create_set(&[vol], CreateOptions { volatile, attributes: 0 }) {
            Ok(set) => {
                let last = out.copies.last_mut().unwrap();
                last.0 = Some(set.copies[0].id);
                last.2 = !volatile;
                true
            }
            Err(_) => false,
        }
    };
    let _ = (|| -> Option<()> {
        write(vol, live, out, 1000, 70_000).then_some(())?;
        flush(vol, live, out).then_some(())?;
        create(vol, live, out, false).then_some(())?;
        write(vol, live, out, 5000, 9000).then_some(())?;
        write(vol, live, out, 100_000, 40_000).then_some(())?;
        create(vol, live, out, true).then_some(())?;
        write(vol, live, out, 0, 33_333).then_some(())?;
        flush(vol, live, out).then_some(())?;
        create(vol, live, out, false).then_some(())?;
        write(vol, live, out, 20_000, 150_000).then_some(())?;
        let first = out.copies[0].0?;
        out.deleted.push((first, false));
        vol.delete(first).ok()?;
        out.deleted.last_mut().unwrap().1 = true;
        write(vol, live, out, 60_000, 5_000).then_some(())?;
        create(vol, live, out, false).then_some(())?;
        vol.punch_zero(16384, 65536).ok()?;
        live[16384..16384 + 65536].fill(0);
        out.dirty[16384..16384 + 65536].iter_mut().for_each(|d| *d = true);
        write(vol, live, out, SIZE - 777, 777).then_some(())?;
        flush(vol, live, out).then_some(())?;
        Some(())
    })();
}

/// How often the workload merges the index into a new checkpoint.
#[derive(Debug, Clone, Copy)]
enum Merges {
    /// When the journal passes the test threshold (a few KiB).
    Sometimes,
    /// At every commit: every sync of a merge is a crash point.
    EveryCommit,
}

fn engine(merges: Merges) -> shadowcopy::EngineOptions {
    match merges {
        Merges::Sometimes => quiet_engine(),
        Merges::EveryCommit => shadowcopy::EngineOptions { journal_compact_bytes: Some(1), ..quiet_engine() },
    }
}

fn run(crash_at: Option<u64>, mode: PowerLoss, chunk: u32, merges: Merges) -> u64 {
    let initial = pattern(99, SIZE);
    let (disk, vol) = create(initial.clone(), DiffAreaOptions { chunk_size: chunk, max_size: MaxSize::Unbounded }, engine(merges));
    let start = disk.syncs();
    if let Some(n) = crash_at {
        disk.crash_at_sync(n);
    }
    let mut out = Outcome { copies: Vec::new(), deleted: Vec::new(), flushed: initial.clone(), dirty: vec![false; SIZE] };
    let mut live = initial;
    workload(&vol, &mut out, &mut live);
    let syncs = disk.syncs() - start;
    if crash_at.is_none() {
        if let Merges::EveryCommit = merges {
            let usage = vol.usage();
            assert!(usage.checkpointed_chunks > 0, "the workload merged records into a checkpoint: {usage:?}");
        }
        vol.close().unwrap();
        return syncs;
    }
    disk.crash_now();
    drop(vol);
    let disk = disk.after_power_loss(mode);
    let vol = open(&disk, quiet_engine()).unwrap_or_else(|e| panic!("crash at sync {crash_at:?} ({mode:?}, {merges:?}): open failed: {e}"));
    let ctx = format!("crash at sync {crash_at:?}, {mode:?}, chunk {chunk}, merges {merges:?}");

    let mut got = vec![0u8; SIZE];
    vol.read_at(&mut got, 0).unwrap();
    if let Some(i) = (0..SIZE).find(|&i| !out.dirty[i] && got[i] != out.flushed[i]) {
        panic!("{ctx}: flushed byte {i} lost");
    }
    let listed = vol.copies();
    for c in &listed {
        assert!(c.failed.is_none(), "{ctx}: copy failed: {:?}", c.failed);
        let mut img = vec![0u8; SIZE];
        vol.read_copy(c.id, &mut img, 0).unwrap();
        let known = out.copies.iter().find(|(id, _, _)| *id == Some(c.id));
        let ok = match known {
            Some((_, want, _)) => img == *want,
            // A copy whose creation was cut short: it is the last one attempted.
            None => out.copies.last().is_some_and(|(id, want, _)| id.is_none() && img == *want),
        };
        assert!(ok, "{ctx}: copy {} reads wrong", c.id);
    }
    for (id, _, confirmed) in &out.copies {
        let id = match id {
            Some(id) => id,
            None => continue,
        };
        let deleted = out.deleted.iter().find(|(d, _)| d == id);
        let must_exist = *confirmed && deleted.is_none();
        if must_exist {
            assert!(listed.iter().any(|c| c.id == *id), "{ctx}: confirmed copy {id} lost");
        }
        if deleted.is_some_and(|(_, done)| *done) {
            assert!(!listed.iter().any(|c| c.id == *id), "{ctx}: deleted copy {id} came back");
        }
    }
    syncs
}

fn every_sync_point(merges: Merges) {
    for chunk in [4096u32, 16384] {
        let total = run(None, PowerLoss::DropUnsynced, chunk, merges);
        assert!(total > 10, "the workload syncs {total} times");
        for n in 1..=total + 1 {
            run(Some(n), PowerLoss::DropUnsynced, chunk, merges);
            for seed in 0..4 {
                run(Some(n), PowerLoss::Writeback { seed: n * 31 + seed }, chunk, merges);
            }
        }
    }
}

#[test]
fn every_sync_point_recovers_exactly() {
    every_sync_point(Merges::Sometimes);
}

/// Every commit writes a new checkpointed index and switches the journal to it: power lost at
/// any sync of a merge leaves the old checkpoint or the new one, never a mix.
#[test]
fn every_sync_point_of_a_merge_recovers_exactly() {
    every_sync_point(Merges::EveryCommit);
}
