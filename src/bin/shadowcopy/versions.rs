//! `shadowcopy versions PATH` and `shadowcopy restore PATH --from COPY`: a file's previous
//! versions, read straight from the copies' folders in the daemon's mount (the kernel enforces
//! each copy's permissions, as for any reader), and putting one back.
//!
//! Never changes a copy, and never writes anything but the restore's destination.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shadowcopy::protocol::{Answer, CopyView, Op};

use super::changes::{classify, seen};
use super::locate::{call, locate};

/// The volume's copies, newest first.
fn copies_newest_first(volume: &str, socket: &Option<PathBuf>) -> Result<Vec<CopyView>> {
    let Answer::Copies(mut copies) = call(socket, Op::List { volume: Some(volume.to_string()) })? else {
        bail!("unexpected answer to list")
    };
    copies.sort_by(|a, b| b.created_unix.total_cmp(&a.created_unix));
    Ok(copies)
}

/// `shadowcopy versions PATH [--all]`.
pub(crate) fn versions(path: &Path, all: bool, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let at = locate(path, &socket)?;
    let copies = copies_newest_first(&at.volume, &socket)?;
    // The state each copy is compared with: the next newer one, starting from the path as it
    // is now (if it is on a mounted filesystem; a path inside a copy has no "now").
    let mut newer = seen(path).filter(|_| !path.starts_with(&at.mount));
    let mut shown = Vec::new();
    for c in &copies {
        let here = seen(&at.mount.join(&at.volume).join(&c.exposed_name).join(&at.rel));
        if let Some(v) = &here {
            if all || newer.as_ref().is_none_or(|n| classify(n, v).is_some()) {
                shown.push((c, v.clone()));
            }
        }
        newer = here;
    }
    if json {
        let rows: Vec<serde_json::Value> = shown
            .iter()
            .map(|(c, v)| {
                serde_json::json!({
                    "copy": c.id, "exposed_name": c.exposed_name, "created_unix": c.created_unix,
                    "path": at.mount.join(&at.volume).join(&c.exposed_name).join(&at.rel),
                    "kind": v.kind_name(), "size": v.size, "mtime_unix": v.mtime.0, "stale": c.stale.is_some(),
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&serde_json::json!({ "volume": at.volume, "path": at.rel, "versions": rows }))?);
        return Ok(());
    }
    if shown.is_empty() {
        out!(
            "No earlier version of {} in the {} copies of volume `{}`{}.",
            path.display(),
            copies.len(),
            at.volume,
            if all { "" } else { " (none differs from the next newer state; --all lists every copy holding it)" }
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|(c, v)| {
            vec![
                c.exposed_name.clone(),
                v.kind_name().to_string(),
                shadowcopy::size::format_size(v.size),
                crate::render::utc(u64::try_from(v.mtime.0).unwrap_or(0)),
                if crate::render::wide() { c.id.to_string() } else { c.id.to_string()[..8].to_string() },
            ]
        })
        .collect();
    crate::render::table(&["VERSION (COPY)", "KIND", "SIZE", "MODIFIED", "COPY ID"], &rows);
    Ok(())
}

/// `shadowcopy restore PATH --from COPY [--to DEST] [--overwrite]`.
pub(crate) fn restore(path: &Path, from: &str, to: Option<&Path>, overwrite: bool, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let at = locate(path, &socket)?;
    let copies = copies_newest_first(&at.volume, &socket)?;
    // A bare @GMT name means this volume's.
    let from = if from.starts_with("@GMT-") { format!("{}/{from}", at.volume) } else { from.to_string() };
    let id = crate::online::Names::new(&socket).copy(&from)?;
    let copy = copies.iter().find(|c| c.id == id).with_context(|| format!("copy `{from}` is not a copy of volume `{}`", at.volume))?;
    let source = at.mount.join(&at.volume).join(&copy.exposed_name).join(&at.rel);
    if std::fs::symlink_metadata(&source).is_err() {
        bail!("{} does not exist in copy {} ({})", at.rel.display(), copy.exposed_name, source.display());
    }
    let dest = to.unwrap_or(path);
    let exists = std::fs::symlink_metadata(dest).is_ok();
    if exists && !overwrite {
        bail!("{} exists: add --overwrite to replace it, or --to DEST to restore elsewhere", dest.display());
    }
    // `cp -a` keeps owner, mode, times, xattrs and POSIX ACLs (as `--preserve=all`).
    let is_dir = std::fs::symlink_metadata(&source)?.is_dir();
    let status = if is_dir && exists {
        // Into the existing folder: its files are replaced, others are kept.
        std::process::Command::new("cp").arg("-a").arg("--").arg(source.join(".")).arg(dest).status()
    } else if exists {
        // A file replaced whole: copied beside it, then renamed over it (never half-written).
        let tmp = dest.with_file_name(format!(".{}.shadowcopy-restore", dest.file_name().map_or("file".into(), |n| n.to_string_lossy())));
        let copied = std::process::Command::new("cp").arg("-a").arg("--").arg(&source).arg(&tmp).status()?;
        if copied.success() {
            std::fs::rename(&tmp, dest).with_context(|| format!("replacing {}", dest.display()))?;
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(copied)
    } else {
        std::process::Command::new("cp").arg("-a").arg("--").arg(&source).arg(dest).status()
    }
    .context("running cp")?;
    if !status.success() {
        bail!("copying {} to {} failed (cp: {status})", source.display(), dest.display());
    }
    if json {
        out!("{}", serde_json::json!({ "restored": dest, "from": source, "copy": copy.id }));
    } else {
        out!("restored {} from {} ({})", dest.display(), copy.exposed_name, source.display());
    }
    Ok(())
}
