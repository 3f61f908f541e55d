//! The diff area on real files: reopen, exclusive lock, format versions, damage, and failing
//! disks (full, broken). Each test names the failure it pins.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use shadowcopy::{create_set, CreateOptions, DiffAreaError, DiffAreaOptions, EngineOptions, Error, Event, MaxSize, ShadowVolume};

use common::*;

const SIZE: usize = 4 << 20;

fn image(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("volume.img");
    std::fs::write(&p, pattern(1, SIZE)).unwrap();
    p
}

/// A temporary directory with a volume image and a new, unbounded diff area for it.
fn fresh() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf, ShadowVolume) {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let da = dir.path().join("diff");
    let vol = ShadowVolume::create_at(&img, &da, unbounded(), EngineOptions::default()).unwrap();
    (dir, img, da, vol)
}

fn unbounded() -> DiffAreaOptions {
    DiffAreaOptions { chunk_size: 16384, max_size: MaxSize::Unbounded }
}

fn read_all(vol: &ShadowVolume, id: uuid::Uuid) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; SIZE];
    vol.read_copy(id, &mut buf, 0).map(|()| buf)
}

#[test]
fn persistent_copies_survive_reopen_and_volatile_ones_do_not() {
    let (_dir, img, da, vol) = fresh();
    let before = std::fs::read(&img).unwrap();
    let p = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    vol.write_at(&pattern(2, 1 << 20), 12345).unwrap();
    let mid = {
        let mut b = vec![0u8; SIZE];
        vol.read_at(&mut b, 0).unwrap();
        b
    };
    let v = create_set(&[&vol], CreateOptions { volatile: true, attributes: 0 }).unwrap().copies[0].id;
    vol.write_at(&pattern(3, 2 << 20), 1 << 20).unwrap();
    assert_eq!(read_all(&vol, v).unwrap(), mid);
    vol.close().unwrap();

    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    let ids: Vec<_> = vol.copies().iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![p], "only the persistent copy comes back");
    assert_eq!(read_all(&vol, p).unwrap(), before);
}

#[test]
fn a_second_opener_is_refused() {
    let (_dir, img, da, _vol) = fresh();
    match ShadowVolume::open_at(&img, &da, EngineOptions::default()) {
        Err(Error::Locked(_)) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// Pins the bug where `shadowcopy offline` opened images without the daemon's exclusive lock:
/// a second diff area on an image that one is already serving could write it behind the first.
#[test]
fn an_image_in_use_is_refused_even_with_another_diff_area() {
    let (dir, img, _da, _vol) = fresh();
    match ShadowVolume::create_at(&img, &dir.path().join("other-diff"), unbounded(), EngineOptions::default()) {
        Err(Error::Open(shadowcopy::volume::OpenError::Locked(p))) => assert_eq!(p, img),
        other => panic!("expected the image to be locked, got {other:?}"),
    }
}

#[test]
fn a_newer_format_is_refused_with_a_clear_error() {
    let (_dir, img, da, vol) = fresh();
    vol.close().unwrap();
    // Rewrite the header as a future version would (version 3, valid checksum).
    let j = OpenOptions::new().read(true).write(true).open(da.join("journal.0")).unwrap();
    let mut h = vec![0u8; 4096];
    j.read_exact_at(&mut h, 0).unwrap();
    h[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32c::crc32c(&h[..64]);
    h[64..68].copy_from_slice(&crc.to_le_bytes());
    j.write_all_at(&h, 0).unwrap();
    let err = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap_err();
    assert!(matches!(err, Error::DiffArea(DiffAreaError::NewerFormat { found: 3, supported: 2 })), "{err:?}");
    assert!(err.to_string().contains("upgrade shadowcopy"), "{err}");
}

#[test]
fn the_wrong_volume_is_refused() {
    let (_dir, img, da, vol) = fresh();
    vol.close().unwrap();
    std::fs::write(&img, vec![0u8; SIZE / 2]).unwrap();
    let err = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap_err();
    assert!(matches!(err, Error::VolumeSizeMismatch { .. }), "{err:?}");
}

#[test]
fn journal_damage_fails_the_copies_it_touches_and_keeps_the_rest() {
    let (_dir, img, da, vol) = fresh();
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    let damaged_from = std::fs::metadata(da.join("journal.0")).unwrap().len();
    vol.write_at(&pattern(5, 1 << 20), 0).unwrap();
    vol.flush().unwrap();
    let b = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    let b_image = read_all(&vol, b).unwrap();
    vol.write_at(&pattern(6, 2 << 20), 0).unwrap();
    vol.close().unwrap();

    // Flip a byte inside the batch that holds the records written after copy A.
    let j = OpenOptions::new().read(true).write(true).open(da.join("journal.0")).unwrap();
    let mut byte = [0u8; 1];
    j.read_exact_at(&mut byte, damaged_from + 40).unwrap();
    j.write_all_at(&[byte[0] ^ 0x5a], damaged_from + 40).unwrap();

    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    let copies = vol.copies();
    let ca = copies.iter().find(|c| c.id == a).expect("A is still listed");
    assert!(ca.failed.as_deref().is_some_and(|r| r.contains("damaged")), "A must be marked failed: {:?}", ca.failed);
    assert!(matches!(read_all(&vol, a), Err(Error::CopyFailed { .. })));
    assert!(vol.take_events().iter().any(|e| matches!(e, Event::CopyFailed { id, .. } if *id == a)));
    assert_eq!(read_all(&vol, b).unwrap(), b_image, "B, made after the damage, stays exact");
    vol.close().unwrap();
    // The failure mark is durable; B still good after another reopen.
    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    assert!(vol.copies().iter().find(|c| c.id == a).unwrap().failed.is_some());
    assert_eq!(read_all(&vol, b).unwrap(), b_image);
}

#[test]
fn a_torn_journal_tail_is_cut_off() {
    let (_dir, img, da, vol) = fresh();
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    let a_image = read_all(&vol, a).unwrap();
    vol.close().unwrap();
    let j = OpenOptions::new().append(true).open(da.join("journal.0")).unwrap();
    let len = j.metadata().unwrap().len();
    j.write_all_at(b"\x42\x54\x43\x48garbage of a batch cut short", len).unwrap();
    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    assert_eq!(read_all(&vol, a).unwrap(), a_image);
    vol.close().unwrap();
    // The torn tail was cut off before anything was appended (the open's and the close's
    // batches now follow the last good one), and the journal reopens clean.
    let journal = std::fs::read(da.join("journal.0")).unwrap();
    assert!(!journal.windows(8).any(|w| w == b"garbage "), "the torn batch is gone");
    assert!(journal.len() as u64 > len, "new batches were written where the torn one was");
    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    assert_eq!(read_all(&vol, a).unwrap(), a_image);
}

#[test]
fn a_full_disk_under_the_diff_area_deletes_copies_never_fails_a_write() {
    let initial = pattern(8, 1 << 20);
    let (disk, vol) = create(initial, DiffAreaOptions { chunk_size: 4096, max_size: MaxSize::Unbounded }, quiet_engine());
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    vol.write_at(&pattern(9, 64 << 10), 0).unwrap();
    let b = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    let b_image = {
        let mut x = vec![0u8; 1 << 20];
        vol.read_copy(b, &mut x, 0).unwrap();
        x
    };
    disk.set_write_error(STORE, Some(libc::ENOSPC));
    // Every live write succeeds; copies give way, oldest first.
    for i in 0..16u64 {
        vol.write_at(&pattern(10 + i, 64 << 10), (i * 64) << 10).unwrap();
    }
    vol.flush().unwrap();
    let events = vol.take_events();
    assert!(events.iter().any(|e| matches!(e, Event::CopyDeleted { id, .. } if *id == a)), "{events:?}");
    let mut live = vec![0u8; 1 << 20];
    vol.read_at(&mut live, 0).unwrap();
    for i in 0..16u64 {
        assert!(live[(i as usize * 64) << 10..((i as usize + 1) * 64) << 10] == pattern(10 + i, 64 << 10)[..]);
    }
    // Whatever copy is left still reads exactly.
    for c in vol.copies() {
        assert_eq!(c.id, b);
        let mut x = vec![0u8; 1 << 20];
        vol.read_copy(b, &mut x, 0).unwrap();
        assert_eq!(x, b_image);
    }
}

#[test]
fn a_broken_diff_area_sacrifices_copies_never_live_writes() {
    let initial = pattern(11, 1 << 20);
    let (disk, vol) = create(initial, DiffAreaOptions { chunk_size: 4096, max_size: MaxSize::Unbounded }, quiet_engine());
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    disk.set_write_error(STORE, Some(libc::EIO));
    vol.write_at(&pattern(12, 100_000), 5000).unwrap();
    vol.flush().unwrap();
    let failed = vol.copies();
    assert!(failed[0].failed.is_some(), "the copy must be marked failed");
    assert!(matches!(vol.read_copy(a, &mut [0u8; 10], 0), Err(Error::CopyFailed { .. })));
    assert!(matches!(create_set(&[&vol], CreateOptions::default()), Err(Error::Unavailable(_))));
    let mut live = vec![0u8; 100_000];
    vol.read_at(&mut live, 5000).unwrap();
    assert_eq!(live, pattern(12, 100_000));
    vol.close().unwrap();
    // The failure was recorded durably: after reopen the copy is still failed, never wrong.
    disk.set_write_error(STORE, None);
    let vol = open(&disk, quiet_engine()).unwrap();
    assert!(vol.copies().iter().all(|c| c.failed.is_some()));
}

fn read_mib(vol: &ShadowVolume, id: uuid::Uuid) -> Vec<u8> {
    let mut x = vec![0u8; 1 << 20];
    vol.read_copy(id, &mut x, 0).unwrap();
    x
}

/// File id of the first redo file on the simulated disk (see `common`).
const REDO0: usize = 4;

#[test]
fn a_redo_log_that_cannot_be_written_makes_held_writes_wait_for_their_commit() {
    let initial = pattern(13, 1 << 20);
    let (disk, vol) = create(initial.clone(), DiffAreaOptions { chunk_size: 4096, max_size: MaxSize::Unbounded }, quiet_engine());
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    // A held write with a working log: answered while its bytes are not on the volume yet.
    vol.write_at(&pattern(14, 10_000), 0).unwrap();
    assert_eq!(disk.visible(VOLUME)[..10_000], initial[..10_000], "the first write is held back");
    assert!(disk.visible(REDO0).len() > 10_000, "... and in the redo log");
    // The log's filesystem is full: the next held write is on the volume when it is answered.
    disk.set_write_error(REDO0, Some(libc::ENOSPC));
    vol.write_at(&pattern(15, 10_000), 200_000).unwrap();
    assert_eq!(disk.visible(VOLUME)[200_000..210_000], pattern(15, 10_000)[..]);
    // And so is every later one, though the log's files work again.
    disk.set_write_error(REDO0, None);
    vol.write_at(&pattern(16, 10_000), 400_000).unwrap();
    assert_eq!(disk.visible(VOLUME)[400_000..410_000], pattern(16, 10_000)[..]);
    // The process dies: nothing answered is lost and the copy is exact.
    let disk = disk.after_process_death();
    drop(vol);
    let vol = open(&disk, quiet_engine()).unwrap();
    let mut live = vec![0u8; 1 << 20];
    vol.read_at(&mut live, 0).unwrap();
    let mut want = initial.clone();
    want[..10_000].copy_from_slice(&pattern(14, 10_000));
    want[200_000..210_000].copy_from_slice(&pattern(15, 10_000));
    want[400_000..410_000].copy_from_slice(&pattern(16, 10_000));
    assert!(live == want);
    assert!(read_mib(&vol, a) == initial);
}

#[test]
fn a_replay_cut_short_by_another_death_is_replayed_again() {
    let initial = pattern(17, 1 << 20);
    let (disk, vol) = create(initial.clone(), DiffAreaOptions { chunk_size: 4096, max_size: MaxSize::Unbounded }, quiet_engine());
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    let mut want = initial.clone();
    for i in 0..20u64 {
        let (at, data) = ((i * 37_000) as usize, pattern(100 + i, 5000));
        vol.write_at(&data, at as u64).unwrap();
        want[at..at + data.len()].copy_from_slice(&data);
    }
    let disk = disk.after_process_death();
    drop(vol);
    // The next process dies at its first sync, in the middle of the replay's flush.
    disk.crash_at_sync(1);
    assert!(open(&disk, quiet_engine()).is_err());
    // That death kept the page cache too: what it had written stays, and so does the log.
    let disk = disk.after_process_death();
    let vol = open(&disk, quiet_engine()).unwrap();
    assert!(vol.redo_report().replayed_bytes >= 20 * 5000, "{:?}", vol.redo_report());
    let mut live = vec![0u8; 1 << 20];
    vol.read_at(&mut live, 0).unwrap();
    assert!(live == want, "every answered write is back");
    assert!(read_mib(&vol, a) == initial, "the copy is exact");
    vol.close().unwrap();
    // After a clean close the log is empty and the next open replays nothing.
    let vol = open(&disk, quiet_engine()).unwrap();
    assert_eq!(vol.redo_report().replayed_writes, 0);
}

thread_local! {
    /// Where this thread's `create_set` is cut short (a panic, standing for a crash).
    static CUT_AT: std::cell::Cell<Option<shadowcopy::SetStep>> = const { std::cell::Cell::new(None) };
}

/// Takes a persistent set of `volumes`, cut short at `cut` (a panic at that step, as if the
/// process died there), or whole with `None`.
fn set_cut_at(volumes: &[&ShadowVolume], cut: Option<shadowcopy::SetStep>) {
    shadowcopy::set_hooks::install(|step| {
        if CUT_AT.with(|c| c.get()) == Some(step) {
            panic!("cut short at {step:?}");
        }
    });
    CUT_AT.with(|c| c.set(cut));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| create_set(volumes, CreateOptions::default())));
    CUT_AT.with(|c| c.set(None));
    assert_eq!(r.is_err(), cut.is_some(), "the set was cut short exactly when asked");
}

/// Two volumes with diff areas, reopened from disk by `reopen`.
struct Two {
    _dir: tempfile::TempDir,
    paths: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Two {
    fn new() -> (Two, Vec<ShadowVolume>) {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        let mut vols = Vec::new();
        for name in ["a", "b"] {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            let img = image(&sub);
            let da = sub.join("diff");
            // A tiny compaction threshold: every commit compacts, so the marks must survive it.
            let options = EngineOptions { journal_compact_bytes: Some(4096), ..EngineOptions::default() };
            vols.push(ShadowVolume::create_at(&img, &da, unbounded(), options).unwrap());
            paths.push((img, da));
        }
        (Two { _dir: dir, paths }, vols)
    }

    fn reopen(&self) -> Vec<ShadowVolume> {
        self.paths.iter().map(|(img, da)| ShadowVolume::open_at(img, da, EngineOptions::default()).unwrap()).collect()
    }
}

#[test]
fn a_whole_set_of_two_volumes_is_marked_complete_and_the_mark_survives_compaction_and_reopen() {
    let (two, vols) = Two::new();
    set_cut_at(&[&vols[0], &vols[1]], None);
    for v in &vols {
        v.write_at(&pattern(5, 1 << 20), 0).unwrap();
        v.flush().unwrap();
    }
    drop(vols);
    let vols = two.reopen();
    for v in &vols {
        assert_eq!(v.copies().len(), 1);
        assert!(v.unfinished_set_copies().is_empty(), "the set's completion was journaled and kept");
    }
}

#[test]
fn a_set_cut_short_after_every_copy_was_durable_is_left_for_the_caller_to_complete() {
    let (two, vols) = Two::new();
    set_cut_at(&[&vols[0], &vols[1]], Some(shadowcopy::SetStep::BeforeComplete));
    drop(vols);
    let vols = two.reopen();
    let unfinished: Vec<_> = vols.iter().map(|v| v.unfinished_set_copies()).collect();
    assert_eq!(unfinished.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1], "both copies exist, neither is marked");
    assert_eq!(unfinished[0][0].set_id, unfinished[1][0].set_id);
    for (v, u) in vols.iter().zip(&unfinished) {
        v.complete_set(u[0].id).unwrap();
    }
    drop(vols);
    for v in two.reopen() {
        assert!(v.unfinished_set_copies().is_empty(), "completed for good");
    }
}

#[test]
fn a_set_cut_short_between_volumes_is_on_the_first_volume_only_and_unfinished_there() {
    let (two, vols) = Two::new();
    set_cut_at(&[&vols[0], &vols[1]], Some(shadowcopy::SetStep::BetweenVolumes));
    drop(vols);
    let vols = two.reopen();
    assert_eq!(vols[0].unfinished_set_copies().len(), 1, "the first volume's copy was durable, unmarked");
    assert!(vols[1].copies().is_empty(), "the second volume's copy never became durable");
}

#[test]
fn a_write_behind_the_back_after_a_clean_close_marks_earlier_copies_stale_durably() {
    let (_dir, img, da, vol) = fresh();
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    vol.close().unwrap();
    // Reopened untouched: ok.
    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    assert_eq!(vol.copy(a).unwrap().stale, None, "a clean close and open leaves copies ok");
    vol.close().unwrap();
    // Written where a filesystem's superblock lives, with nobody serving the volume.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"mounted elsewhere", 1024).unwrap();
    drop(f);
    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    assert!(vol.copy(a).unwrap().stale.is_some(), "the copy taken before is stale");
    let b = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    drop(vol); // not a clean close: no seal
    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    assert!(vol.copy(a).unwrap().stale.is_some(), "stale is durable");
    assert_eq!(vol.copy(b).unwrap().stale, None, "the copy taken after is ok");
}

#[test]
fn the_seal_survives_a_compaction_at_close() {
    // Every commit compacts: the seal's own commit too.
    let options = EngineOptions { journal_compact_bytes: Some(1), ..EngineOptions::default() };
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let da = dir.path().join("diff");
    let vol = ShadowVolume::create_at(&img, &da, unbounded(), options).unwrap();
    let a = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    vol.write_at(&pattern(4, 64 << 10), 0).unwrap();
    vol.close().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"mounted elsewhere", 2048).unwrap();
    drop(f);
    let vol = ShadowVolume::open_at(&img, &da, options).unwrap();
    assert!(vol.copy(a).unwrap().stale.is_some(), "the write behind the back was noticed through a compacted journal");
}

/// A 4 KiB-chunk, unbounded diff area on a new image in `dir`, opened with `engine`.
fn small_chunks(dir: &Path, engine: EngineOptions) -> (std::path::PathBuf, std::path::PathBuf, ShadowVolume) {
    let img = image(dir);
    let da = dir.join("diff");
    let small = DiffAreaOptions { chunk_size: 4096, max_size: MaxSize::Unbounded };
    let vol = ShadowVolume::create_at(&img, &da, small, engine).unwrap();
    (img, da, vol)
}

/// Writes every chunk of the volume, 64 KiB and a flush at a time (many commits: with a small
/// journal budget, many merges), with patterns from `seed` on.
fn overwrite_all_flushing(vol: &ShadowVolume, seed: u64) {
    for i in 0..(SIZE / 65536) {
        vol.write_at(&pattern(seed + i as u64, 65536), (i * 65536) as u64).unwrap();
        vol.flush().unwrap();
    }
}

/// The index a merge checkpointed is opened, not rebuilt: the open reads none of its pages and
/// replays only the journal's tail, then lookups read pages through the cache and answer as
/// before; a deletion after the checkpoint still frees its space after a reopen.
#[test]
fn an_open_reads_no_page_of_the_checkpoint_and_copies_read_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let merging = EngineOptions { journal_compact_bytes: Some(4096), ..EngineOptions::default() };
    let (img, da, vol) = small_chunks(dir.path(), merging);
    let first_image = std::fs::read(&img).unwrap();
    let first = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    // Every chunk preserved for `first`, in many commits: the journal passes 4 KiB many times.
    overwrite_all_flushing(&vol, 100);
    let second_image = {
        let mut b = vec![0u8; SIZE];
        vol.read_at(&mut b, 0).unwrap();
        b
    };
    let second = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    vol.write_at(&pattern(7, 8192), 4096).unwrap();
    vol.close().unwrap();

    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    let usage = vol.usage();
    let chunks = (SIZE / 4096) as u64;
    assert!(usage.checkpointed_chunks >= chunks / 2, "most records are in the checkpoint: {usage:?}");
    assert_eq!(usage.preserved_chunks as u64, chunks + 2, "{usage:?}");
    assert_eq!((usage.index_cache.hits, usage.index_cache.misses), (0, 0), "the open read no page: {usage:?}");
    assert!(usage.index_disk_bytes >= usage.checkpointed_chunks * 16, "{usage:?}");
    assert!(usage.open_duration.is_some());
    assert!(read_all(&vol, first).unwrap() == first_image, "the first copy reads through the checkpoint");
    assert!(read_all(&vol, second).unwrap() == second_image, "the second copy too");
    let after = vol.usage();
    assert!(after.index_cache.misses > 0 && after.index_cache.hits > 0, "{after:?}");

    // Deleting the first copy makes the checkpoint's records garbage: the space comes back,
    // and stays back after a reopen.
    vol.delete(first).unwrap();
    let used = vol.usage().slots_in_use;
    assert_eq!(used, 2, "only the second copy's two chunks remain");
    drop(vol);
    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    assert_eq!(vol.usage().slots_in_use, 2, "{:?}", vol.usage());
    assert!(read_all(&vol, second).unwrap() == second_image);
}

/// Space freed by deleting a copy whose records are in the checkpoint comes back at once (the
/// deletion merges), the store shrinks, the space is reused, and the diff area opens after.
#[test]
fn the_store_is_not_cut_below_the_checkpoint_before_the_next_merge() {
    let dir = tempfile::tempdir().unwrap();
    // No background commits (so no merge the test does not ask for).
    let engine = EngineOptions {
        journal_compact_bytes: Some(4096),
        commit_interval: std::time::Duration::from_secs(3600),
        ..EngineOptions::default()
    };
    let (img, da, vol) = small_chunks(dir.path(), engine);
    let gone = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    overwrite_all_flushing(&vol, 300);
    vol.close().unwrap();
    // Reopened so that no commit merges by the journal's size: only the deletion does.
    let engine = EngineOptions { journal_compact_bytes: Some(1 << 30), ..engine };
    let vol = ShadowVolume::open_at(&img, &da, engine).unwrap();
    assert!(vol.usage().checkpointed_chunks > 0);
    vol.delete(gone).unwrap();
    let usage = vol.resize(MaxSize::Unbounded).unwrap();
    assert_eq!(usage.slots_in_use, 0);
    let kept = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    let before = std::fs::read(&img).unwrap();
    vol.write_at(&pattern(9, 4096), 0).unwrap();
    drop(vol);
    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    assert!(read_all(&vol, kept).unwrap() == before, "the copy taken after the shrink reads right");
    assert_eq!(vol.usage().slots_in_use, 1, "{:?}", vol.usage());
}

/// A checkpointed index page that does not match its checksum is an error, never a wrong
/// answer: a read of the copy gets an error, a live write over it goes on (the diff area stops,
/// its copies are marked failed) and lands on the volume.
#[test]
fn a_damaged_index_page_fails_reads_and_copies_never_live_writes() {
    let dir = tempfile::tempdir().unwrap();
    let merging = EngineOptions { journal_compact_bytes: Some(4096), ..EngineOptions::default() };
    let (img, da, vol) = small_chunks(dir.path(), merging);
    let copy = create_set(&[&vol], CreateOptions::default()).unwrap().copies[0].id;
    overwrite_all_flushing(&vol, 500);
    vol.close().unwrap();
    // The checkpoint in use is the index file that is not empty; damage a record of its first page.
    let index = ["index.0", "index.1"].map(|f| da.join(f)).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&index).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 4096 + 8 + 5).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], 4096 + 8 + 5).unwrap();
    drop(f);

    let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = vol.read_copy(copy, &mut buf, 0).unwrap_err();
    assert!(err.to_string().contains("checkpointed index is damaged"), "{err}");
    let data = pattern(77, 4096);
    vol.write_at(&data, 0).unwrap();
    assert!(vol.failure().is_some_and(|f| f.contains("index")), "{:?}", vol.failure());
    assert!(vol.copies().iter().all(|c| c.failed.is_some()), "the copies are marked failed");
    vol.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, data, "the live write landed");
}
