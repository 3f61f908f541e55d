//! Which files and folders differ between two trees read by filesystem readers (two copies of
//! one volume): added, deleted, modified (type, size, modification time, link target) or with
//! only their metadata changed (change time, mode, owner).
//!
//! With the set of inodes whose records differ ([`super::changed_inodes`]), an entry with the
//! same inode number and kind on both sides outside that set is the same file and is not
//! stat'ed: the walk then reads directories only. The trees may be hostile: the walk keeps its
//! own stack, enters each pair of folders once (a folder linked into itself ends there) and
//! stops at a bound on the answer. Never writes anything.

use std::collections::{BTreeMap, HashSet};

use super::{FileKind, ReadOnlyFs, Stat};

/// What happened to a path between the two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeChange {
    /// Only in the later tree.
    Added,
    /// Only in the earlier tree.
    Deleted,
    /// Type, size, modification time or link target differ.
    Modified,
    /// Only change time, mode or owner differ.
    Metadata,
}

impl TreeChange {
    /// `added`, `deleted`, `modified`, `metadata`.
    pub fn word(self) -> &'static str {
        match self {
            TreeChange::Added => "added",
            TreeChange::Deleted => "deleted",
            TreeChange::Modified => "modified",
            TreeChange::Metadata => "metadata",
        }
    }
}

/// How `b` differs from `a` (the rule `shadowcopy changes` and `versions` use on `lstat`).
fn classify(a: &Stat, b: &Stat, links: Option<(Vec<u8>, Vec<u8>)>) -> Option<TreeChange> {
    let size = |s: &Stat| if s.kind == FileKind::Dir { 0 } else { s.size };
    if a.kind != b.kind || size(a) != size(b) || a.mtime != b.mtime || links.is_some_and(|(x, y)| x != y) {
        Some(TreeChange::Modified)
    } else if a.ctime != b.ctime || a.perm != b.perm || (a.uid, a.gid) != (b.uid, b.gid) {
        Some(TreeChange::Metadata)
    } else {
        None
    }
}

/// The changes from tree `a` to tree `b`, paths from the root (`/dir/file`, names as UTF-8,
/// lossily), in walk order. `None` if a folder cannot be read, or past `most` changes.
pub fn compare_trees(
    a: &dyn ReadOnlyFs,
    b: &dyn ReadOnlyFs,
    changed: Option<&HashSet<u64>>,
    most: usize,
) -> Option<Vec<(TreeChange, String)>> {
    let mut out = Vec::new();
    let mut entered: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![(a.root(), b.root(), String::new())];
    while let Some((da, db, rel)) = stack.pop() {
        let (la, lb) = (a.read_dir(da).ok()?, b.read_dir(db).ok()?);
        let mut names: BTreeMap<&[u8], (Option<&super::DirEntry>, Option<&super::DirEntry>)> = BTreeMap::new();
        for e in la.iter() {
            names.entry(&e.name).or_default().0 = Some(e);
        }
        for e in lb.iter() {
            names.entry(&e.name).or_default().1 = Some(e);
        }
        for (name, pair) in names {
            let path = format!("{rel}/{}", String::from_utf8_lossy(name));
            match pair {
                (Some(_), None) => out.push((TreeChange::Deleted, path)),
                (None, Some(_)) => out.push((TreeChange::Added, path)),
                (Some(x), Some(y)) => {
                    let same = x.ino == y.ino && x.kind == y.kind && changed.is_some_and(|c| !c.contains(&x.ino));
                    if !same {
                        let change = match (a.stat(x.ino), b.stat(y.ino)) {
                            (Ok(sa), Ok(sb)) => {
                                let links = (sa.kind == FileKind::Symlink && sb.kind == FileKind::Symlink)
                                    .then(|| (a.read_link(x.ino).unwrap_or_default(), b.read_link(y.ino).unwrap_or_default()));
                                classify(&sa, &sb, links)
                            }
                            // Unreadable on one side: reported, not hidden.
                            _ => Some(TreeChange::Modified),
                        };
                        if let Some(c) = change {
                            out.push((c, path.clone()));
                        }
                    }
                    if x.kind == FileKind::Dir && y.kind == FileKind::Dir && entered.insert((x.ino, y.ino)) {
                        stack.push((x.ino, y.ino, path));
                    }
                }
                (None, None) => {}
            }
            if out.len() > most {
                return None;
            }
        }
    }
    Some(out)
}
