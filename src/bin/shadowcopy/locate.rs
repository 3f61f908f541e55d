//! Where things are: which volume and which path inside it a path names, and where a volume's
//! filesystem is mounted (a loop device over its `live` file). Shared by `versions`, `restore`,
//! `changes` and `samba-config`.
//!
//! Reads the kernel's view (`probe`) and asks the daemon for its mount; changes nothing.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use shadowcopy::protocol::{default_socket_path, Answer, Client, Op};

/// Where a path lives: its volume, the daemon's mount, and the path inside the volume's
/// filesystem (relative, `""` for its root).
pub(crate) struct Located {
    pub(crate) volume: String,
    pub(crate) mount: PathBuf,
    pub(crate) rel: PathBuf,
}

/// One request to the daemon at `socket` (or the default socket).
pub(crate) fn call(socket: &Option<PathBuf>, op: Op) -> Result<Answer> {
    let socket = socket.clone().unwrap_or_else(default_socket_path);
    Ok(Client::connect(&socket)?.call(op, &mut |_, _| {})?)
}

/// Where the filesystem on volume `volume`'s `live` file is mounted, if it is.
pub(crate) fn live_mount(mount: &Path, volume: &str) -> Result<Option<PathBuf>> {
    let live = mount.join(volume).join("live");
    let devices = shadowcopy::probe::loop_devices_backed_by(&live).context("reading /sys/block")?;
    let mounts = shadowcopy::probe::mounts().context("reading /proc/self/mountinfo")?;
    Ok(mounts.into_iter().find(|m| devices.iter().any(|l| l.dev == m.dev)).map(|m| m.mount_point))
}

/// Which volume `path` is on, and where inside it: a path inside the daemon's mount
/// (`<mnt>/<volume>/@GMT-…/rel` or `<mnt>/<volume>/live`), or a path on a filesystem mounted
/// from a loop device over a volume's `live` file.
pub(crate) fn locate(path: &Path, socket: &Option<PathBuf>) -> Result<Located> {
    let Answer::Status(status) = call(socket, Op::Status)? else { bail!("unexpected answer to status") };
    let mount = PathBuf::from(&status.mount);
    // The path itself may be gone (a deleted file): resolve its nearest existing ancestor.
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        rest.push(existing.file_name().context("no part of the path exists")?.to_owned());
        existing = existing.parent().context("no part of the path exists")?;
    }
    let mut resolved = existing.canonicalize().with_context(|| format!("resolving {}", existing.display()))?;
    for r in rest.iter().rev() {
        resolved.push(r);
    }
    if let Ok(inside) = resolved.strip_prefix(&mount) {
        let mut parts = inside.components();
        let volume = match parts.next() {
            Some(Component::Normal(v)) => v.to_string_lossy().into_owned(),
            _ => bail!("{} is the mount itself; name a path inside a volume's copy", path.display()),
        };
        let rel: PathBuf = match parts.next() {
            Some(Component::Normal(c)) if c.to_string_lossy().starts_with("@GMT-") => parts.collect(),
            _ => bail!("{} is not inside a copy's folder (<mnt>/{volume}/@GMT-…/…)", path.display()),
        };
        return Ok(Located { volume, mount, rel });
    }
    let mounts = shadowcopy::probe::mounts().context("reading /proc/self/mountinfo")?;
    let m = mounts
        .iter()
        .filter(|m| resolved.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .context("no mount holds that path")?;
    let devices = shadowcopy::probe::loop_devices().context("reading /sys/block")?;
    let on_live = devices.iter().find(|l| l.dev == m.dev).and_then(|l| l.backing_file.strip_prefix(&mount).ok().map(Path::to_path_buf));
    let volume = match on_live.as_ref().map(|p| p.components().collect::<Vec<_>>()) {
        Some(parts) if parts.len() == 2 && parts[1] == Component::Normal("live".as_ref()) => {
            parts[0].as_os_str().to_string_lossy().into_owned()
        }
        _ => bail!(
            "{} is on {} (mounted at {}), which is not a loop device over a shadowcopy volume's live file",
            path.display(),
            m.source,
            m.mount_point.display()
        ),
    };
    let rel = resolved.strip_prefix(&m.mount_point).expect("filtered above").to_path_buf();
    Ok(Located { volume, mount, rel })
}
