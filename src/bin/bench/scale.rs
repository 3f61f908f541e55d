//! `shadowcopy-bench scale`: what opening a diff area costs as it grows — time to open and the
//! process's resident memory after the open and after random reads of an old copy — at several
//! numbers of preserved chunks.
//!
//! Each diff area is built through the engine's own write path (a persistent copy, then writes
//! over every chunk of a 4 KiB-chunk volume, in shuffled 64 KiB pieces), with the volume and the
//! store as [`ZeroStorage`]: the journal and its records are real, the chunks' bytes are not
//! written. The open then finds a sparse store file and a sparse volume of the same sizes. Each
//! open runs in a child process, so its resident memory is its own. The child then takes a new
//! copy and times random 4 KiB writes (each preserves its chunk) against `pwrite` of the same
//! offsets into a sparse file of the same size. Last, `shadowcopyd` (beside this binary) is
//! started on the diff area: the time until `list` answers with its copy, and the worker's
//! resident memory then.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shadowcopy::testing::ZeroStorage;
use shadowcopy::volume::{FileStorage, Storage};
use shadowcopy::{create_set, CreateOptions, DiffAreaFiles, DiffAreaOptions, EngineOptions, MaxSize, ShadowVolume};

const CHUNK: u64 = 4096;
const PIECE: u64 = 64 << 10;

/// Builds, in `dir`, a volume of `chunks` 4 KiB chunks whose diff area preserves every one of
/// them for one persistent copy.
fn build(dir: &Path, chunks: u64) -> Result<f64> {
    let t = Instant::now();
    super::fresh_dir(dir)?;
    let da = dir.join("diff");
    std::fs::create_dir_all(&da)?;
    let size = chunks * CHUNK;
    let volume: Arc<dyn Storage> = Arc::new(ZeroStorage::new(size));
    let store = Arc::new(ZeroStorage::new(0));
    let journal = |name: &str| -> Result<Arc<dyn Storage>> {
        let f = File::options().read(true).write(true).create(true).truncate(true).open(da.join(name))?;
        Ok(Arc::new(FileStorage::new(f)?))
    };
    let files =
        DiffAreaFiles::new(store.clone(), [journal("journal.0")?, journal("journal.1")?], [journal("index.0")?, journal("index.1")?]);
    let options = DiffAreaOptions { chunk_size: CHUNK as u32, max_size: MaxSize::Unbounded };
    let vol = ShadowVolume::create(volume, files, options, EngineOptions::default())?;
    create_set(&[&vol], CreateOptions::default())?;
    let pieces = size.div_ceil(PIECE);
    let buf = vec![0x5Au8; PIECE as usize];
    // A full-period walk of the pieces (an odd stride coprime with a power of two), so that the
    // index is built in scattered order as a real workload builds it.
    let period = pieces.next_power_of_two();
    let stride = (0x9E37_79B9_7F4A_7C15 % period) | 1;
    let mut x = 0u64;
    for _ in 0..period {
        x = (x + stride) % period;
        if x < pieces {
            let off = x * PIECE;
            vol.write_at(&buf[..(size - off).min(PIECE) as usize], off)?;
        }
    }
    vol.flush()?;
    let preserved = vol.usage().preserved_chunks as u64;
    if preserved != chunks {
        bail!("the build preserved {preserved} chunks, not {chunks}");
    }
    let store_len = store.len()?;
    vol.close()?;
    File::create(da.join("store"))?.set_len(store_len)?;
    File::create(da.join("lock"))?;
    File::create(dir.join("volume.img"))?.set_len(size)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Kernel's view of this process's memory, in bytes: (resident now, resident at most).
fn rss() -> (u64, u64) {
    rss_of("self")
}

/// The same for process `pid` (`self` for this one).
fn rss_of(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The child: opens the diff area in `dir`, reads random 4 KiB pieces of its copy, prints one
/// JSON line of figures.
pub(crate) fn open_child(dir: &Path, reads: usize) -> Result<()> {
    let t = Instant::now();
    let vol = ShadowVolume::open_at(&dir.join("volume.img"), &dir.join("diff"), EngineOptions::default())?;
    let open_s = t.elapsed().as_secs_f64();
    let (rss_open, peak_open) = rss();
    let heap_open = super::ALLOC.live_bytes();
    let usage = vol.usage();
    let copy = vol.copies().first().context("the diff area has no copy")?.id;
    let chunks = vol.size() / CHUNK;
    let mut lat = Vec::with_capacity(reads);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut x = 88172645463325252u64;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = Instant::now();
        vol.read_copy(copy, &mut buf, (x % chunks) * CHUNK)?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let (rss_reads, peak) = rss();
    let (ours_s, peer_s, writes) = random_writes_after_a_copy(&vol, dir, chunks, (reads / 10).max(1000))?;
    let end = vol.usage();
    println!(
        "{}",
        serde_json::json!({
            "preserved_chunks": usage.preserved_chunks,
            "checkpointed_chunks": usage.checkpointed_chunks,
            "index_bytes": usage.index_bytes,
            "open_s": open_s,
            "rss_open": rss_open,
            "peak_open": peak_open,
            "heap_open": heap_open,
            "rss_reads": rss_reads,
            "peak": peak,
            "read_p50_ns": pct(0.5),
            "read_p99_ns": pct(0.99),
            "writes": writes,
            "write_s": ours_s,
            "peer_write_s": peer_s,
            "cache_hits": end.index_cache.hits,
            "cache_misses": end.index_cache.misses,
        })
    );
    vol.close()?;
    Ok(())
}

/// Takes a new copy, then `n` random 4 KiB writes and a flush; the peer: `pwrite` of the same
/// offsets into a sparse file of the volume's size, then `fdatasync`. Returns both times.
fn random_writes_after_a_copy(vol: &ShadowVolume, dir: &Path, chunks: u64, n: usize) -> Result<(f64, f64, usize)> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let offsets: Vec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % chunks) * CHUNK
        })
        .collect();
    let buf = vec![0xA5u8; CHUNK as usize];
    create_set(&[vol], CreateOptions::default())?;
    let t = Instant::now();
    for off in &offsets {
        vol.write_at(&buf, *off)?;
    }
    vol.flush()?;
    let ours = t.elapsed().as_secs_f64();
    let peer_path = dir.join("peer.img");
    let peer = File::options().read(true).write(true).create(true).truncate(true).open(&peer_path)?;
    peer.set_len(vol.size())?;
    let peer = FileStorage::new(peer)?;
    let t = Instant::now();
    for off in &offsets {
        peer.write_at(&buf, *off)?;
    }
    peer.sync_data()?;
    let theirs = t.elapsed().as_secs_f64();
    drop(peer);
    std::fs::remove_file(&peer_path)?;
    Ok((ours, theirs, n))
}

/// A `shadowcopyd` started by [`daemon_start`]: stopped (and killed if it will not stop) when
/// dropped.
struct Daemon {
    child: Child,
    mount: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Registers the diff area in `dir` with a new `shadowcopyd`, starts it and times it until
/// `list` answers with the copy; returns (seconds, the worker's resident bytes then).
fn daemon_start(dir: &Path) -> Result<(f64, u64)> {
    use shadowcopy::protocol::{Answer, Client, Op};
    let exe = std::env::current_exe()?;
    let daemon = exe.with_file_name("shadowcopyd");
    if !daemon.exists() {
        bail!("{} is missing: build it with `cargo build --release -p shadowcopy-mount` (scripts/bench scale does)", daemon.display());
    }
    let state = dir.join("state");
    let mount = dir.join("mnt");
    let socket = dir.join("control.sock");
    std::fs::create_dir_all(&state)?;
    std::fs::create_dir_all(&mount)?;
    let record = serde_json::json!({
        "format": 1,
        "volumes": [{ "name": "scale", "image": dir.join("volume.img"), "diff_area": dir.join("diff") }],
    });
    std::fs::write(state.join("volumes.json"), serde_json::to_vec_pretty(&record)?)?;
    let t = Instant::now();
    let child = Command::new(&daemon)
        .arg("--state-dir")
        .arg(&state)
        .arg("--mount")
        .arg(&mount)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(dir.join("no-config.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("daemon.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", daemon.display()))?;
    let guard = Daemon { child, mount };
    let deadline = t + Duration::from_secs(300);
    let took = loop {
        if Instant::now() > deadline {
            bail!("shadowcopyd did not list the copy within 300 s (see {})", dir.join("daemon.log").display());
        }
        if let Ok(mut c) = Client::connect(&socket) {
            if let Ok(Answer::Copies(copies)) = c.call(Op::List { volume: None }, &mut |_, _| {}) {
                if !copies.is_empty() {
                    break t.elapsed().as_secs_f64();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let worker = match Client::connect(&socket)?.call(Op::Status, &mut |_, _| {})? {
        Answer::Status(s) => s.worker.map_or(guard.child.id(), |w| w.pid),
        other => bail!("status answered {other:?}"),
    };
    let (resident, _) = rss_of(&worker.to_string());
    drop(guard);
    Ok((took, resident))
}

/// One JSON figure of the child.
fn get(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// Builds and opens a diff area for every count in `counts`, printing a table (or JSON lines).
pub(crate) fn scale(dir: &Path, counts: &[u64], reads: usize, json: bool) -> Result<()> {
    if counts.contains(&0) {
        bail!("--chunks: every count must be at least 1");
    }
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for &n in counts {
        eprintln!("building a diff area of {n} preserved chunks");
        let built = build(dir, n)?;
        eprintln!("  built in {built:.1} s; opening it in a child process, then {reads} random reads of its copy");
        let out = Command::new(&exe).arg("scale-open").arg("--dir").arg(dir).arg("--reads").arg(reads.to_string()).output()?;
        if !out.status.success() {
            bail!("the open of {n} chunks failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading the child's figures")?;
        eprintln!("  starting shadowcopyd on it");
        let (daemon_s, daemon_rss) = daemon_start(dir)?;
        v["daemon_start_s"] = daemon_s.into();
        v["daemon_rss"] = daemon_rss.into();
        if json {
            println!("{}", serde_json::json!({ "chunks": n, "build_s": built, "figures": v }));
        }
        rows.push((n, v));
    }
    let _ = std::fs::remove_dir_all(dir);
    if json {
        return Ok(());
    }
    let mib = |b: f64| b / f64::from(1 << 20);
    println!("\n| preserved chunks | of them in the journal's tail | open (s) | daemon start until `list` answers (s) | RSS after open (MiB) | worker RSS after start (MiB) | heap after open (MiB) | index in memory (MiB) | peak RSS of the open (MiB) | RSS after {reads} reads (MiB) | copy read p50 / p99 (µs) | 4 KiB random writes after a copy, vs pwrite |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, v) in &rows {
        println!(
            "| {n} | {} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.2} ({} writes) |",
            get(v, "preserved_chunks") - get(v, "checkpointed_chunks"),
            get(v, "open_s"),
            get(v, "daemon_start_s"),
            mib(get(v, "rss_open")),
            mib(get(v, "daemon_rss")),
            mib(get(v, "heap_open")),
            mib(get(v, "index_bytes")),
            mib(get(v, "peak_open")),
            mib(get(v, "rss_reads")),
            get(v, "read_p50_ns") / 1e3,
            get(v, "read_p99_ns") / 1e3,
            get(v, "peer_write_s") / get(v, "write_s"),
            get(v, "writes"),
        );
    }
    if let (Some((n0, first)), Some((n1, last))) = (rows.first(), rows.last()) {
        if n1 > n0 {
            println!(
                "\ngrowth from {n0} to {n1} chunks ({:.0}×): open time {:.1}×, daemon start {:.1}×, RSS after open {:.1}×, after the reads {:.1}×, random-write ratio {:.2}× (targets, issue 15: open ≤ 1 s and RSS ≤ index cache (64 MiB) + 64 MiB at 64 M chunks; growth ≤ 2×)",
                *n1 as f64 / *n0 as f64,
                get(last, "open_s") / get(first, "open_s"),
                get(last, "daemon_start_s") / get(first, "daemon_start_s"),
                get(last, "rss_open") / get(first, "rss_open"),
                get(last, "rss_reads") / get(first, "rss_reads"),
                (get(last, "peer_write_s") / get(last, "write_s")) / (get(first, "peer_write_s") / get(first, "write_s")),
            );
            println!(
                "per preserved chunk at {n1}: {:.1} B resident after open, {:.1} B of heap, {:.1} B of index, {:.2} µs of open",
                get(last, "rss_open") / *n1 as f64,
                get(last, "heap_open") / *n1 as f64,
                get(last, "index_bytes") / *n1 as f64,
                get(last, "open_s") * 1e6 / *n1 as f64,
            );
        }
    }
    Ok(())
}
