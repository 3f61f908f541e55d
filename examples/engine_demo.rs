//! The engine demo (run by `scripts/demo`): an ext4 image is written through the engine while
//! three shadow copies are taken a second apart; each copy is exported to an image file that
//! the script then reads with e2fsprogs, the independent oracle.
//!
//! Usage: engine_demo IMAGE DIFF_DIR OUT_DIR COUNTER_OFFSET DATA_OFFSET DATA_LEN
//! Writes go where the file `counter.txt` (one 4 KiB block) and `data.bin` have their data, so
//! the filesystem stays consistent while its contents change, as if an application wrote them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shadowcopy::{create_set, CreateOptions, DiffAreaOptions, EngineOptions, MaxSize, ShadowVolume};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 7, "usage: engine_demo IMAGE DIFF_DIR OUT_DIR COUNTER_OFFSET DATA_OFFSET DATA_LEN");
    let image = PathBuf::from(&args[1]);
    let diff = PathBuf::from(&args[2]);
    let out = PathBuf::from(&args[3]);
    let counter_at: u64 = args[4].parse()?;
    let data_at: u64 = args[5].parse()?;
    let data_len: u64 = args[6].parse()?;

    let vol = Arc::new(
        ShadowVolume::create_at(
            &image,
            &diff,
            DiffAreaOptions { chunk_size: 16384, max_size: MaxSize::Bytes(128 << 20) },
            EngineOptions::default(),
        )
        .context("creating the diff area")?,
    );
    println!("volume {} ({} MiB), diff area {} (chunk 16 KiB, at most 128 MiB)", image.display(), vol.size() >> 20, diff.display());

    let stop = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicU64::new(0));
    let writer = {
        let (vol, stop, ticks) = (vol.clone(), stop.clone(), ticks.clone());
        std::thread::spawn(move || -> Result<()> {
            let mut x = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let t = ticks.fetch_add(1, Ordering::SeqCst) + 1;
                // counter.txt is one block: "tick N" padded with spaces to its 4096 bytes.
                let mut block = format!("tick {t:>10}\n").into_bytes();
                block.resize(4096, b' ');
                block[4095] = b'\n';
                vol.write_at(&block, counter_at)?;
                // data.bin: a random 64 KiB piece rewritten with the tick number.
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let off = data_at + ((x >> 20) % (data_len / 65536)) * 65536;
                vol.write_at(&vec![(t % 251) as u8; 65536], off)?;
                if t % 200 == 0 {
                    vol.flush()?;
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            vol.flush()?;
            Ok(())
        })
    };

    let mut ids = Vec::new();
    for n in 1..=3 {
        std::thread::sleep(Duration::from_millis(1000));
        let t0 = Instant::now();
        let set = create_set(&[&vol], CreateOptions::default())?;
        let c = &set.copies[0];
        println!(
            "copy {n}: {}  at tick {:>6}, writes held {:>4} µs, created in {:.1} ms",
            c.id,
            ticks.load(Ordering::SeqCst),
            set.hold.as_micros(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        ids.push(c.id);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    println!("writer stopped after {} ticks", ticks.load(Ordering::SeqCst));

    for e in vol.take_events() {
        println!("event: {e:?}");
    }
    for (n, id) in ids.iter().enumerate() {
        let path = out.join(format!("copy-{}.img", n + 1));
        vol.export(*id, &path, &mut |_, _| {})?;
    }
    let u = vol.usage();
    println!(
        "diff area: {} chunks preserved, {} KiB used of {} KiB",
        u.preserved_chunks,
        u.used_bytes >> 10,
        u.max_bytes.unwrap_or(0) >> 10
    );
    Arc::try_unwrap(vol).map_err(|_| anyhow::anyhow!("volume still shared"))?.close()?;
    Ok(())
}
