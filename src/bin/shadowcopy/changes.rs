//! `shadowcopy changes A [B]`: which files and folders were added, deleted, modified or had only
//! their metadata changed between copy A and a later copy B (or the live filesystem), like
//! `zfs diff` and snapper's `status`.
//!
//! Walks both trees side by side and compares what `lstat` gives (type, size, modification and
//! change times, mode, owner, link target): no file's data is read. A filesystem's change time
//! (ctime) moves on every write and no program can set it, so a file whose size, mtime and ctime
//! all match did not change; on filesystems without a ctime (FAT) a change that keeps size and
//! mtime is missed. Owns the comparison only; never writes anything.
//!
//! Between two copies, the daemon does it (`Op::Changes`), inside its own filesystem readers,
//! with no FUSE round trip per entry; for ext2/3/4 it first finds the inodes whose on-disk
//! records differ from the chunks the engine knows changed, and stats only those
//! (`shadowcopy::fsread::compare`). This walk over the mount is for the live filesystem, and for
//! answers too large for one reply.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shadowcopy::protocol::{Answer, CopyView, Op};

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Deleted,
    /// Content (size, modification time) or type changed.
    Modified,
    /// Only metadata: mode, owner, change time (xattrs, ACLs, links).
    Metadata,
}

impl Change {
    fn symbol(self) -> char {
        match self {
            Change::Added => '+',
            Change::Deleted => '-',
            Change::Modified => 'M',
            Change::Metadata => 'm',
        }
    }

    fn word(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Deleted => "deleted",
            Change::Modified => "modified",
            Change::Metadata => "metadata",
        }
    }
}

/// What `lstat` says of an entry, for comparing (`ino` only to enter each folder once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    ino: u64,
    kind: u32,
    pub(crate) size: u64,
    pub(crate) mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
    owner: (u32, u32),
    link: Option<PathBuf>,
}

impl Seen {
    /// `file`, `directory`, `symlink` or `other`.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            libc::S_IFREG => "file",
            libc::S_IFDIR => "directory",
            libc::S_IFLNK => "symlink",
            _ => "other",
        }
    }
}

/// What `lstat` says of `p`, if it exists.
pub(crate) fn seen(p: &Path) -> Option<Seen> {
    let md = std::fs::symlink_metadata(p).ok()?;
    Some(Seen {
        ino: md.ino(),
        kind: md.mode() & libc::S_IFMT,
        size: if md.is_dir() { 0 } else { md.size() },
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        mode: md.mode() & 0o7777,
        owner: (md.uid(), md.gid()),
        link: md.file_type().is_symlink().then(|| std::fs::read_link(p).ok()).flatten(),
    })
}

/// How `b` differs from `a`, if it does (also what `versions` calls a different version).
pub(crate) fn classify(a: &Seen, b: &Seen) -> Option<Change> {
    if a.kind != b.kind || a.size != b.size || a.mtime != b.mtime || a.link != b.link {
        Some(Change::Modified)
    } else if a.ctime != b.ctime || a.mode != b.mode || a.owner != b.owner {
        Some(Change::Metadata)
    } else {
        None
    }
}

fn entries(dir: &Path) -> BTreeSet<OsString> {
    std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default()
}

/// Compares the trees under `a` and `b`; `out` gets each change with its path relative to the
/// roots. A folder added or deleted is one change (its contents are not listed). The trees are
/// a copy's content, which may be hostile: the walk keeps its own stack (no recursion depth to
/// exhaust) and enters each pair of folders once (a folder linked into itself ends there).
fn compare(a: &Path, b: &Path, out: &mut Vec<(Change, PathBuf)>) {
    let mut entered: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![(a.to_path_buf(), b.to_path_buf(), PathBuf::new())];
    while let Some((a, b, rel)) = stack.pop() {
        let (ea, eb) = (entries(&a), entries(&b));
        let mut subdirs = Vec::new();
        for name in ea.union(&eb) {
            let (pa, pb, r) = (a.join(name), b.join(name), rel.join(name));
            match (seen(&pa), seen(&pb)) {
                (Some(_), None) => out.push((Change::Deleted, r)),
                (None, Some(_)) => out.push((Change::Added, r)),
                (Some(x), Some(y)) => {
                    if let Some(c) = classify(&x, &y) {
                        out.push((c, r.clone()));
                    }
                    if x.kind == libc::S_IFDIR && y.kind == libc::S_IFDIR && entered.insert((x.ino, y.ino)) {
                        subdirs.push((pa, pb, r));
                    }
                }
                (None, None) => {}
            }
        }
        stack.extend(subdirs);
    }
}

/// `shadowcopy changes A [B]`.
pub(crate) fn changes(a: &str, b: Option<&str>, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let Answer::Status(status) = super::locate::call(&socket, Op::Status)? else { bail!("unexpected answer to status") };
    let mount = PathBuf::from(&status.mount);
    let Answer::Copies(copies) = super::locate::call(&socket, Op::List { volume: None })? else { bail!("unexpected answer to list") };
    let names = crate::online::Names::new(&socket);
    let find = |name: &str| -> Result<&CopyView> {
        let id = names.copy(name)?;
        copies.iter().find(|c| c.id == id).with_context(|| format!("no copy {name}"))
    };
    let from = find(a)?;
    let a_root = mount.join(&from.volume).join(&from.exposed_name);
    let mut from_daemon = None;
    let (b_root, b_label) = match b {
        Some(b) => {
            let to = find(b)?;
            if to.volume != from.volume {
                bail!("{a} is a copy of volume `{}` and {b} of `{}`: compare copies of one volume", from.volume, to.volume);
            }
            if let Answer::Changes(Some(found)) = super::locate::call(&socket, Op::Changes { id: from.id, to: to.id })? {
                from_daemon = Some(found);
            }
            (mount.join(&to.volume).join(&to.exposed_name), to.exposed_name.clone())
        }
        None => {
            let m = super::locate::live_mount(&mount, &from.volume)?.with_context(|| {
                format!("nothing is mounted from volume `{}`'s live file; give a later copy to compare with", from.volume)
            })?;
            let label = format!("live ({})", m.display());
            (m, label)
        }
    };
    if !a_root.is_dir() {
        bail!("copy {} has no files to compare (its filesystem could not be read; see `shadowcopy list`)", from.exposed_name);
    }
    let mut out = Vec::new();
    match from_daemon {
        Some(found) => {
            for c in found {
                let change = match c.change.as_str() {
                    "added" => Change::Added,
                    "deleted" => Change::Deleted,
                    "modified" => Change::Modified,
                    _ => Change::Metadata,
                };
                out.push((change, PathBuf::from(c.path.trim_start_matches('/'))));
            }
        }
        None => compare(&a_root, &b_root, &mut out),
    }
    out.sort_by(|x, y| x.1.cmp(&y.1));
    // lost+found churn and the like are real changes; nothing is filtered.
    if json {
        let rows: Vec<serde_json::Value> =
            out.iter().map(|(c, p)| serde_json::json!({ "change": c.word(), "path": Path::new("/").join(p) })).collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "volume": from.volume, "from": from.exposed_name, "to": b_label, "changes": rows
            }))?
        );
    } else {
        for (c, p) in &out {
            out!("{} /{}", c.symbol(), p.display());
        }
        if out.is_empty() {
            eprintln!("no changes between {} and {b_label}", from.exposed_name);
        }
    }
    Ok(())
}
