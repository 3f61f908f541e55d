//! Whole-copy operations: export to an image file, revert the live volume, changed ranges, and
//! exposing a copy outside the mount (and undoing that).

use std::path::PathBuf;
use std::sync::Arc;

use shadowcopy::fsread::ReadOnlyFs;

use shadowcopy::coordinator;
use shadowcopy::protocol::{self, Answer, RangeView};
use uuid::Uuid;

use super::super::{system_of, OpResult, Service, ServiceError};

impl Service {
    pub(in crate::service) fn export(&self, id: Uuid, path: &str, progress: &mut dyn FnMut(u64, u64)) -> OpResult {
        let (v, _) = self.find_copy(id)?;
        let dest = PathBuf::from(path);
        if dest.exists() {
            return Err(ServiceError::ExportExists(path.to_string()));
        }
        // Any provider's copy can be exported (Windows copies too): it is a read of the copy.
        let provider = v.provider().ok_or_else(|| ServiceError::NoCopies(v.name.clone()))?;
        shadowcopy::provider::export_copy(provider, id, &dest, progress)?;
        Ok(Answer::Done(format!("exported shadow copy {id} to {path}")))
    }

    pub(in crate::service) fn revert(&self, id: Uuid, progress: &mut dyn FnMut(u64, u64)) -> OpResult {
        let _admin = self.admin.lock();
        let (v, copy) = self.find_copy(id)?;
        if v.live_opens() > 0 {
            return Err(ServiceError::LiveInUse { live: self.live_path(&v), action: "reverting" });
        }
        let engine = system_of(&v)?;
        let volumes = vec![v.name.clone()];
        let chosen = self.writers.choose(&volumes, &protocol::WriterSelection::default()).map_err(ServiceError::NoWriter)?;
        coordinator::pre_restore(&chosen.writers, copy.info.set_id, &volumes, id).map_err(ServiceError::RestoreRefused)?;
        let reverted = engine.revert(id, progress);
        let failures = coordinator::post_restore(&chosen.writers, copy.info.set_id, &volumes, id);
        reverted?;
        let mut msg = format!("volume `{}` reverted to shadow copy {id}", v.name);
        if !chosen.writers.is_empty() {
            msg += &format!("; {} writer(s) told (pre_restore, post_restore)", chosen.writers.len());
        }
        for f in failures {
            msg += &format!("; {f}");
        }
        Ok(Answer::Done(msg))
    }

    pub(in crate::service) fn diff(&self, id: Uuid, to: Option<Uuid>) -> OpResult {
        let (v, _) = self.find_copy(id)?;
        let ranges = system_of(&v)?.changed_ranges(id, to)?;
        Ok(Answer::Ranges(ranges.iter().map(|r| RangeView { offset: r.offset, len: r.len }).collect()))
    }

    /// See [`protocol::Op::ChangedInodes`]: the engine's changed ranges, mapped to inode records
    /// through both copies' filesystem readers.
    pub(in crate::service) fn changed_inodes(&self, id: Uuid, to: Uuid) -> OpResult {
        /// More than this many would not fit a reply.
        const MOST: usize = 100_000;
        Ok(Answer::Inodes(self.inodes_changed(id, to)?.map(|(_, _, i)| i).filter(|v| v.len() <= MOST)))
    }

    /// Both copies' trees and the inodes whose records differ (`None`: a copy without a
    /// readable filesystem, or a filesystem without inode tables).
    #[allow(clippy::type_complexity)]
    fn inodes_changed(&self, id: Uuid, to: Uuid) -> Result<Option<(Arc<dyn ReadOnlyFs>, Arc<dyn ReadOnlyFs>, Vec<u64>)>, ServiceError> {
        let (va, a) = self.find_copy(id)?;
        let (vb, b) = self.find_copy(to)?;
        if va.name != vb.name {
            return Err(ServiceError::BadRequest("compare copies of one volume".into()));
        }
        let (Some(ta), Some(tb)) = (a.tree(self.settings.fs_owner), b.tree(self.settings.fs_owner)) else {
            return Ok(None);
        };
        let ranges: Vec<(u64, u64)> = system_of(&va)?.changed_ranges(id, Some(to))?.iter().map(|r| (r.offset, r.len)).collect();
        match shadowcopy::fsread::changed_inodes(&*ta, &*tb, &ranges) {
            Some(inodes) => Ok(Some((ta, tb, inodes))),
            None => Ok(None),
        }
    }

    /// See [`protocol::Op::Changes`].
    pub(in crate::service) fn changes(&self, id: Uuid, to: Uuid) -> OpResult {
        use shadowcopy::fsread::compare::compare_trees;
        /// Changes in one reply (each line is short; the reply must stay under 1 MiB).
        const MOST: usize = 10_000;
        let (_, a) = self.find_copy(id)?;
        let (_, b) = self.find_copy(to)?;
        let found = match self.inodes_changed(id, to)? {
            Some((ta, tb, inodes)) => {
                let changed: std::collections::HashSet<u64> = inodes.into_iter().collect();
                compare_trees(&*ta, &*tb, Some(&changed), MOST)
            }
            // No inode tables (FAT, NTFS): every entry is stat'ed, still inside the daemon.
            None => match (a.tree(self.settings.fs_owner), b.tree(self.settings.fs_owner)) {
                (Some(ta), Some(tb)) => compare_trees(&*ta, &*tb, None, MOST),
                _ => None,
            },
        };
        let fits =
            |v: &Vec<(shadowcopy::fsread::compare::TreeChange, String)>| v.iter().map(|(_, p)| p.len() + 40).sum::<usize>() < 900 << 10;
        Ok(Answer::Changes(found.filter(fits).map(|v| {
            let mut v: Vec<protocol::ChangeView> =
                v.into_iter().map(|(c, path)| protocol::ChangeView { change: c.word().into(), path }).collect();
            v.sort_by(|x, y| x.path.cmp(&y.path));
            v
        })))
    }

    pub(in crate::service) fn expose(&self, id: Uuid, at: Option<&str>, device: bool, force: bool) -> OpResult {
        let _admin = self.admin.lock();
        let (v, c) = self.find_copy(id)?;
        if let Some(reason) = &c.info.failed {
            return Err(ServiceError::CopyFailed { copy: id, reason: reason.clone() });
        }
        let dir = self.settings.mount.join(&v.name);
        let place = match (at, device) {
            (Some(_), true) | (None, false) => {
                return Err(ServiceError::BadRequest("give a directory to expose the copy's files at, or ask for a device".into()))
            }
            (None, true) => self.exposures.device(id, &dir.join(".images").join(format!("{}.img", c.name))),
            (Some(at), false) => {
                let at = PathBuf::from(at);
                if at.starts_with(&self.settings.mount) {
                    return Err(ServiceError::InsideMount {
                        what: "the directory",
                        path: at,
                        why: "a copy cannot be exposed inside the mount",
                    });
                }
                if c.tree(self.settings.fs_owner).is_none() {
                    return Err(ServiceError::NoFilesystem(id));
                }
                self.exposures.folder(id, &dir.join(&c.name), &at, force)
            }
        }
        .map_err(ServiceError::Expose)?;
        let mut warning = if c.info.stale.is_some() {
            " (warning: this copy is stale: its volume was written while shadowcopy was not serving it, after the copy was taken, so it may show some of those changes)".to_string()
        } else {
            String::new()
        };
        if device && copy_is_xfs(&v, id) {
            // The copy's XFS has the live filesystem's UUID, which the kernel refuses to mount
            // twice; and its log is the instant's, which a read-only device cannot replay.
            warning.push_str(&format!(
                "; it holds XFS with the live filesystem's UUID: mount it with `mount -o ro,nouuid,norecovery {} DIR`",
                place.path()
            ));
        }
        Ok(Answer::Done(format!("shadow copy {id} exposed at {}{warning}", place.path())))
    }

    pub(in crate::service) fn unexpose(&self, path: &str) -> OpResult {
        let _admin = self.admin.lock();
        let e = self.exposures.undo(path).map_err(ServiceError::Expose)?;
        Ok(Answer::Done(format!("shadow copy {} is no longer exposed at {path}", e.copy)))
    }
}

/// Whether the copy's image starts with an XFS superblock (`XFSB`).
fn copy_is_xfs(v: &super::super::Volume, id: Uuid) -> bool {
    let mut magic = [0u8; 4];
    v.read_copy(id, &mut magic, 0).is_ok() && &magic == b"XFSB"
}
