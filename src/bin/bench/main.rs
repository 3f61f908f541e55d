//! `shadowcopy-bench engine`: the engine's figures, each next to a peer measured in the same run
//! (the raw file through `pwrite`, a qcow2 internal snapshot under `qemu-io`), and the ratio.
//!
//! Run through `scripts/bench engine`. Files go to `--dir` (default `target/bench`), which must not
//! be a tmpfs if the figures are to mean anything about disks.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use shadowcopy::diffarea::index::{ChunkIndex, Entry};
use shadowcopy::size::{format_size, parse_size};
use shadowcopy::{create_set, CreateOptions, DiffAreaOptions, EngineOptions, MaxSize, ShadowVolume};

mod scale;

/// Counts live heap bytes, for the index's memory figure.
#[global_allocator]
static ALLOC: shadowcopy::testing::alloc::CountingAlloc = shadowcopy::testing::alloc::CountingAlloc::new();

#[derive(Parser)]
#[command(about = "Benchmarks of shadowcopy against peers measured in the same run")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The copy-on-write engine.
    Engine {
        /// Directory for the images and diff areas.
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
        /// Volume size.
        #[arg(long, default_value = "512M", value_parser = parse_size)]
        size: u64,
        /// Random 4 KiB writes per random-write run.
        #[arg(long, default_value_t = 20000)]
        random_writes: usize,
        /// Copies for the lookup-cost figure.
        #[arg(long, default_value_t = 512)]
        copies: usize,
        /// Repetitions of each timed run (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Opening a diff area as it grows: open time, resident memory, reads of an old copy, at
    /// several numbers of preserved chunks (4 KiB chunks).
    Scale {
        /// Directory for the diff areas (one at a time; removed at the end).
        #[arg(long, default_value = "target/bench-scale")]
        dir: PathBuf,
        /// Numbers of preserved chunks, smallest first (binary K, M suffixes as for sizes: 1M = 1,048,576).
        #[arg(long, value_delimiter = ',', default_value = "1M,4M,16M,64M", value_parser = parse_size)]
        chunks: Vec<u64>,
        /// Random 4 KiB reads of the copy after each open.
        #[arg(long, default_value_t = 1_000_000)]
        reads: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The child of `scale`: opens one diff area and prints its figures as JSON.
    #[command(hide = true)]
    ScaleOpen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        reads: usize,
    },
    /// Writes the hostile images of the daemon's isolation figure (`scripts/bench mount`) into
    /// a directory, one `NAME.img` each, built as the attacks on the readers built them.
    HostileImages {
        /// Directory to write the images to (created if missing).
        dir: PathBuf,
    },
}

struct Figure {
    name: &'static str,
    ours: String,
    peer: String,
    ratio: f64,
    target: &'static str,
    met: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.what {
        What::Engine { dir, size, random_writes, copies, repeat, json } => engine(&dir, size, random_writes, copies, repeat, json),
        What::Scale { dir, chunks, reads, json } => scale::scale(&dir, &chunks, reads, json),
        What::ScaleOpen { dir, reads } => scale::open_child(&dir, reads),
        What::HostileImages { dir } => hostile_images(&dir),
    }
}

const MIB: usize = 1 << 20;

/// The hostile images beside which `scripts/bench mount` measures a healthy volume.
fn hostile_images(dir: &Path) -> Result<()> {
    use shadowcopy::testing::hostile::*;
    use shadowcopy::testing::system::TempDir;
    type Builder = fn(&TempDir) -> PathBuf;
    let builders: [(&str, Builder); 5] = [
        ("f1-huge-dir", ext4_huge_directory),
        ("f2-looping-extents", ext4_looping_extent_tree),
        ("f3-looping-journal", ext4_looping_journal),
        ("f4-looping-fat", fat_looping_directory),
        ("f5-huge-xattr", |dir| ext4_huge_xattr(dir).0),
    ];
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, build) in builders {
        let scratch = TempDir::new("sc-bench-hostile-");
        let built = build(&scratch);
        let to = dir.join(format!("{name}.img"));
        std::fs::copy(&built, &to).with_context(|| format!("writing {}", to.display()))?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn mbps(bytes: u64, secs: f64) -> String {
    format!("{:.0} MB/s", bytes as f64 / secs / 1e6)
}

/// A fully written (not sparse) image.
fn make_image(path: &Path, size: u64) -> Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let buf = pattern_block(MIB, 0xA5);
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB as u64) as usize;
        f.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn pattern_block(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn fresh_dir(p: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(p);
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
}

fn open_engine(img: &Path, da: &Path) -> Result<ShadowVolume> {
    let _ = std::fs::remove_dir_all(da);
    Ok(ShadowVolume::create_at(img, da, DiffAreaOptions { chunk_size: 16384, max_size: MaxSize::Unbounded }, EngineOptions::default())?)
}

/// Sequential 1 MiB writes over `size` bytes through `write`, then `finish` (the durable flush);
/// returns the seconds taken.
fn sequential_pass(
    size: u64,
    seed: u8,
    mut write: impl FnMut(&[u8], u64) -> Result<()>,
    finish: impl FnOnce() -> Result<()>,
) -> Result<f64> {
    let buf = pattern_block(MIB, seed);
    let t = Instant::now();
    let mut off = 0;
    while off < size {
        write(&buf, off)?;
        off += MIB as u64;
    }
    finish()?;
    Ok(t.elapsed().as_secs_f64())
}

/// The peer: `pwrite` to the image file itself.
fn seq_raw(img: &Path, size: u64, seed: u8) -> Result<f64> {
    let f = OpenOptions::new().write(true).open(img)?;
    sequential_pass(size, seed, |b, off| Ok(f.write_all_at(b, off)?), || Ok(f.sync_data()?))
}

fn seq_engine(vol: &ShadowVolume, size: u64, seed: u8) -> Result<f64> {
    sequential_pass(size, seed, |b, off| Ok(vol.write_at(b, off)?), || Ok(vol.flush()?))
}

fn random_offsets(n: usize, size: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 16) % (size / 4096)) * 4096
        })
        .collect()
}

fn random_engine(vol: &ShadowVolume, offsets: &[u64]) -> Result<f64> {
    let buf = pattern_block(4096, 7);
    let t = Instant::now();
    for &o in offsets {
        vol.write_at(&buf, o)?;
    }
    vol.flush()?;
    Ok(t.elapsed().as_secs_f64())
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Random 4 KiB writes under `qemu-io` on a qcow2 image: medians of `repeat` rounds of
/// (before an internal snapshot, first after it).
fn qcow2_random(dir: &Path, size: u64, offsets: &[u64], repeat: usize) -> Result<(f64, f64)> {
    let img = dir.join("peer.qcow2");
    let _ = std::fs::remove_file(&img);
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-o", "preallocation=full"]).arg(&img).arg(size.to_string()))?;
    let cmds = dir.join("qemu-io.cmds");
    {
        let mut f = File::create(&cmds)?;
        for o in offsets {
            writeln!(f, "write -q -P 7 {o} 4096")?;
        }
        writeln!(f, "flush")?;
    }
    let timed = || -> Result<f64> {
        let input = File::open(&cmds)?;
        let t = Instant::now();
        let out =
            Command::new("qemu-io").args(["-f", "qcow2"]).arg(&img).stdin(input).stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
        if !out.status.success() {
            bail!("qemu-io failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t.elapsed().as_secs_f64())
    };
    // Warm: the same writes once, so that timed runs overwrite allocated clusters.
    timed()?;
    let (mut before, mut after) = (vec![], vec![]);
    for r in 0..repeat {
        before.push(timed()?);
        run(Command::new("qemu-img").args(["snapshot", "-c", &format!("s{r}")]).arg(&img))?;
        after.push(timed()?);
        run(Command::new("qemu-img").args(["snapshot", "-d", &format!("s{r}")]).arg(&img))?;
    }
    let _ = std::fs::remove_file(&img);
    Ok((median(before), median(after)))
}

/// Takes 200 persistent sets (each deleted again) while 4 threads write 64 KiB at random;
/// returns the hold window's p50, p99 and max in ms, and the writes done.
fn hold_window(vol: ShadowVolume, size: u64) -> Result<(f64, f64, f64, u64)> {
    let vol = Arc::new(vol);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (vol, stop) = (vol.clone(), stop.clone());
            std::thread::spawn(move || -> Result<u64> {
                let buf = pattern_block(64 << 10, w as u8);
                let mut n = 0;
                let mut x = w + 1;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let off = ((x >> 16) % (size / (64 << 10))) * (64 << 10);
                    vol.write_at(&buf, off)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut holds = Vec::new();
    for _ in 0..200 {
        let set = create_set(&[&vol], CreateOptions::default())?;
        holds.push(set.hold.as_secs_f64() * 1e3);
        vol.delete(set.copies[0].id)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    }
    holds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Arc::try_unwrap(vol).map_err(|_| anyhow::anyhow!("volume still shared"))?.close()?;
    Ok((holds[holds.len() / 2], holds[holds.len() * 99 / 100], holds[holds.len() - 1], written))
}

#[allow(clippy::too_many_arguments)]
fn engine(dir: &Path, size: u64, random_writes: usize, ncopies: usize, repeat: usize, json: bool) -> Result<()> {
    fresh_dir(dir)?;
    let img = dir.join("volume.img");
    let da = dir.join("diff");
    eprintln!("preparing a {} image in {}", format_size(size), dir.display());
    make_image(&img, size)?;
    let mut figures = Vec::new();

    // 1–3: sequential 1 MiB writes.
    let (mut raw, mut none, mut cold, mut cow, mut again) = (vec![], vec![], vec![], vec![], vec![]);
    for r in 0..repeat {
        eprintln!("sequential writes, round {}/{repeat}", r + 1);
        raw.push(seq_raw(&img, size, r as u8)?);
        let vol = open_engine(&img, &da)?;
        none.push(seq_engine(&vol, size, r as u8 + 1)?);
        // Cold: the first pass into a brand-new store file (its blocks are new to the disk).
        let first = create_set(&[&vol], CreateOptions::default())?.copies[0].id;
        cold.push(seq_engine(&vol, size, r as u8 + 2)?);
        vol.delete(first)?;
        // Steady state: the store's space, freed by that deletion, is reused.
        create_set(&[&vol], CreateOptions::default())?;
        cow.push(seq_engine(&vol, size, r as u8 + 3)?);
        again.push(seq_engine(&vol, size, r as u8 + 4)?);
        vol.close()?;
    }
    let raw = median(raw);
    let cold = median(cold);
    figures.push(Figure {
        name: "(for reference) the same, first pass into a new store file",
        ours: mbps(size, cold),
        peer: mbps(size, raw),
        ratio: raw / cold,
        target: "none",
        met: true,
    });
    for (name, times, target, want) in [
        ("1 MiB sequential writes, no shadow copy, vs pwrite", none, "≥ 0.90", 0.90),
        ("1 MiB sequential writes, first after a persistent copy (full COW, store space reused), vs pwrite", cow, "≥ 0.45", 0.45),
        ("1 MiB sequential writes, chunks already preserved, vs pwrite", again, "≥ 0.85", 0.85),
    ] {
        let ours = median(times);
        let ratio = raw / ours;
        figures.push(Figure { name, ours: mbps(size, ours), peer: mbps(size, raw), ratio, target, met: ratio >= want });
    }

    // 4: random 4 KiB writes, before vs first after a persistent copy; qcow2 the same way.
    // Medians of `repeat` rounds on both sides: single runs of either are noisy here.
    eprintln!("random 4 KiB writes");
    let offsets = random_offsets(random_writes, size, 42);
    let vol = open_engine(&img, &da)?;
    // Warm, like the qcow2 run: the same writes once, and the store's space once (a copy whose
    // preservation fills the store, then deleted).
    let warm = create_set(&[&vol], CreateOptions::default())?.copies[0].id;
    random_engine(&vol, &offsets)?;
    vol.delete(warm)?;
    let (mut before, mut after) = (vec![], vec![]);
    for _ in 0..repeat {
        before.push(random_engine(&vol, &offsets)?);
        let copy = create_set(&[&vol], CreateOptions::default())?.copies[0].id;
        after.push(random_engine(&vol, &offsets)?);
        vol.delete(copy)?;
    }
    vol.close()?;
    let (before, after) = (median(before), median(after));
    let ours_ratio = before / after;
    if have("qemu-io") && have("qemu-img") {
        let (qb, qa) = qcow2_random(dir, size, &offsets, repeat)?;
        let q_ratio = qb / qa;
        figures.push(Figure {
            name: "4 KiB random writes, first after a persistent copy vs before it",
            ours: format!("{ours_ratio:.2} ({:.0} → {:.0} IOPS)", random_writes as f64 / before, random_writes as f64 / after),
            peer: format!("qcow2 {q_ratio:.2} ({:.0} → {:.0} IOPS)", random_writes as f64 / qb, random_writes as f64 / qa),
            ratio: ours_ratio / q_ratio,
            target: "≥ 2× qcow2's",
            met: ours_ratio >= 2.0 * q_ratio,
        });
    } else {
        bail!("qemu-img/qemu-io not found: install qemu-utils (the qcow2 peer is part of the benchmark)");
    }

    // 5: hold window of set commits while 4 threads write: on files (the target), and on
    // memory storage (what the engine's own locking costs, without the filesystem's stalls).
    eprintln!("hold window under 4 writers");
    let (p50, p99, max, written) = hold_window(open_engine(&img, &da)?, size)?;
    figures.push(Figure {
        name: "hold window of a set commit while 4 threads write (200 persistent sets)",
        ours: format!("p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms"),
        peer: format!("{written} writes of 64 KiB during the run"),
        ratio: p99,
        target: "p99 ≤ 1 ms",
        met: p99 <= 1.0,
    });
    let mem = || -> Arc<dyn shadowcopy::volume::Storage> { Arc::new(shadowcopy::testing::MemStorage::default()) };
    let on_memory = ShadowVolume::create(
        Arc::new(shadowcopy::testing::MemStorage::new(size as usize)),
        shadowcopy::DiffAreaFiles::new(mem(), [mem(), mem()], [mem(), mem()]),
        DiffAreaOptions { chunk_size: 16384, max_size: MaxSize::Unbounded },
        EngineOptions::default(),
    )?;
    let (p50, p99, max, written) = hold_window(on_memory, size)?;
    figures.push(Figure {
        name: "(for reference) the same on memory storage (no filesystem)",
        ours: format!("p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms"),
        peer: format!("{written} writes of 64 KiB during the run"),
        ratio: p99,
        target: "none",
        met: true,
    });

    // 6: read of the oldest copy with many copies vs with one.
    eprintln!("read of the oldest copy, 1 copy vs {ncopies}");
    let vol = open_engine(&img, &da)?;
    let oldest = create_set(&[&vol], CreateOptions::default())?.copies[0].id;
    seq_engine(&vol, size, 9)?; // every chunk of the oldest copy now lives in the diff area
    let read_all = |vol: &ShadowVolume| -> Result<f64> {
        let mut buf = vec![0u8; MIB];
        let t = Instant::now();
        let mut off = 0;
        while off < size {
            vol.read_copy(oldest, &mut buf, off)?;
            off += MIB as u64;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    read_all(&vol)?;
    let one = median((0..repeat).map(|_| read_all(&vol)).collect::<Result<Vec<_>>>()?);
    let chunk_writes = random_offsets(ncopies * 64, size, 7);
    let buf = pattern_block(16384, 3);
    for i in 1..ncopies {
        create_set(&[&vol], CreateOptions::default())?;
        for o in &chunk_writes[i * 64..(i + 1) * 64] {
            vol.write_at(&buf, o / 16384 * 16384)?;
        }
    }
    read_all(&vol)?;
    let many = median((0..repeat).map(|_| read_all(&vol)).collect::<Result<Vec<_>>>()?);
    let usage = vol.usage();
    figures.push(Figure {
        name: "read of the oldest copy with many copies vs with 1",
        ours: format!("{} with {ncopies} copies", mbps(size, many)),
        peer: format!("{} with 1 copy", mbps(size, one)),
        ratio: one / many,
        target: "≥ 0.90",
        met: one / many >= 0.90,
    });
    let engine_per_chunk = usage.index_bytes as f64 / usage.preserved_chunks as f64;
    vol.close()?;

    // 7: RAM of the index per preserved chunk: the engine's own count, and a million records
    // inserted in random order measured by the allocator.
    let before = ALLOC.live_bytes();
    let mut idx = ChunkIndex::new();
    let mut x = 1u64;
    for i in 0..1_000_000u32 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        idx.insert(Entry { chunk: (x >> 20) % 4_000_000, upper: 1 + (x % 64) as u32, slot: i });
    }
    let counted = (ALLOC.live_bytes() - before) as f64 / idx.len() as f64;
    figures.push(Figure {
        name: "RAM of the index per preserved chunk",
        ours: format!("{counted:.1} B (1M random inserts, allocator count)"),
        peer: format!("{engine_per_chunk:.1} B in the run above ({} chunks)", usage.preserved_chunks),
        ratio: counted.max(engine_per_chunk),
        target: "≤ 32 bytes",
        met: counted.max(engine_per_chunk) <= 32.0,
    });
    drop(idx);
    let _ = std::fs::remove_dir_all(dir);

    if json {
        for f in &figures {
            println!(
                "{}",
                serde_json::json!({"figure": f.name, "ours": f.ours, "peer": f.peer, "ratio": f.ratio, "target": f.target, "met": f.met})
            );
        }
    } else {
        println!("\n| figure | ours | peer (same run) | ratio | target | met |\n|---|---|---|---|---|---|");
        for f in &figures {
            println!("| {} | {} | {} | {:.2} | {} | {} |", f.name, f.ours, f.peer, f.ratio, f.target, if f.met { "yes" } else { "NO" });
        }
    }
    Ok(())
}
