//! `shadowcopy samba-config`: the `[share]` section that shows a volume's copies to Windows
//! clients as Previous Versions, through Samba's `vfs_shadow_copy2` (see `docs/samba.md`).
//!
//! Owns only the text of the section; never edits `smb.conf` and never talks to Samba.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shadowcopy::protocol::{Answer, Op};

/// `shadowcopy samba-config MOUNTPOINT|VOLUME [--share NAME]`.
pub(crate) fn samba_config(target: &str, share: Option<&str>, socket: Option<PathBuf>) -> Result<()> {
    let Answer::Status(status) = super::locate::call(&socket, Op::Status)? else { bail!("unexpected answer to status") };
    let mount = PathBuf::from(&status.mount);
    // The share's folder and the mount point of the filesystem it is on.
    let (path, fs_root, volume) = if target.contains('/') {
        let at = super::locate::locate(Path::new(target), &socket)?;
        let path = Path::new(target).canonicalize().with_context(|| format!("resolving {target}"))?;
        if path.starts_with(&mount) {
            bail!("{target} is inside the daemon's mount; give the folder the filesystem on the volume is mounted at");
        }
        let fs_root = strip_suffix(&path, &at.rel).with_context(|| format!("finding the mount point of {}", path.display()))?;
        (path, fs_root, at.volume)
    } else {
        let Some(m) = super::locate::live_mount(&mount, target)? else {
            bail!("nothing is mounted from volume `{target}`'s live file: mount its filesystem first (losetup, mount), or give the mount point")
        };
        (m.clone(), m, target.to_string())
    };
    let name = share.map_or_else(|| volume.clone(), str::to_string);
    out!("# Previous Versions of volume `{volume}` for Windows clients (shadowcopy samba-config).");
    out!("# shadowcopyd must run with --allow-other, so that smbd's users can read the copies.");
    out!("[{name}]");
    out!("    path = {}", path.display());
    out!("    read only = no");
    out!("    vfs objects = shadow_copy2");
    out!("    shadow:snapdir = {}", mount.join(&volume).display());
    if path != fs_root {
        out!("    shadow:basedir = {}", fs_root.display());
    }
    out!("    shadow:format = @GMT-%Y.%m.%d-%H.%M.%S");
    out!("    shadow:localtime = no");
    out!("    shadow:sort = desc");
    if !status.allow_other {
        eprintln!(
            "shadowcopy: warning: shadowcopyd runs without --allow-other: smbd's users cannot read the copies and Windows shows no previous versions; restart it with --allow-other"
        );
    }
    Ok(())
}

/// `path` without the trailing components `suffix`.
fn strip_suffix(path: &Path, suffix: &Path) -> Option<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in suffix.components() {
        if !p.pop() {
            return None;
        }
    }
    Some(p)
}
