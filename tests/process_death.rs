//! A death of the process loses no answered write: a child process runs a workload on a real
//! volume file and diff area (writes, persistent copies, deletions, flushes) and reports each
//! step before and after it; the test SIGKILLs it at a random moment, opens the volume again
//! (which replays the redo log) and checks, byte for byte, that every answered write is on the
//! volume and every copy reads what the volume held when it was taken. Forty rounds on the same
//! volume, half of them with the background commit slowed down to an hour so that answered
//! bytes are still held back when the child dies; the child merges its index every 32 KiB of
//! journal, so kills also land in merges.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shadowcopy::{create_set, CreateOptions, DiffAreaOptions, EngineOptions, MaxSize, ShadowVolume};
use uuid::Uuid;

const SIZE: usize = 8 << 20;
const ROUNDS: u64 = 40;
const PREFIX: &str = "SCDEATH ";

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("volume.img"), dir.join("diffarea"))
}

/// The child's side (this test binary run again with `SHADOWCOPY_DEATH_DIR` set): runs until
/// killed (or 100,000 steps), one line per step begun and done.
fn child_workload(dir: &str) {
    let seed: u64 = std::env::var("SHADOWCOPY_DEATH_SEED").unwrap().parse().unwrap();
    let (img, da) = paths(Path::new(dir));
    let slow = seed.is_multiple_of(2);
    let engine = EngineOptions {
        commit_interval: if slow { Duration::from_secs(3600) } else { Duration::from_millis(2) },
        pending_limit: if slow { 1 << 30 } else { 64 << 20 },
        // Merges every 32 KiB of journal: kills land in the middle of merges too.
        journal_compact_bytes: Some(32 << 10),
        // Redo checkpoints from 64 KiB: kills land around them too, and a file emptied by one
        // keeps its old entries past its new end (stale, never to be replayed).
        redo_checkpoint_bytes: Some(64 << 10),
        ..EngineOptions::default()
    };
    let vol = ShadowVolume::open_at(&img, &da, engine).expect("child: open");
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        writeln!(out, "{PREFIX}{line}").unwrap();
        out.flush().unwrap();
    };
    say("ready".into());
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..100_000u64 {
        let roll = rng.random_range(0..100);
        if roll < 4 {
            say(format!("begin {i} create"));
            let set = create_set(&[&vol], CreateOptions { volatile: false, attributes: 0 }).expect("child: create");
            say(format!("copy {i} {}", set.copies[0].id));
        } else if roll < 9 {
            let copies = vol.copies();
            if copies.len() > 4 {
                let id = copies[rng.random_range(0..copies.len())].id;
                say(format!("begin {i} delete {id}"));
                vol.delete(id).expect("child: delete");
                say(format!("ok {i}"));
            }
        } else if roll < 11 {
            say(format!("begin {i} flush"));
            vol.flush().expect("child: flush");
            say(format!("ok {i}"));
        } else {
            // Mostly small writes inside a few hot regions, so chunks are held and rewritten.
            let len = if rng.random_bool(0.8) { rng.random_range(1..=9000) } else { rng.random_range(1..=70_000) };
            let region = rng.random_range(0..4) * (SIZE / 4);
            let offset = region + rng.random_range(0..SIZE / 4 - len);
            let data_seed: u64 = rng.random();
            say(format!("begin {i} write {offset} {len} {data_seed}"));
            vol.write_at(&pattern(data_seed, len), offset as u64).expect("child: write");
            say(format!("ok {i}"));
        }
    }
}

/// Kills the child when dropped (a failing test leaves no process behind).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug)]
enum Step {
    Write { offset: usize, data: Vec<u8> },
    Create,
    Delete(Uuid),
    Flush,
}

fn parse(line: &str) -> (u64, Option<Step>, Option<Uuid>) {
    let w: Vec<&str> = line.split(' ').collect();
    let i: u64 = w[1].parse().unwrap();
    match w[0] {
        "begin" => {
            let step = match w[2] {
                "create" => Step::Create,
                "delete" => Step::Delete(w[3].parse().unwrap()),
                "flush" => Step::Flush,
                "write" => {
                    let (offset, len, seed): (usize, usize, u64) = (w[3].parse().unwrap(), w[4].parse().unwrap(), w[5].parse().unwrap());
                    Step::Write { offset, data: pattern(seed, len) }
                }
                other => panic!("unknown step {other}"),
            };
            (i, Some(step), None)
        }
        "copy" => (i, None, Some(w[2].parse().unwrap())),
        "ok" => (i, None, None),
        other => panic!("unknown line {other}"),
    }
}

#[test]
fn process_death_loses_no_answered_write() {
    if let Ok(dir) = std::env::var("SHADOWCOPY_DEATH_DIR") {
        return child_workload(&dir);
    }
    let tmp = tempfile::tempdir().unwrap();
    let (img, da) = paths(tmp.path());
    let initial = pattern(1, SIZE);
    std::fs::write(&img, &initial).unwrap();
    let opts = DiffAreaOptions { chunk_size: 4096, max_size: MaxSize::Unbounded };
    ShadowVolume::create_at(&img, &da, opts, EngineOptions::default()).unwrap().close().unwrap();

    let mut live = initial;
    let mut copies: BTreeMap<Uuid, Vec<u8>> = BTreeMap::new();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut replayed_rounds, mut replayed_bytes, mut answered_writes, mut in_flight_writes) = (0, 0u64, 0u64, 0u64);
    let (mut checkpointed_rounds, mut stale_rounds) = (0, 0);
    for round in 0..ROUNDS {
        let exe = std::env::current_exe().unwrap();
        let child = Command::new(exe)
            .args(["--exact", "process_death_loses_no_answered_write", "--nocapture", "--test-threads", "1"])
            .env("SHADOWCOPY_DEATH_DIR", tmp.path())
            .env("SHADOWCOPY_DEATH_SEED", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut child = ChildGuard(child);
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print its own words before ours on the first line.
                if let Some(at) = line.find(PREFIX) {
                    let _ = tx.send(line[at + PREFIX.len()..].to_string());
                }
            }
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).expect("the child did not start"), "ready");
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.0.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        let status = child.0.wait().unwrap();
        reader.join().unwrap();
        let lines: Vec<String> = rx.try_iter().collect();
        assert!(status.code().is_none(), "round {round}: the child ended by itself ({status}) instead of being killed");

        // What the child was told was done, and the one step it may have been in the middle of.
        let mut in_flight: Option<Step> = None;
        for line in &lines {
            let (_, begun, copy) = parse(line);
            if let Some(step) = begun {
                in_flight = Some(step);
                continue;
            }
            match in_flight.take().expect("an answer without a step") {
                Step::Write { offset, data } => {
                    live[offset..offset + data.len()].copy_from_slice(&data);
                    answered_writes += 1;
                }
                Step::Create => {
                    copies.insert(copy.expect("a create answers with its copy"), live.clone());
                }
                Step::Delete(id) => {
                    copies.remove(&id);
                }
                Step::Flush => {}
            }
        }

        let vol = ShadowVolume::open_at(&img, &da, EngineOptions::default()).unwrap();
        let report = vol.redo_report();
        if vol.usage().checkpointed_chunks > 0 {
            checkpointed_rounds += 1;
        }
        assert!(report.discarded.is_none(), "round {round}: {report:?}");
        // More than a torn entry (one chunk at most) past the end: entries from before a redo
        // checkpoint emptied the file, which the replay had to skip.
        if report.torn_bytes > 16 << 10 {
            stale_rounds += 1;
        }
        if report.replayed_bytes > 0 {
            replayed_rounds += 1;
            replayed_bytes += report.replayed_bytes;
        }
        let mut now = vec![0u8; SIZE];
        vol.read_at(&mut now, 0).unwrap();
        // Every byte is as answered, or (inside the write under way at the kill) as that write.
        for (i, (got, want)) in now.iter().zip(&live).enumerate() {
            if got != want {
                match &in_flight {
                    Some(Step::Write { offset, data }) if (*offset..offset + data.len()).contains(&i) && data[i - offset] == *got => {}
                    _ => panic!("round {round}: byte {i} is {got}, the answered writes made it {want} (step under way: {in_flight:?})"),
                }
            }
        }
        if matches!(in_flight, Some(Step::Write { .. })) {
            in_flight_writes += 1;
        }
        // Copies: every answered one is there and exact; one under way may be there (and exact).
        let listed = vol.copies();
        for c in &listed {
            let want = match copies.get(&c.id) {
                Some(image) => image.clone(),
                None => match &in_flight {
                    Some(Step::Create) => {
                        copies.insert(c.id, live.clone());
                        live.clone()
                    }
                    _ => panic!("round {round}: copy {} was never answered", c.id),
                },
            };
            let mut buf = vec![0u8; SIZE];
            vol.read_copy(c.id, &mut buf, 0).unwrap();
            assert!(buf == want, "round {round}: copy {} differs from the volume at its instant", c.id);
        }
        for id in copies.keys() {
            let deleting = matches!(&in_flight, Some(Step::Delete(d)) if d == id);
            assert!(deleting || listed.iter().any(|c| c.id == *id), "round {round}: copy {id} was lost");
        }
        copies.retain(|id, _| listed.iter().any(|c| c.id == *id));
        live = now;
        vol.close().unwrap();
    }
    eprintln!(
        "{ROUNDS} kills: {answered_writes} answered writes checked, {replayed_rounds} rounds replayed held writes \
         ({replayed_bytes} bytes), {in_flight_writes} kills in the middle of a write, {checkpointed_rounds} opens over a \
         checkpointed index, {stale_rounds} opens skipped stale redo entries"
    );
    assert!(stale_rounds >= ROUNDS / 4, "only {stale_rounds} of {ROUNDS} opens met redo entries left by a checkpoint");
    assert!(checkpointed_rounds >= ROUNDS / 4, "only {checkpointed_rounds} of {ROUNDS} opens found a checkpointed index");
    // The test means something only if deaths really hit held bytes.
    assert!(replayed_rounds >= ROUNDS / 4, "only {replayed_rounds} of {ROUNDS} kills found held bytes to replay");
}
