//! `shadowcopy offline …`: the engine's operator commands on an image and its diff area with no
//! daemon running (nothing else may write the image meanwhile).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use clap::Subcommand;
use shadowcopy::protocol::gmt_name;
use shadowcopy::size::{format_size, parse_size};
use shadowcopy::{create_set, CopyInfo, CreateOptions, DiffAreaOptions, EngineOptions, MaxSize, ShadowVolume};
use uuid::Uuid;

#[derive(Subcommand)]
pub(crate) enum Offline {
    /// Create a diff area for an image.
    Init {
        image: PathBuf,
        diff_area: PathBuf,
        /// Chunk size (power of two, 4K..1M).
        #[arg(long, default_value = "16K", value_parser = parse_size)]
        chunk_size: u64,
        /// Maximum diff-area size (e.g. 1G), `unbounded`, or a percentage like `10%`.
        #[arg(long, default_value = "10%")]
        max_size: String,
    },
    /// List the copies and the space of a diff area, and any damage found.
    Inspect { image: PathBuf, diff_area: PathBuf },
    /// Take a shadow copy.
    Snapshot {
        image: PathBuf,
        diff_area: PathBuf,
        #[arg(long)]
        volatile: bool,
    },
    /// Write a copy to a sparse image file.
    Export { image: PathBuf, diff_area: PathBuf, id: Uuid, output: PathBuf },
    /// List the byte ranges written between two copies (or a copy and the live volume).
    Diff { image: PathBuf, diff_area: PathBuf, from: Uuid, to: Option<Uuid> },
    /// Delete a copy.
    Delete { image: PathBuf, diff_area: PathBuf, id: Uuid },
}

fn open(image: &Path, dir: &Path) -> Result<ShadowVolume> {
    ShadowVolume::open_at(image, dir, EngineOptions::default())
        .with_context(|| format!("opening the diff area {} of {}", dir.display(), image.display()))
}

fn copy_json(c: &CopyInfo) -> serde_json::Value {
    serde_json::json!({
        "id": c.id, "set_id": c.set_id, "epoch": c.epoch,
        "created_unix": c.created.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        "persistent": c.persistent, "attributes": c.attributes, "failed": c.failed,
    })
}

pub(crate) fn run(cmd: Offline, json: bool) -> Result<()> {
    match cmd {
        Offline::Init { image, diff_area, chunk_size, max_size } => {
            let options = DiffAreaOptions {
                chunk_size: u32::try_from(chunk_size).context("chunk size too large")?,
                max_size: MaxSize::parse(&max_size).map_err(anyhow::Error::msg)?,
            };
            let vol = ShadowVolume::create_at(&image, &diff_area, options, EngineOptions::default())
                .with_context(|| format!("creating a diff area in {} for {}", diff_area.display(), image.display()))?;
            let u = vol.usage();
            if json {
                out!("{}", serde_json::json!({"diff_area_id": vol.diff_area_id(), "chunk_size": u.chunk_size, "max_bytes": u.max_bytes}));
            } else {
                out!(
                    "diff area {} created: chunk {}, maximum {}",
                    vol.diff_area_id(),
                    format_size(u.chunk_size.into()),
                    u.max_bytes.map_or("unbounded".into(), format_size)
                );
            }
            vol.close()?;
        }
        Offline::Inspect { image, diff_area } => {
            let vol = open(&image, &diff_area)?;
            let u = vol.usage();
            let copies = vol.copies();
            if json {
                out!(
                    "{}",
                    serde_json::json!({
                        "diff_area_id": vol.diff_area_id(), "volume_size": vol.size(), "chunk_size": u.chunk_size,
                        "used_bytes": u.used_bytes, "allocated_bytes": u.allocated_bytes, "max_bytes": u.max_bytes,
                        "preserved_chunks": u.preserved_chunks, "copies": copies.iter().map(copy_json).collect::<Vec<_>>(),
                    })
                );
            } else {
                out!("diff area {}  volume {}  chunk {}", vol.diff_area_id(), format_size(vol.size()), format_size(u.chunk_size.into()));
                out!(
                    "space: {} used, {} allocated, maximum {}",
                    format_size(u.used_bytes),
                    format_size(u.allocated_bytes),
                    u.max_bytes.map_or("unbounded".into(), format_size)
                );
                out!("{:<36}  {:>5}  {:<24}  state", "copy id", "epoch", "created (UTC)");
                for c in &copies {
                    let secs = c.created.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                    let state = c.failed.as_deref().map_or("ok".to_string(), |r| format!("FAILED: {r}"));
                    out!("{:<36}  {:>5}  {:<24}  {state}", c.id, c.epoch, gmt_name(secs));
                }
            }
            vol.close()?;
        }
        Offline::Snapshot { image, diff_area, volatile } => {
            let vol = open(&image, &diff_area)?;
            let set = create_set(&[&vol], CreateOptions { volatile, attributes: 0 })?;
            if json {
                out!(
                    "{}",
                    serde_json::json!({"set_id": set.set_id, "copies": set.copies.iter().map(copy_json).collect::<Vec<_>>(), "hold_us": set.hold.as_micros() as u64})
                );
            } else {
                out!("shadow copy {} (set {}), writes held {} µs", set.copies[0].id, set.set_id, set.hold.as_micros());
            }
            vol.close()?;
        }
        Offline::Export { image, diff_area, id, output } => {
            let vol = open(&image, &diff_area)?;
            let mut last = 0u64;
            let show = !json && std::io::stderr().is_terminal();
            vol.export(id, &output, &mut |done, total| {
                let pct = done * 100 / total.max(1);
                if show && pct != last {
                    last = pct;
                    eprint!("\rexporting {id}: {pct:>3}%");
                }
            })
            .with_context(|| format!("exporting {id} to {}", output.display()))?;
            if show {
                eprintln!();
            }
            if !json {
                out!("exported {id} to {}", output.display());
            }
            vol.close()?;
        }
        Offline::Diff { image, diff_area, from, to } => {
            let vol = open(&image, &diff_area)?;
            let ranges = vol.changed_ranges(from, to)?;
            if json {
                out!(
                    "{}",
                    serde_json::json!(ranges.iter().map(|r| serde_json::json!({"offset": r.offset, "len": r.len})).collect::<Vec<_>>())
                );
            } else {
                for r in &ranges {
                    out!("{:>14} {:>12}", r.offset, r.len);
                }
                eprintln!("{} ranges, {}", ranges.len(), format_size(ranges.iter().map(|r| r.len).sum()));
            }
            vol.close()?;
        }
        Offline::Delete { image, diff_area, id } => {
            let vol = open(&image, &diff_area)?;
            let c = vol.delete(id)?;
            if json {
                out!("{}", copy_json(&c));
            } else {
                out!("deleted shadow copy {}", c.id);
            }
            vol.close()?;
        }
    }
    Ok(())
}
