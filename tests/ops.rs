//! Whole-volume operations and multi-volume sets: export, changed ranges, revert, and the one
//! instant shared by every copy of a set.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use shadowcopy::testing::MemStorage;
use shadowcopy::{create_set, ChangedRange, CreateOptions, DiffAreaFiles, DiffAreaOptions, EngineOptions, MaxSize, ShadowVolume};

use common::*;

const SIZE: usize = 2 << 20;
const CHUNK: u64 = 16384;

fn mem_volume(initial: Vec<u8>) -> ShadowVolume {
    let m = || Arc::new(MemStorage::default());
    ShadowVolume::create(
        Arc::new(MemStorage::from_vec(initial)),
        DiffAreaFiles::new(m(), [m(), m()], [m(), m()]),
        DiffAreaOptions { chunk_size: CHUNK as u32, max_size: MaxSize::Unbounded },
        EngineOptions::default(),
    )
    .unwrap()
}

fn image_of(vol: &ShadowVolume, id: Option<uuid::Uuid>) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size() as usize];
    match id {
        Some(id) => vol.read_copy(id, &mut buf, 0).unwrap(),
        None => vol.read_at(&mut buf, 0).unwrap(),
    }
    buf
}

#[test]
fn export_writes_the_copy_sparsely_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    // Half zeros, half data: the zero half must not take disk space in the export.
    let mut initial = vec![0u8; SIZE];
    initial[SIZE / 2..].copy_from_slice(&pattern(1, SIZE / 2));
    let vol = mem_volume(initial.clone());
    let id = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    vol.write_at(&pattern(2, SIZE), 0).unwrap();
    let out = dir.path().join("copy.img");
    let mut calls = Vec::new();
    vol.export(id, &out, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), initial);
    assert_eq!(calls.last(), Some(&(SIZE as u64, SIZE as u64)));
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "progress only grows");
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(allocated <= (SIZE / 2) as u64 + 65536, "export is not sparse: {allocated} bytes allocated");
}

#[test]
fn changed_ranges_cover_exactly_the_chunks_written() {
    let vol = mem_volume(pattern(3, SIZE));
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    vol.write_at(&[1u8; 100], 5 * CHUNK + 10).unwrap(); // chunk 5
    vol.write_at(&[2u8; 40_000], 20 * CHUNK).unwrap(); // chunks 20..=22
    let b = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    vol.write_at(&[3u8; 1], 21 * CHUNK).unwrap(); // chunk 21
    vol.write_at(&[4u8; 1], 40 * CHUNK).unwrap(); // chunk 40
    let r = |o: u64, n: u64| ChangedRange { offset: o * CHUNK, len: n * CHUNK };
    assert_eq!(vol.changed_ranges(a, Some(b)).unwrap(), vec![r(5, 1), r(20, 3)]);
    assert_eq!(vol.changed_ranges(b, Some(a)).unwrap(), vec![r(5, 1), r(20, 3)], "order of the two copies does not matter");
    assert_eq!(vol.changed_ranges(b, None).unwrap(), vec![r(21, 1), r(40, 1)]);
    assert_eq!(vol.changed_ranges(a, None).unwrap(), vec![r(5, 1), r(20, 3), r(40, 1)]);
    // The ranges are enough to rebuild B from A: what incremental backup relies on.
    let mut rebuilt = image_of(&vol, Some(a));
    let img_b = image_of(&vol, Some(b));
    for c in vol.changed_ranges(a, Some(b)).unwrap() {
        let (s, e) = (c.offset as usize, (c.offset + c.len) as usize);
        rebuilt[s..e].copy_from_slice(&img_b[s..e]);
    }
    assert_eq!(rebuilt, img_b);
}

#[test]
fn revert_restores_the_copy_and_keeps_every_other_copy() {
    let vol = mem_volume(pattern(4, SIZE));
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    let img_a = image_of(&vol, Some(a));
    vol.write_at(&pattern(5, SIZE / 2), 12_345).unwrap();
    let b = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    let img_b = image_of(&vol, Some(b));
    vol.write_at(&pattern(6, 300_000), 1_000_000).unwrap();
    let mut last = (0, 0);
    vol.revert(a, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(image_of(&vol, None), img_a, "live equals A after revert");
    assert_eq!(last.0, last.1, "progress reaches the total");
    assert_eq!(image_of(&vol, Some(a)), img_a, "A unchanged");
    assert_eq!(image_of(&vol, Some(b)), img_b, "B unchanged");
}

/// One instant for the whole set: a writer writes 1, 2, 3, … alternately to volumes A and B
/// (odd numbers to A, even to B, each waiting for the previous); in every set the two copies'
/// last numbers differ by at most one (the one write that may be in flight).
#[test]
fn every_copy_of_a_set_shares_one_instant() {
    let a = Arc::new(mem_volume(vec![0u8; 1 << 20]));
    let b = Arc::new(mem_volume(vec![0u8; 1 << 20]));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (a, b, stop, written) = (a.clone(), b.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                written.store(n, Ordering::Relaxed);
                let v = if n % 2 == 1 { &a } else { &b };
                v.write_at(&n.to_le_bytes(), 4096 * (n % 64)).unwrap();
                v.write_at(&n.to_le_bytes(), 0).unwrap();
            }
            n
        })
    };
    let mut sets = 0;
    let started = std::time::Instant::now();
    // Enough sets, taken while enough writes went on (bounded in time).
    while (sets < 300 || written.load(Ordering::Relaxed) < 5000) && started.elapsed().as_secs() < 60 {
        let set = create_set(&[&a, &b], CreateOptions { volatile: sets % 2 == 0, attributes: 0 }).unwrap();
        let read = |v: &ShadowVolume, id| {
            let mut x = [0u8; 8];
            v.read_copy(id, &mut x, 0).unwrap();
            u64::from_le_bytes(x)
        };
        let (na, nb) = (read(&a, set.copies[0].id), read(&b, set.copies[1].id));
        assert!(na.abs_diff(nb) <= 1, "set {sets}: A holds {na}, B holds {nb}");
        for (v, c) in [(&a, &set.copies[0]), (&b, &set.copies[1])] {
            v.delete(c.id).unwrap();
        }
        sets += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let n = writer.join().unwrap();
    assert!(sets >= 300 && n >= 5000, "{sets} sets during {n} writes");
}
