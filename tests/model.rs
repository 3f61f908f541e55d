//! Model-based test of the engine: random sequences of live writes and hole punches, copy
//! creation (persistent and volatile), deletion of random copies, reads of random ranges of any
//! copy, flushes, clean reopens, deaths of the process (memory lost, page cache kept) and power
//! losses at random syncs — checked against a reference that keeps a full image of the volume at
//! every copy's instant.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use shadowcopy::testing::PowerLoss;
use shadowcopy::{create_set, CreateOptions, DeleteReason, DiffAreaOptions, Event, MaxSize, ShadowVolume};
use uuid::Uuid;

use common::*;

const SIZE: usize = 197_632; // not a multiple of the chunk size: the last chunk is short
const CHUNK: u32 = 4096;

#[derive(Debug, Clone)]
enum Op {
    Write {
        offset: usize,
        len: usize,
        seed: u64,
    },
    Punch {
        offset: usize,
        len: usize,
    },
    Create {
        volatile: bool,
    },
    Delete {
        pick: usize,
    },
    Read {
        pick: usize,
        offset: usize,
        len: usize,
    },
    Flush,
    Reopen,
    /// The process dies (its memory is lost, the kernel's page cache is kept) and a new one
    /// opens the volume.
    Die,
    /// Lose power at the `at`-th sync from now (or now, if the ops run out first).
    Crash {
        at: u64,
        writeback: bool,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|o| (Just(o), 1..=(SIZE - o).min(40_000)));
    prop_oneof![
        10 => (range.clone(), any::<u64>()).prop_map(|((offset, len), seed)| Op::Write { offset, len, seed }),
        1 => range.clone().prop_map(|(offset, len)| Op::Punch { offset, len }),
        3 => any::<bool>().prop_map(|volatile| Op::Create { volatile }),
        2 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        6 => (any::<usize>(), range).prop_map(|(pick, (offset, len))| Op::Read { pick, offset, len }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Die),
        1 => (1u64..12, any::<bool>(), any::<u64>()).prop_map(|(at, writeback, seed)| Op::Crash { at, writeback, seed }),
    ]
}

#[derive(Debug, Clone)]
struct ModelCopy {
    image: Vec<u8>,
    persistent: bool,
    /// Creation order.
    seq: usize,
}

struct Model {
    live: Vec<u8>,
    /// The live image as of the last completed flush, and which bytes were written since.
    flushed: Vec<u8>,
    dirty: Vec<bool>,
    copies: BTreeMap<Uuid, ModelCopy>,
}

impl Model {
    fn write(&mut self, offset: usize, data: &[u8]) {
        self.live[offset..offset + data.len()].copy_from_slice(data);
        self.dirty[offset..offset + data.len()].iter_mut().for_each(|d| *d = true);
    }
    fn flushed_now(&mut self) {
        self.flushed = self.live.clone();
        self.dirty.iter_mut().for_each(|d| *d = false);
    }
}

fn pick(copies: &BTreeMap<Uuid, ModelCopy>, n: usize) -> Option<Uuid> {
    (!copies.is_empty()).then(|| *copies.keys().nth(n % copies.len()).unwrap())
}

fn check_copies(vol: &ShadowVolume, model: &Model) -> Result<(), TestCaseError> {
    let listed: Vec<Uuid> = vol.copies().iter().map(|c| c.id).collect();
    let mut want: Vec<Uuid> = model.copies.keys().copied().collect();
    let mut got = listed.clone();
    want.sort();
    got.sort();
    prop_assert_eq!(got, want, "the set of copies");
    for (id, c) in &model.copies {
        let mut buf = vec![0u8; SIZE];
        vol.read_copy(*id, &mut buf, 0).map_err(|e| TestCaseError::fail(format!("read {id}: {e}")))?;
        prop_assert!(buf == c.image, "copy {} differs from its reference", id);
    }
    Ok(())
}

/// Runs ops until a crash; returns the index where the crash was armed, if one was.
fn run(ops: &[Op], max_size: MaxSize) -> Result<(), TestCaseError> {
    let bound = match max_size {
        MaxSize::Bytes(b) => Some(b),
        _ => None,
    };
    let initial = pattern(7, SIZE);
    let opts = DiffAreaOptions { chunk_size: CHUNK, max_size };
    let (mut disk, vol) = create(initial.clone(), opts, quiet_engine());
    let mut vol = Some(vol);
    let mut model = Model { live: initial.clone(), flushed: initial, dirty: vec![false; SIZE], copies: BTreeMap::new() };
    // Copies whose creation or deletion was under way when power went: either state is fine.
    let mut maybe: BTreeMap<Uuid, ModelCopy> = BTreeMap::new();
    let mut armed: Option<(bool, u64)> = None;

    for (seq, op) in ops.iter().enumerate() {
        if let Some(max) = bound {
            // A bounded diff area: copies deleted for space must be the oldest, and the diff
            // area never exceeds its maximum.
            let v = vol.as_ref().unwrap();
            for ev in v.take_events() {
                if let Event::CopyDeleted { id, reason: DeleteReason::DiffAreaFull } = ev {
                    let oldest = model.copies.iter().min_by_key(|(_, c)| c.seq).map(|(id, _)| *id);
                    prop_assert_eq!(Some(id), oldest, "the copy deleted for space is not the oldest");
                    model.copies.remove(&id);
                }
            }
            let used = v.usage().allocated_bytes;
            prop_assert!(used <= max, "diff area uses {} bytes, maximum {}", used, max);
            if matches!(op, Op::Crash { .. }) {
                continue;
            }
        }
        let v = vol.as_ref().unwrap();
        let crashed_during = |disk: &std::sync::Arc<shadowcopy::testing::SimDisk>| armed.is_some() && disk.crashed();
        match op {
            Op::Write { offset, len, seed } => {
                let data = pattern(*seed, *len);
                match v.write_at(&data, *offset as u64) {
                    Ok(()) => model.write(*offset, &data),
                    Err(_) if crashed_during(&disk) => {
                        model.write(*offset, &data); // bytes may or may not have landed: dirty
                        break;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("write: {e}"))),
                }
            }
            Op::Punch { offset, len } => match v.punch_zero(*offset as u64, *len as u64) {
                Ok(()) => model.write(*offset, &vec![0; *len]),
                Err(_) if crashed_during(&disk) => {
                    model.write(*offset, &vec![0; *len]);
                    break;
                }
                Err(e) => return Err(TestCaseError::fail(format!("punch: {e}"))),
            },
            Op::Create { volatile } => {
                match create_set(&[v], CreateOptions { volatile: *volatile, attributes: 0 }) {
                    Ok(set) => {
                        model.copies.insert(set.copies[0].id, ModelCopy { image: model.live.clone(), persistent: !volatile, seq });
                    }
                    Err(_) if crashed_during(&disk) => {
                        // The id is unknown; after reboot any copy not in the model is checked
                        // against the live image of this instant.
                        maybe.insert(Uuid::nil(), ModelCopy { image: model.live.clone(), persistent: true, seq });
                        break;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("create: {e}"))),
                }
            }
            Op::Delete { pick: p } => {
                if let Some(id) = pick(&model.copies, *p) {
                    match v.delete(id) {
                        Ok(_) => {
                            model.copies.remove(&id);
                        }
                        Err(_) if crashed_during(&disk) => {
                            let c = model.copies.remove(&id).unwrap();
                            maybe.insert(id, c);
                            break;
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("delete: {e}"))),
                    }
                }
            }
            Op::Read { pick: p, offset, len } => {
                if let Some(id) = pick(&model.copies, *p) {
                    let mut buf = vec![0u8; *len];
                    match v.read_copy(id, &mut buf, *offset as u64) {
                        Ok(()) => prop_assert!(
                            buf[..] == model.copies[&id].image[*offset..offset + len],
                            "read of copy {} at {}+{}",
                            id,
                            offset,
                            len
                        ),
                        Err(_) if crashed_during(&disk) => break,
                        Err(e) => return Err(TestCaseError::fail(format!("read: {e}"))),
                    }
                }
                let mut live = vec![0u8; *len];
                if v.read_at(&mut live, *offset as u64).is_ok() {
                    prop_assert!(live[..] == model.live[*offset..offset + len], "live read at {}+{}", offset, len);
                }
            }
            Op::Flush => match v.flush() {
                Ok(()) => model.flushed_now(),
                Err(_) if crashed_during(&disk) => break,
                Err(e) => return Err(TestCaseError::fail(format!("flush: {e}"))),
            },
            Op::Reopen => {
                if armed.is_some() {
                    continue;
                }
                vol.take().unwrap().close().map_err(|e| TestCaseError::fail(format!("close: {e}")))?;
                model.copies.retain(|_, c| c.persistent);
                model.flushed_now();
                let v = open(&disk, quiet_engine()).map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
                check_copies(&v, &model)?;
                vol = Some(v);
            }
            Op::Die => {
                if armed.is_some() {
                    continue;
                }
                let dead = vol.take().unwrap();
                let next = disk.after_process_death();
                drop(dead); // its last steps fail against the dead disk
                disk = next;
                model.copies.retain(|_, c| c.persistent);
                let v = open(&disk, quiet_engine()).map_err(|e| TestCaseError::fail(format!("open after process death: {e}")))?;
                // Every answered write survives a death of the process.
                let mut live = vec![0u8; SIZE];
                v.read_at(&mut live, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
                if let Some(i) = (0..SIZE).find(|&i| live[i] != model.live[i]) {
                    return Err(TestCaseError::fail(format!(
                        "answered byte {i} lost by a process death: {} != {}",
                        live[i], model.live[i]
                    )));
                }
                check_copies(&v, &model)?;
                vol = Some(v);
            }
            Op::Crash { at, writeback, seed } => {
                if armed.is_none() {
                    disk.crash_at_sync(*at);
                    armed = Some((*writeback, *seed));
                }
            }
        }
    }
    let Some((writeback, seed)) = armed else {
        // No crash: everything must still read right.
        let v = vol.as_ref().unwrap();
        if bound.is_some() {
            for ev in v.take_events() {
                if let Event::CopyDeleted { id, .. } = ev {
                    model.copies.remove(&id);
                }
            }
        }
        return check_copies(v, &model);
    };
    disk.crash_now();
    drop(vol.take()); // the process dies; its last calls fail against the dead disk
    let mode = if writeback { PowerLoss::Writeback { seed } } else { PowerLoss::DropUnsynced };
    disk = disk.after_power_loss(mode);
    let v = open(&disk, quiet_engine()).map_err(|e| TestCaseError::fail(format!("open after power loss: {e}")))?;

    // Live: every byte not written since the last completed flush is as flushed.
    let mut live = vec![0u8; SIZE];
    v.read_at(&mut live, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
    if let Some(i) = (0..SIZE).find(|&i| !model.dirty[i] && live[i] != model.flushed[i]) {
        return Err(TestCaseError::fail(format!("flushed byte {i} lost: {} != {}", live[i], model.flushed[i])));
    }
    // Copies: every persistent copy confirmed is back and exact; volatile ones are gone; a copy
    // being created or deleted at the crash may exist, and if so is exact.
    let listed = v.copies();
    for c in &listed {
        prop_assert!(c.failed.is_none(), "copy {} failed after power loss: {:?}", c.id, c.failed);
        let want = model.copies.get(&c.id).or(maybe.get(&c.id)).or(maybe.get(&Uuid::nil()));
        let Some(want) = want else { return Err(TestCaseError::fail(format!("unexpected copy {} after power loss", c.id))) };
        prop_assert!(want.persistent, "volatile copy {} survived", c.id);
        let mut buf = vec![0u8; SIZE];
        v.read_copy(c.id, &mut buf, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(buf == want.image, "copy {} differs after power loss", c.id);
    }
    for (id, c) in &model.copies {
        if c.persistent {
            prop_assert!(listed.iter().any(|l| l.id == *id), "persistent copy {} lost", id);
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("SHADOWCOPY_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1500)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 4000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops, MaxSize::Unbounded)?;
    }

    /// A diff area of 30 chunks for a volume of 49: writes keep succeeding, the oldest copies go.
    #[test]
    fn full_diff_area_deletes_oldest_copies_only(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops, MaxSize::Bytes(512 << 10))?;
    }
}
