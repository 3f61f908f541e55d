//! What the kernel says about loop devices and mounts, read once and unescaped.
//!
//! Owns the parsing of `/sys/block/loop*/loop/backing_file`, `/proc/self/mountinfo`, the
//! open-file links under `/proc/*/fd` and what identifies a block device (`/dev/disk/by-id`,
//! its size, a loop device's backing file). Every caller (flush and hold, the exclusive open of
//! images, the daemon's stale-mount check, the daemon's refusal to stop under a user) asks here
//! instead of reading those files itself.
//!
//! Never changes anything: no attach, detach, mount or unmount.

use std::io;
use std::path::{Path, PathBuf};

/// A loop device and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub device: String,
    /// `major:minor` of the device.
    pub dev: String,
    /// The backing file, as the kernel names it.
    pub backing_file: PathBuf,
}

/// Every loop device that has a backing file. No `/sys/block` (a container without sysfs) means
/// no loop devices.
pub fn loop_devices() -> io::Result<Vec<LoopDevice>> {
    let entries = match std::fs::read_dir("/sys/block") {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else { continue };
        let Ok(dev) = std::fs::read_to_string(entry.path().join("dev")) else { continue };
        out.push(LoopDevice {
            device: format!("/dev/{name}"),
            dev: dev.trim().to_string(),
            backing_file: PathBuf::from(backing.trim_end_matches('\n')),
        });
    }
    Ok(out)
}

/// The loop devices whose backing file is `file` (compared after resolving symlinks).
pub fn loop_devices_backed_by(file: &Path) -> io::Result<Vec<LoopDevice>> {
    let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    Ok(loop_devices()?.into_iter().filter(|l| l.backing_file == file).collect())
}

/// One line of `/proc/self/mountinfo`, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted device.
    pub dev: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type (`ext4`, `fuse.shadowcopy`, …).
    pub fstype: String,
    /// The mount source (`/dev/loop3`, `shadowcopy`, …).
    pub source: String,
    /// Per-mount options (`rw,relatime`).
    pub options: String,
}

/// The mounts of this mount namespace.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mount at exactly `point`, if any (the last one, which is what a path resolves to).
pub fn mount_at(point: &Path) -> io::Result<Option<Mount>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == point))
}

/// Who holds a file open, as far as this mount and process namespace shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileUsers {
    /// Loop devices backed by the file, each with where its filesystem is mounted.
    pub loop_devices: Vec<(LoopDevice, Vec<PathBuf>)>,
    /// Processes with the file open: pid and command name.
    pub processes: Vec<(u32, String)>,
}

impl FileUsers {
    /// Whether nothing visible holds the file.
    pub fn is_empty(&self) -> bool {
        self.loop_devices.is_empty() && self.processes.is_empty()
    }
}

impl std::fmt::Display for FileUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (l, mounts) in &self.loop_devices {
            if mounts.is_empty() {
                parts.push(format!("loop device {} (not mounted)", l.device));
            } else {
                let at: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
                parts.push(format!("loop device {} mounted at {}", l.device, at.join(", ")));
            }
        }
        for (pid, comm) in &self.processes {
            parts.push(format!("process {pid} ({comm})"));
        }
        if parts.is_empty() {
            return f.write_str("a user this daemon cannot see (another mount or process namespace?)");
        }
        f.write_str(&parts.join("; "))
    }
}

/// Who holds `file` open: the loop devices backed by it (with their mounts) and, if
/// `processes`, the processes with a descriptor on it (a scan of every `/proc/*/fd`: costly on
/// a busy host, so only for the rare questions). Processes whose descriptors cannot be read are
/// skipped.
pub fn users_of(file: &Path, processes: bool) -> io::Result<FileUsers> {
    let devices = loop_devices_backed_by(file)?;
    let mounts = if devices.is_empty() { Vec::new() } else { mounts()? };
    let loop_devices = devices
        .into_iter()
        .map(|l| {
            let at = mounts.iter().filter(|m| m.dev == l.dev).map(|m| m.mount_point.clone()).collect();
            (l, at)
        })
        .collect();
    let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let processes = if processes { processes_with_open(&file)? } else { Vec::new() };
    Ok(FileUsers { loop_devices, processes })
}

/// What identifies a block device beyond its path, which the kernel may give to another disk
/// at the next boot (sdb and sdc swapped, another image on `/dev/loop2`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentity {
    /// Bytes.
    pub size: u64,
    /// The `/dev/disk/by-id` names that lead to it (stable across boots; none for loop devices).
    #[serde(default)]
    pub by_id: Vec<String>,
    /// For a loop device: the file behind it, and that file's device and inode numbers.
    #[serde(default)]
    pub loop_backing: Option<(PathBuf, u64, u64)>,
}

impl DeviceIdentity {
    /// What differs between this (as registered) and `found`, in words; `None` if `found` is
    /// the same device as far as can be told.
    pub fn mismatch(&self, found: &DeviceIdentity) -> Option<String> {
        let mut why = Vec::new();
        if self.size != found.size {
            why.push(format!("{} bytes were registered, the device has {}", self.size, found.size));
        }
        if !self.by_id.is_empty() && !self.by_id.iter().any(|id| found.by_id.contains(id)) {
            why.push(format!(
                "it was {} and is now {}",
                self.by_id.join(", "),
                if found.by_id.is_empty() { "a device with no /dev/disk/by-id name".to_string() } else { found.by_id.join(", ") }
            ));
        }
        match (&self.loop_backing, &found.loop_backing) {
            (Some((was, dev, ino)), Some((now, now_dev, now_ino))) if (dev, ino) != (now_dev, now_ino) => {
                why.push(format!("it was a loop device over {} and is now one over {}", was.display(), now.display()));
            }
            (Some((was, ..)), None) => why.push(format!("it was a loop device over {} and is not a loop device now", was.display())),
            _ => {}
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// The identity of the block device at `path`; `None` if `path` is not a block device.
pub fn device_identity(path: &Path) -> io::Result<Option<DeviceIdentity>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::metadata(path)?;
    if !md.file_type().is_block_device() {
        return Ok(None);
    }
    let (major, minor) = (libc::major(md.rdev()), libc::minor(md.rdev()));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let sectors: u64 =
        std::fs::read_to_string(sys.join("size"))?.trim().parse().map_err(|_| io::Error::other("unreadable size in sysfs"))?;
    let canonical = path.canonicalize()?;
    let mut by_id: Vec<String> = match std::fs::read_dir("/dev/disk/by-id") {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.path().canonicalize().is_ok_and(|t| t == canonical))
            .map(|e| e.path().display().to_string())
            .collect(),
        Err(_) => Vec::new(),
    };
    by_id.sort();
    let loop_backing = match std::fs::read_to_string(sys.join("loop/backing_file")) {
        Ok(f) => {
            let file = PathBuf::from(f.trim_end_matches('\n'));
            let (dev, ino) = std::fs::metadata(&file).map(|m| (m.dev(), m.ino())).unwrap_or((0, 0));
            Some((file, dev, ino))
        }
        Err(_) => None,
    };
    Ok(Some(DeviceIdentity { size: sectors * 512, by_id, loop_backing }))
}

/// The processes (pid, command name) with a descriptor on `file` (canonical).
/// Processes that use the filesystem on device `dev` (`major:minor`, as in mountinfo): an open
/// file, their working directory or their root on it. What `umount` would call busy, as far as
/// this process namespace shows it.
pub fn processes_on_filesystem(dev: &str) -> io::Result<Vec<(u32, String)>> {
    use std::os::unix::fs::MetadataExt;
    let on = |p: &Path| std::fs::metadata(p).is_ok_and(|m| format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev())) == dev);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let dir = entry.path();
        let uses = on(&dir.join("cwd"))
            || on(&dir.join("root"))
            || std::fs::read_dir(dir.join("fd")).is_ok_and(|fds| fds.flatten().any(|fd| on(&fd.path())));
        if uses {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            found.push((pid, comm.trim_end().to_string()));
        }
    }
    Ok(found)
}

fn processes_with_open(file: &Path) -> io::Result<Vec<(u32, String)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file)) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim_end().to_string()));
        }
    }
    Ok(found)
}

/// Parses mountinfo: `id parent major:minor root mount-point options [optional…] - fstype source super-options`.
/// Lines that do not have that shape are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(dev), Some(mp), Some(options), Some(fstype), Some(source)) =
            (fields.get(2), fields.get(4), fields.get(5), fields.get(sep + 1), fields.get(sep + 2))
        else {
            continue;
        };
        out.push(Mount {
            dev: dev.to_string(),
            mount_point: PathBuf::from(unescape(mp)),
            fstype: unescape(fstype),
            source: unescape(source),
            options: options.to_string(),
        });
    }
    out
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_mismatch_names_what_changed() {
        let a = DeviceIdentity { size: 100, by_id: vec!["/dev/disk/by-id/ata-A".into()], loop_backing: None };
        assert_eq!(a.mismatch(&a.clone()), None);
        let b = DeviceIdentity { size: 100, by_id: vec!["/dev/disk/by-id/ata-B".into()], loop_backing: None };
        assert!(a.mismatch(&b).unwrap().contains("ata-A and is now /dev/disk/by-id/ata-B"));
        let l1 = DeviceIdentity { size: 100, by_id: vec![], loop_backing: Some(("/a.img".into(), 1, 2)) };
        let l2 = DeviceIdentity { size: 100, by_id: vec![], loop_backing: Some(("/b.img".into(), 1, 3)) };
        assert!(l1.mismatch(&l2).unwrap().contains("over /a.img and is now one over /b.img"));
        assert!(l1.mismatch(&DeviceIdentity { size: 200, ..l1.clone() }).unwrap().contains("100 bytes were registered"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b\134c"), "/mnt/a b\\c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn mountinfo_lines_with_optional_fields_and_spaces() {
        let text = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 35 0:52 / /run/sc rw,nosuid shared:5 other:7 - fuse.shadowcopy shadowcopy rw,user_id=0\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!((m[0].dev.as_str(), m[0].fstype.as_str(), m[0].source.as_str()), ("98:0", "ext3", "/dev/root"));
        assert_eq!((m[1].fstype.as_str(), m[1].options.as_str()), ("fuse.shadowcopy", "rw,nosuid"));
    }
}
