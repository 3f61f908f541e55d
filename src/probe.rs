//! What the kernel says about loop devices and mounts, read once and unescaped.
//!
//! Owns the parsing of `/sys/block/loop*/loop/backing_file`, `/proc/self/mountinfo` and the
//! open-file links under `/proc/*/fd`. Every caller (flush and hold, the exclusive open of
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

/// Who holds `file` open: the loop devices backed by it (with their mounts) and the processes
/// with a descriptor on it. Processes whose descriptors cannot be read are skipped.
pub fn users_of(file: &Path) -> io::Result<FileUsers> {
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
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file)) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            processes.push((pid, comm.trim_end().to_string()));
        }
    }
    Ok(FileUsers { loop_devices, processes })
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
