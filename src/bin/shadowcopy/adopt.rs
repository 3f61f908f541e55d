//! `shadowcopy adopt MOUNTPOINT`: turns a mounted filesystem on a block device or an image file
//! into a shadowcopy volume with the least downtime: check that nothing uses it, unmount,
//! register, attach and mount again through `live` with the same type and options (the daemon
//! writes its configuration file), comment out its fstab line (with a backup), verify. A failed
//! step after the unmount puts the original mount back.
//!
//! Owns the plan and its rollback; the daemon does the registering and attaching (`volume add`
//! with an attachment), util-linux the mounting.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shadowcopy::probe;
use shadowcopy::protocol::{default_socket_path, Answer, AttachSpec, Client, Op};

/// `shadowcopy adopt`'s arguments.
#[derive(clap::Args)]
pub(crate) struct AdoptArgs {
    /// Where the filesystem is mounted now.
    mountpoint: PathBuf,
    /// The volume's name [default: the mount point's last component, e.g. `data` for /srv/data].
    #[arg(long)]
    name: Option<String>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The fstab to update if the mount came from it.
    #[arg(long, default_value = "/etc/fstab")]
    fstab: PathBuf,
    /// Where the diff area goes [default: under the daemon's state directory].
    #[arg(long)]
    diff_area: Option<PathBuf>,
    /// Maximum diff-area size (`10%`, `2G`, `unbounded`) [default: 10%].
    #[arg(long)]
    max_size: Option<String>,
}

/// What the filesystem is mounted from.
enum Source {
    /// A block device (`/dev/sdb1`).
    Device(String),
    /// An image file, through this loop device.
    Image { file: PathBuf, device: String },
}

struct Plan {
    mountpoint: PathBuf,
    name: String,
    fstype: String,
    options: Option<String>,
    source: Source,
    /// The fstab line (1-based) the mount came from.
    fstab_line: Option<usize>,
}

impl Plan {
    fn image(&self) -> String {
        match &self.source {
            Source::Device(d) => d.clone(),
            Source::Image { file, .. } => file.display().to_string(),
        }
    }

    fn steps(&self, fstab: &Path) -> Vec<String> {
        let mp = self.mountpoint.display();
        let mut s = vec![format!("unmount {mp} ({} from {})", self.fstype, self.source_name())];
        if let Source::Image { device, .. } = &self.source {
            s.push(format!("detach {device} if the unmount left it attached"));
        }
        s.push(format!("register {} as volume `{}` and create its diff area", self.image(), self.name));
        s.push(format!(
            "mount it again at {mp} through the volume's live file (-t {}{}) and write that to the daemon's configuration",
            self.fstype,
            self.options.as_ref().map_or(String::new(), |o| format!(" -o {o}"))
        ));
        if let Some(line) = self.fstab_line {
            s.push(format!("comment out line {line} of {} (a backup is kept beside it)", fstab.display()));
        }
        s.push(format!("verify that {mp} is mounted through volume `{}`", self.name));
        s
    }

    fn source_name(&self) -> String {
        match &self.source {
            Source::Device(d) => d.clone(),
            Source::Image { file, device } => format!("{} on {device}", file.display()),
        }
    }
}

pub(crate) fn adopt(args: AdoptArgs, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let socket = socket.unwrap_or_else(default_socket_path);
    let mut client = Client::connect(&socket)?;
    let Answer::Status(status) = client.call(Op::Status, &mut |_, _| {})? else { bail!("the daemon did not answer status") };
    let plan = make_plan(&args, Path::new(&status.mount), &mut client)?;
    let steps = plan.steps(&args.fstab);
    if args.dry_run {
        if json {
            out!("{}", json!({ "volume": plan.name, "mountpoint": plan.mountpoint, "steps": steps, "dry_run": true }));
        } else {
            out!("Would adopt {} as volume `{}`:", plan.mountpoint.display(), plan.name);
            for (i, s) in steps.iter().enumerate() {
                out!("  {}. {s}", i + 1);
            }
        }
        return Ok(());
    }
    let users = processes_using(&plan.mountpoint)?;
    if !users.is_empty() {
        bail!(
            "{} is in use by {}: stop them first (adopting unmounts it for a moment); nothing was changed",
            plan.mountpoint.display(),
            users
        );
    }
    run(&["umount", &plan.mountpoint.display().to_string()]).context("unmounting; nothing was changed")?;
    if let Err(e) = finish(&plan, &args, &mut client, Path::new(&status.mount)) {
        let back = put_back(&plan, &mut client);
        return Err(match back {
            Ok(()) => e.context(format!("adopting {} failed; the original mount is back", plan.mountpoint.display())),
            Err(b) => e.context(format!(
                "adopting {} failed, and putting the original mount back failed too ({b:#}): mount {} at {} by hand",
                plan.mountpoint.display(),
                plan.source_name(),
                plan.mountpoint.display()
            )),
        });
    }
    if json {
        out!("{}", json!({ "volume": plan.name, "mountpoint": plan.mountpoint, "steps": steps, "dry_run": false }));
    } else {
        out!(
            "{} is now volume `{}`, mounted through {}/{}/live; take a copy with `shadowcopy create {}`",
            plan.mountpoint.display(),
            plan.name,
            status.mount,
            plan.name,
            plan.name
        );
    }
    Ok(())
}

fn make_plan(args: &AdoptArgs, daemon_mount: &Path, client: &mut Client) -> Result<Plan> {
    let mountpoint = args.mountpoint.canonicalize().with_context(|| format!("{}", args.mountpoint.display()))?;
    if mountpoint == Path::new("/") {
        bail!("the root filesystem cannot be adopted: it cannot be unmounted while the system runs, and the daemon that serves it would live on it");
    }
    let mounts = probe::mounts()?;
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == mountpoint).cloned() else {
        bail!("nothing is mounted at {}", mountpoint.display());
    };
    let below: Vec<String> = mounts
        .iter()
        .filter(|o| o.mount_point != mountpoint && o.mount_point.starts_with(&mountpoint))
        .map(|o| o.mount_point.display().to_string())
        .collect();
    if !below.is_empty() {
        bail!("{} has filesystems mounted below it ({}): unmount them first", mountpoint.display(), below.join(", "));
    }
    let loops = probe::loop_devices()?;
    let source = match loops.iter().find(|l| l.dev == m.dev) {
        Some(l) if l.backing_file.starts_with(daemon_mount) => {
            bail!("{} is already mounted through shadowcopy ({})", mountpoint.display(), l.backing_file.display())
        }
        Some(l) => Source::Image { file: l.backing_file.clone(), device: l.device.clone() },
        None if is_block_device(&m.source) => Source::Device(m.source.clone()),
        None => bail!(
            "{} is mounted from {} ({}), not from a block device or an image file: shadowcopy protects block volumes",
            mountpoint.display(),
            m.source,
            m.fstype
        ),
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => mountpoint
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect())
            .unwrap_or_else(|| "volume".into()),
    };
    if let Answer::Volumes(vs) = client.call(Op::VolumeList, &mut |_, _| {})? {
        if vs.iter().any(|v| v.name == name) {
            bail!("a volume named `{name}` exists already; give another with --name");
        }
    }
    let fstab_entry = read_fstab(&args.fstab).into_iter().find(|e| e.mount_point == mountpoint);
    let options = match &fstab_entry {
        Some(e) => keep_options(&e.options),
        None => keep_options(&m.options),
    };
    Ok(Plan { mountpoint, name, fstype: m.fstype, options, source, fstab_line: fstab_entry.map(|e| e.line) })
}

/// The steps after the unmount.
fn finish(plan: &Plan, args: &AdoptArgs, client: &mut Client, daemon_mount: &Path) -> Result<()> {
    if let Source::Image { file, device } = &plan.source {
        if probe::loop_devices()?.iter().any(|l| &l.device == device) {
            run(&["losetup", "-d", device])?;
        }
        // A device with autoclear (`mount -o loop`), or one `losetup -d` found busy, is detached
        // by the kernel a moment after its last close: the image is not free before that.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !probe::loop_devices_backed_by(file)?.is_empty() {
            if std::time::Instant::now() > deadline {
                bail!("{} is still attached to a loop device 10 s after the unmount", file.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let spec = AttachSpec {
        mount: Some(plan.mountpoint.display().to_string()),
        fs_type: Some(plan.fstype.clone()),
        fs_options: plan.options.clone(),
    };
    client
        .call(
            Op::VolumeAdd {
                name: plan.name.clone(),
                image: plan.image(),
                diff_area: args.diff_area.as_ref().map(|d| std::path::absolute(d).unwrap_or(d.clone()).display().to_string()),
                max_size: args.max_size.clone(),
                chunk_size: None,
                read_only: false,
                attach: Some(spec),
            },
            &mut |_, _| {},
        )
        .context("registering and attaching the volume")?;
    if let Some(line) = plan.fstab_line {
        comment_out(&args.fstab, line, &plan.name).with_context(|| format!("updating {}", args.fstab.display()))?;
    }
    let live = daemon_mount.join(&plan.name).join("live");
    let now = probe::mount_at(&plan.mountpoint)?;
    let through_live = now.as_ref().is_some_and(|m| probe::loop_devices_backed_by(&live).is_ok_and(|ls| ls.iter().any(|l| l.dev == m.dev)));
    if !through_live || now.as_ref().is_some_and(|m| m.fstype != plan.fstype) {
        bail!("after mounting, {} is not the {} filesystem through {}", plan.mountpoint.display(), plan.fstype, live.display());
    }
    Ok(())
}

/// Undoes what [`finish`] did, then mounts the filesystem from where it was.
fn put_back(plan: &Plan, client: &mut Client) -> Result<()> {
    if let Ok(Answer::Volumes(vs)) = client.call(Op::VolumeList, &mut |_, _| {}) {
        if vs.iter().any(|v| v.name == plan.name) {
            client.call(Op::VolumeDetach { name: plan.name.clone() }, &mut |_, _| {}).context("detaching the new volume")?;
            client.call(Op::VolumeRemove { name: plan.name.clone() }, &mut |_, _| {}).context("unregistering the new volume")?;
        }
    }
    let mp = plan.mountpoint.display().to_string();
    let mut options = plan.options.clone().into_iter().collect::<Vec<_>>();
    let source = match &plan.source {
        Source::Device(d) => d.clone(),
        Source::Image { file, .. } => {
            options.insert(0, "loop".into());
            file.display().to_string()
        }
    };
    let mut cmd = vec!["mount", "-t", &plan.fstype];
    let joined = options.join(",");
    if !joined.is_empty() {
        cmd.extend(["-o", &joined]);
    }
    cmd.extend([source.as_str(), mp.as_str()]);
    run(&cmd)
}

/// Mount options worth carrying over: not the defaults, not fstab's own words.
fn keep_options(options: &str) -> Option<String> {
    let kept: Vec<&str> = options
        .split(',')
        .filter(|o| {
            !matches!(
                *o,
                "" | "defaults" | "rw" | "relatime" | "auto" | "noauto" | "nofail" | "user" | "nouser" | "users" | "_netdev" | "loop"
            ) && !o.starts_with("loop=")
                && !o.starts_with("x-")
                && !o.starts_with("comment=")
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

struct FstabEntry {
    line: usize,
    mount_point: PathBuf,
    options: String,
}

fn read_fstab(path: &Path) -> Vec<FstabEntry> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[0].starts_with('#') {
                return None;
            }
            let mp = PathBuf::from(f[1].replace("\\040", " "));
            let mount_point = mp.canonicalize().unwrap_or(mp);
            Some(FstabEntry { line: i + 1, mount_point, options: f[3].to_string() })
        })
        .collect()
}

/// Comments out line `line` of the fstab, after copying it to `<fstab>.shadowcopy-<unix time>`.
fn comment_out(fstab: &Path, line: usize, volume: &str) -> Result<()> {
    let text = std::fs::read_to_string(fstab)?;
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let backup = PathBuf::from(format!("{}.shadowcopy-{secs}", fstab.display()));
    std::fs::copy(fstab, &backup).with_context(|| format!("backing it up to {}", backup.display()))?;
    let mut out = String::new();
    for (i, l) in text.lines().enumerate() {
        if i + 1 == line {
            out.push_str(&format!(
                "# Adopted by shadowcopy as volume `{volume}`: shadowcopyd mounts it (/etc/shadowcopy/shadowcopy.toml).\n# {l}\n"
            ));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    let tmp = fstab.with_extension("shadowcopy-new");
    std::fs::write(&tmp, out)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, fstab)?;
    Ok(())
}

fn is_block_device(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// The processes using the filesystem at `mountpoint`, described; empty if none.
fn processes_using(mountpoint: &Path) -> Result<String> {
    let Some(m) = probe::mount_at(mountpoint)? else { return Ok(String::new()) };
    let users = probe::processes_on_filesystem(&m.dev)?;
    Ok(users.iter().map(|(pid, comm)| format!("process {pid} ({comm})")).collect::<Vec<_>>().join(", "))
}

fn run(cmd: &[&str]) -> Result<()> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().with_context(|| format!("running {}", cmd[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
