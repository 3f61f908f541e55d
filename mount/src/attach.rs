//! Attachments: a loop device over a volume's `live` file (`losetup`) or a filesystem mounted
//! from one (`mount -o loop`, so that unmounting it by any route also detaches the device), and
//! undoing them. util-linux does the kernel work, exactly as an fstab line would.
//!
//! Owns the commands and what they mean; answers what is attached now from the kernel's own
//! tables ([`shadowcopy::probe`]), so a mount made or undone by hand is seen as it is. Never
//! decides what to attach (the configuration and the service do), and must never be called with
//! a service lock held: the kernel's reads of `live` during a mount need the serving threads.

use std::path::{Path, PathBuf};
use std::process::Command;

use shadowcopy::probe;
use shadowcopy::protocol::AttachSpec;

/// What went wrong, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The mount point has another filesystem on it.
    #[error("{point} already has {what} ({fstype}) mounted on it; unmount it or choose another mount point")]
    Occupied {
        /// The mount point.
        point: String,
        /// What is mounted there.
        what: String,
        /// Its type.
        fstype: String,
    },
    /// The mount point cannot be used.
    #[error("the mount point {point}: {why}")]
    BadMountPoint {
        /// The mount point.
        point: String,
        /// Why.
        why: String,
    },
    /// A command failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        output: String,
    },
    /// The filesystem is in use.
    #[error("{point} is busy: close what uses it (`fuser -vm {point}` shows what), then try again")]
    Busy {
        /// The mount point.
        point: String,
    },
    /// A loop device over `live` carries a filesystem the attachment did not mount.
    #[error("{device} is mounted at {at}, which this attachment did not mount; unmount it first")]
    MountedElsewhere {
        /// The loop device.
        device: String,
        /// Where.
        at: String,
    },
    /// The kernel's tables could not be read.
    #[error("reading the kernel's loop devices and mounts: {0}")]
    Probe(#[from] std::io::Error),
}

/// What is attached over one `live` file now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// Loop devices over it.
    pub devices: Vec<probe::LoopDevice>,
    /// Where the attachment's mount point has one of them mounted (`None`: not mounted, or
    /// the attachment has no mount point).
    pub mounted_at: Option<PathBuf>,
}

/// What is attached over `live` now, for `spec`.
pub fn current(live: &Path, spec: &AttachSpec) -> Result<Attached, AttachError> {
    let devices = probe::loop_devices_backed_by(live)?;
    let mounted_at = match &spec.mount {
        Some(point) => {
            let point = Path::new(point).canonicalize().unwrap_or_else(|_| PathBuf::from(point));
            probe::mount_at(&point)?.filter(|m| devices.iter().any(|d| d.dev == m.dev)).map(|m| m.mount_point)
        }
        None => None,
    };
    Ok(Attached { devices, mounted_at })
}

/// Makes `spec` true for `live` (a no-op for what already is), returning what was done.
/// `fuse_mount` is the daemon's mount, where no attachment may point.
pub fn attach(live: &Path, read_only: bool, spec: &AttachSpec, fuse_mount: &Path) -> Result<String, AttachError> {
    let now = current(live, spec)?;
    let Some(point) = &spec.mount else {
        if let Some(d) = now.devices.first() {
            return Ok(format!("{} was already attached", d.device));
        }
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if read_only {
            cmd.arg("--read-only");
        }
        cmd.arg(live);
        let device = run(cmd)?;
        return Ok(format!("attached {device}"));
    };
    if let Some(at) = &now.mounted_at {
        return Ok(format!("already mounted at {}", at.display()));
    }
    let bad = |why: String| AttachError::BadMountPoint { point: point.clone(), why };
    std::fs::create_dir_all(point).map_err(|e| bad(format!("cannot be created: {e}")))?;
    let dir = Path::new(point).canonicalize().map_err(|e| bad(e.to_string()))?;
    if !dir.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    if dir.starts_with(fuse_mount) {
        return Err(bad(format!("is inside the daemon's mount {}", fuse_mount.display())));
    }
    if let Some(m) = probe::mount_at(&dir)? {
        return Err(AttachError::Occupied { point: point.clone(), what: m.source, fstype: m.fstype });
    }
    let mut options = vec!["loop".to_string()];
    if read_only {
        options.push("ro".into());
    }
    options.extend(spec.fs_options.iter().cloned());
    let mut cmd = Command::new("mount");
    if let Some(t) = &spec.fs_type {
        cmd.args(["-t", t]);
    }
    cmd.args(["-o", &options.join(",")]).arg(live).arg(&dir);
    run(cmd)?;
    let device = current(live, spec)?.devices.last().map_or_else(|| "a loop device".to_string(), |d| d.device.clone());
    Ok(format!("mounted {device} at {}", dir.display()))
}

/// Undoes `spec` for `live`: unmounts its filesystem (refused while busy), then detaches every
/// loop device over `live` that nothing has mounted. Returns what was done.
pub fn detach(live: &Path, spec: &AttachSpec) -> Result<String, AttachError> {
    let now = current(live, spec)?;
    let mut done = Vec::new();
    if let Some(at) = &now.mounted_at {
        let out = Command::new("umount").arg(at).output().map_err(|e| command_error("umount", &e.to_string()))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if said.contains("busy") {
                return Err(AttachError::Busy { point: at.display().to_string() });
            }
            return Err(command_error(&format!("umount {}", at.display()), &said));
        }
        done.push(format!("unmounted {}", at.display()));
    }
    // `mount -o loop` set autoclear: its device is gone with the unmount. What is left was
    // attached by `losetup`, or by hand.
    let mounts = probe::mounts()?;
    for d in probe::loop_devices_backed_by(live)? {
        if let Some(m) = mounts.iter().find(|m| m.dev == d.dev) {
            return Err(AttachError::MountedElsewhere { device: d.device, at: m.mount_point.display().to_string() });
        }
        let mut cmd = Command::new("losetup");
        cmd.args(["-d", &d.device]);
        run(cmd)?;
        done.push(format!("detached {}", d.device));
    }
    Ok(if done.is_empty() { "nothing was attached".into() } else { done.join(", ") })
}

/// Runs `cmd`; its trimmed stdout, or its stderr as the error.
fn run(mut cmd: Command) -> Result<String, AttachError> {
    let line =
        format!("{} {}", cmd.get_program().to_string_lossy(), cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let out = cmd.output().map_err(|e| command_error(&line, &format!("{e} (is util-linux installed?)")))?;
    if !out.status.success() {
        return Err(command_error(&line, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn command_error(command: &str, output: &str) -> AttachError {
    AttachError::Command { command: command.to_string(), output: if output.is_empty() { "no message".into() } else { output.to_string() } }
}
