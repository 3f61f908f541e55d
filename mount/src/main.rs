//! `shadowcopyd`: runs in the foreground with logs on stderr (`RUST_LOG`), until SIGTERM or
//! SIGINT with no `live` file in use (or `shadowcopy daemon stop`), then flushes every volume,
//! unmounts and exits 0. SIGHUP is ignored. See [`shadowcopy_mount::lifecycle`].

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fuser::{MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};
use shadowcopy::fsread::ForeignOwner;
use shadowcopy::protocol::WorkerStatus;
use shadowcopy::size::parse_size;
use shadowcopy_mount::config::{self, Config};
use shadowcopy_mount::control::{self, Access};
use shadowcopy_mount::fuse::Frontend;
use shadowcopy_mount::handoff::{self, CrashRoute, Handoff, StartReason};
use shadowcopy_mount::holder::{self, Held, WorkerNews};
use shadowcopy_mount::keeper::{self, ThawKeeper};
use shadowcopy_mount::ledger::NodeLedger;
use shadowcopy_mount::lifecycle::{self, StopReason, WhenInUse};
use shadowcopy_mount::namespace::nodes::Node;
use shadowcopy_mount::service::{Departure, Service, Settings, WorkerIncarnation};
use shadowcopy_mount::state::StateDir;

#[derive(Parser)]
#[command(
    name = "shadowcopyd",
    version,
    about = "The shadowcopy mount daemon: live volumes and their shadow copies as folders",
    long_about = "Hosts the copy-on-write engine for every registered volume, serves the control socket \
                  (used by the `shadowcopy` CLI) and mounts\n\n  <mnt>/<volume>/live                        the live volume (read-write)\n  \
                  <mnt>/<volume>/@GMT-YYYY.MM.DD-HH.MM.SS/    a shadow copy's files (read-only)\n  \
                  <mnt>/<volume>/.images/@GMT-….img           a shadow copy's raw image (read-only)\n\n\
                  Runs in the foreground; stop it with SIGTERM, Ctrl-C or `shadowcopy daemon stop`. It does not stop \
                  while a `live` file is in use (a loop device, a program): it says by what and keeps serving; \
                  `shadowcopy daemon stop --force` stops anyway. SIGHUP is ignored. Logs: RUST_LOG=shadowcopy=debug."
)]
struct Args {
    /// The configuration file: settings (flags win over them) and what to attach per volume
    /// at start. A missing file is an empty configuration.
    /// [default: /etc/shadowcopy/shadowcopy.toml for root, $XDG_CONFIG_HOME/shadowcopy/shadowcopy.toml otherwise]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Read the configuration file, print what is wrong in it (`file:line: what to change`)
    /// and exit: 0 if nothing, 1 otherwise.
    #[arg(long)]
    check_config: bool,
    /// Where registered volumes and (by default) diff areas are kept.
    /// [default: /var/lib/shadowcopy for root, $XDG_STATE_HOME/shadowcopy otherwise]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where to mount. [default: /run/shadowcopy/mnt for root, $XDG_RUNTIME_DIR/shadowcopy/mnt otherwise]
    #[arg(long)]
    mount: Option<PathBuf>,
    /// The control socket. [default: $SHADOWCOPY_SOCKET, /run/shadowcopy/control.sock for root,
    /// $XDG_RUNTIME_DIR/shadowcopy/control.sock otherwise]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Let other users than the daemon's see the mount (file modes still apply: the kernel
    /// enforces every copy's own permissions).
    #[arg(long)]
    allow_other: bool,
    /// Base-volume cache per volume. [default: 64M]
    #[arg(long, value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Pages of each volume's checkpointed index kept in memory: the index's memory is this
    /// plus the records added since the last checkpoint, whatever the diff area's size.
    /// [default: 64M]
    #[arg(long, value_parser = parse_size)]
    index_cache: Option<u64>,
    /// Members of this group may change state through the socket (besides root).
    #[arg(long)]
    admin_group: Option<String>,
    /// Group owning the control socket (members may connect and read).
    #[arg(long)]
    socket_group: Option<String>,
    /// Owner shown for files of filesystems without POSIX owners (FAT, NTFS), as UID:GID.
    /// [default: the owner of the volume's image]
    #[arg(long, value_parser = parse_owner)]
    fs_owner: Option<(u32, u32)>,
    /// FUSE worker threads. [default: 8]
    #[arg(long)]
    threads: Option<usize>,
    /// Readahead of the mount in KiB (the kernel's default for FUSE is 128); 0 leaves it.
    /// [default: 1024]
    #[arg(long)]
    readahead_kb: Option<u32>,
    /// On SIGTERM/SIGINT while a `live` file is in use, stop by itself once it no longer is
    /// (instead of only saying what uses it and carrying on).
    #[arg(long)]
    stop_when_unused: bool,
    /// On SIGTERM/SIGINT, first unmount the filesystems the configuration mounted (in reverse
    /// order) and detach their loop devices, as `shadowcopy daemon stop --unmount` does.
    #[arg(long)]
    unmount_at_stop: bool,
    /// Report a diff area as nearly full (`shadowcopy events`) once it is this full, in percent
    /// of its maximum. [default: 90]
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    diff_area_warn: Option<u8>,
    /// Behave as on a kernel without FUSE_NOTIFY_RESEND (before Linux 6.9): a worker crash then
    /// fails the requests the dead worker was answering instead of having the kernel resend
    /// them (for tests and for comparing the two).
    #[arg(long)]
    no_resend: bool,
    /// Print the manual page (shadowcopyd.8, roff) on stdout and exit, e.g.
    /// `shadowcopyd --print-manpage > /usr/local/share/man/man8/shadowcopyd.8`.
    #[arg(long)]
    print_manpage: bool,
}

impl Args {
    /// The configuration file's path.
    fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| {
            if nix::unistd::geteuid().is_root() {
                config::SYSTEM_PATH.into()
            } else {
                user_dir("XDG_CONFIG_HOME", ".config").join("shadowcopy/shadowcopy.toml")
            }
        })
    }

    /// Takes every setting the command line left out from the configuration.
    fn fill_from(&mut self, c: &config::DaemonSettings) {
        fn or<T: Clone>(flag: &mut Option<T>, conf: &Option<T>) {
            if flag.is_none() {
                flag.clone_from(conf);
            }
        }
        or(&mut self.state_dir, &c.state_dir);
        or(&mut self.mount, &c.mount);
        or(&mut self.socket, &c.socket);
        or(&mut self.admin_group, &c.admin_group);
        or(&mut self.socket_group, &c.socket_group);
        or(&mut self.threads, &c.threads);
        or(&mut self.readahead_kb, &c.readahead_kb);
        or(&mut self.diff_area_warn, &c.diff_area_warn);
        if self.cache_size.is_none() {
            // Checked when the file was read.
            self.cache_size = c.cache_size.as_deref().and_then(|s| parse_size(s).ok());
        }
        if self.index_cache.is_none() {
            self.index_cache = c.index_cache.as_deref().and_then(|s| parse_size(s).ok());
        }
        self.allow_other |= c.allow_other.unwrap_or(false);
        self.stop_when_unused |= c.stop_when_unused.unwrap_or(false);
        self.unmount_at_stop |= c.unmount_at_stop.unwrap_or(false);
    }
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("expected UID:GID")?;
    Ok((u.parse().map_err(|_| "bad UID")?, g.parse().map_err(|_| "bad GID")?))
}

fn group_id(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(name)? {
        Some(g) => Ok(g.gid.as_raw()),
        None => bail!("no group named `{name}`"),
    }
}

fn user_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
            home.join(fallback)
        }
    }
}

/// A mount point left behind by a daemon that was killed answers ENOTCONN: detach it. A live
/// mount there (another daemon) is an error.
fn clear_stale_mount(mnt: &Path) -> Result<()> {
    let mnt_abs = mnt.canonicalize().unwrap_or_else(|_| mnt.to_path_buf());
    if shadowcopy::probe::mount_at(&mnt_abs).context("reading /proc/self/mountinfo")?.is_none() {
        return Ok(());
    }
    // A directory listing is never answered from the kernel's caches here.
    match std::fs::read_dir(mnt) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mount = %mnt.display(), "detaching the stale mount of a daemon that did not exit cleanly");
            nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("detaching the stale mount {}", mnt.display()))?;
            Ok(())
        }
        _ => bail!("something is already mounted at {}; unmount it or choose another --mount", mnt.display()),
    }
}

/// The kernel caps a FUSE mount's readahead at its backing device's default (128 KiB), whatever
/// `max_readahead` the daemon asked for; setting the mount's own `read_ahead_kb` (1 MiB by
/// default) lets sequential reads of copies arrive as larger requests. Best effort (needs root).
fn raise_readahead(mount: &Path, kb: u32) {
    use std::os::unix::fs::MetadataExt;
    if kb == 0 {
        return;
    }
    let Ok(md) = std::fs::metadata(mount) else { return };
    let dev = md.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => tracing::debug!(%path, kb, "readahead set"),
        Err(e) => tracing::debug!(%path, error = %e, "could not raise readahead"),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // No colour codes in files and the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if std::env::args_os().nth(1).is_some_and(|a| a == keeper::KEEPER_ARG) {
        if let Err(e) = keeper::run_keeper() {
            eprintln!("shadowcopyd thaw keeper: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut args = Args::parse();
    let config = Config::load(&args.config_path());
    args.fill_from(&config.daemon);
    let result = if args.print_manpage {
        print_manpage()
    } else if args.check_config {
        check_config(&config)
    } else {
        match Handoff::from_env(handoff::WORKER_ENV) {
            Ok(Some(h)) => run_worker(args, config, h),
            Ok(None) => {
                for e in &config.errors {
                    tracing::error!("configuration: {e}");
                }
                run_holder(args)
            }
            Err(e) => Err(anyhow::anyhow!(e)),
        }
    };
    if let Err(e) = result {
        eprintln!("shadowcopyd: {e:#}");
        std::process::exit(1);
    }
}

/// `--check-config`: what is wrong, or that nothing is.
fn check_config(config: &Config) -> Result<()> {
    for e in &config.errors {
        println!("{e}");
    }
    if !config.errors.is_empty() {
        std::process::exit(1);
    }
    if config.found {
        println!("{}: ok ({} volumes to attach)", config.path.display(), config.volumes.len());
    } else {
        println!("{}: not there (an empty configuration: nothing is attached at start)", config.path.display());
    }
    Ok(())
}

fn print_manpage() -> Result<()> {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(Args::command()).section("8").render(&mut page)?;
    std::io::Write::write_all(&mut std::io::stdout(), &page)?;
    Ok(())
}

/// Where things are, from the arguments and the defaults.
struct Paths {
    state_dir: PathBuf,
    mount: PathBuf,
    socket: PathBuf,
}

impl Paths {
    fn of(args: &Args) -> Paths {
        let root = nix::unistd::geteuid().is_root();
        let state_dir = args.state_dir.clone().unwrap_or_else(|| {
            if root {
                "/var/lib/shadowcopy".into()
            } else {
                user_dir("XDG_STATE_HOME", ".local/state").join("shadowcopy")
            }
        });
        let runtime = if root { PathBuf::from("/run/shadowcopy") } else { user_dir("XDG_RUNTIME_DIR", ".cache").join("shadowcopy") };
        let mount = args.mount.clone().unwrap_or_else(|| runtime.join("mnt"));
        let socket = args.socket.clone().unwrap_or_else(control::default_socket);
        Paths { state_dir, mount, socket }
    }

    /// As the holder passes them to its workers.
    fn handed(&self) -> handoff::DaemonPaths {
        handoff::DaemonPaths { state_dir: self.state_dir.clone(), mount: self.mount.clone(), socket: self.socket.clone() }
    }

    /// The mount point as an absolute path, whether or not it exists yet.
    fn mount_abs(&self) -> PathBuf {
        match (self.mount.parent(), self.mount.file_name()) {
            (Some(parent), Some(name)) => parent.canonicalize().map(|p| p.join(name)).unwrap_or_else(|_| self.mount.clone()),
            _ => self.mount.clone(),
        }
    }
}

fn fuse_config(args: &Args) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("shadowcopy".into()),
        MountOption::Subtype("shadowcopy".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.acl = if args.allow_other { SessionACL::All } else { SessionACL::Owner };
    config
}

/// The daemon's main process: mounts, binds the socket, and runs workers ([`holder`]). Exec'd
/// again by a planned restart, it adopts what its predecessor held.
fn run_holder(args: Args) -> Result<()> {
    let paths = Paths::of(&args);
    let worker_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(h) = Handoff::from_env(handoff::HOLDER_ENV).map_err(|e| anyhow::anyhow!(e))? {
        let mount = paths.mount.canonicalize().unwrap_or(paths.mount.clone());
        let fallback = handoff::DaemonPaths { mount, ..paths.handed() };
        let held = Held::adopt(h, fallback).context("adopting the descriptors of the previous holder")?;
        tracing::info!(generation = held.generation, reason = %held.reason, "holder restarted in place");
        std::process::exit(holder::run(held, worker_args));
    }
    let socket_gid = args.socket_group.as_deref().map(group_id).transpose().context("--socket-group")?;
    // A daemon and keeper that both died mid-hold (a whole cgroup killed) left filesystems on
    // `live` files frozen: thaw them first, while their backing files still name this mount.
    for mount_point in keeper::thaw_leftovers(&paths.mount_abs()) {
        tracing::warn!(mount_point = %mount_point.display(), "thawed a filesystem left frozen by a daemon that died mid-hold");
    }
    clear_stale_mount(&paths.mount)?;
    std::fs::create_dir_all(&paths.mount).with_context(|| format!("creating the mount point {}", paths.mount.display()))?;
    let mount = paths.mount.canonicalize()?;
    std::fs::create_dir_all(&paths.state_dir).with_context(|| format!("creating the state directory {}", paths.state_dir.display()))?;
    if paths.state_dir.canonicalize()?.starts_with(&mount) {
        bail!("the state directory must not be inside the mount");
    }
    // Socket activation (shadowcopyd.socket): the service manager owns the socket's path.
    let (listener, socket_activated) = match control::inherited_from_service_manager()? {
        Some(l) => {
            tracing::info!(socket = %paths.socket.display(), "serving the control socket the service manager passed (socket activation)");
            (l, true)
        }
        None => (control::bind(&paths.socket, socket_gid)?, false),
    };
    let (fuse, handle) = fuser::mount_device(&mount, &fuse_config(&args))
        .with_context(|| format!("mounting FUSE at {} (is /dev/fuse there, and fuse3 installed?)", mount.display()))?;
    let clones = (0..args.threads.unwrap_or(8).max(2))
        .map(|_| fuser::clone_device(fuse.as_fd()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cloning the FUSE descriptor for the serving threads")?;
    let held = Held {
        fuse,
        clones,
        control: listener.into(),
        ledger: NodeLedger::create_file().context("creating the node ledger")?,
        mount,
        socket: paths.socket,
        handle: Some(handle),
        generation: 0,
        initialized: false,
        route: None,
        reason: StartReason::Start,
        daemon_started_unix: handoff::now_unix(),
        program: std::env::current_exe().context("finding this program, to run its workers")?,
        state_dir: paths.state_dir.canonicalize()?,
        socket_activated,
    };
    std::process::exit(holder::run(held, worker_args));
}

/// Duplicates of the descriptors the holder keeps, so that a worker whose holder died can
/// exec itself as the holder with them (the connection must never be held by nothing).
struct Spare {
    fuse: std::os::fd::OwnedFd,
    clones: Vec<std::os::fd::OwnedFd>,
    control: std::os::fd::OwnedFd,
    ledger: std::os::fd::OwnedFd,
}

impl Spare {
    fn of(
        fuse: &std::os::fd::OwnedFd,
        clones: &[std::os::fd::OwnedFd],
        control: &std::os::unix::net::UnixListener,
        ledger: &std::os::fd::OwnedFd,
    ) -> std::io::Result<Spare> {
        Ok(Spare {
            fuse: fuse.try_clone()?,
            clones: clones.iter().map(|c| c.try_clone()).collect::<std::io::Result<_>>()?,
            control: control.as_fd().try_clone_to_owned()?,
            ledger: ledger.try_clone()?,
        })
    }

    /// Execs this program as the holder (as a planned restart's holder does), keeping the
    /// descriptors; the program file first, then the running binary if that file is gone.
    /// Returns only on failure.
    fn become_holder(self, h: &Handoff, route: CrashRoute, dead_holder: i32) -> std::io::Error {
        use std::os::fd::AsRawFd;
        let handoff = Handoff {
            fuse: self.fuse.as_raw_fd(),
            clones: self.clones.iter().map(|c| c.as_raw_fd()).collect(),
            control: self.control.as_raw_fd(),
            ledger: self.ledger.as_raw_fd(),
            status: -1,
            initialized: true,
            route: Some(route),
            reason: handoff::StartReason::HolderLost(dead_holder),
            holder_pid: std::process::id(),
            ..h.clone()
        };
        let fds = handoff.descriptors();
        let mut error = std::io::Error::other("no program to exec");
        for program in [h.program.clone(), PathBuf::from("/proc/self/exe")] {
            let mut cmd = std::process::Command::new(&program);
            cmd.args(std::env::args_os().skip(1)).env(handoff::HOLDER_ENV, handoff.encode()).env_remove(handoff::WORKER_ENV);
            error = shadowcopy::descriptors::exec_keeping(&mut cmd, &fds);
            tracing::error!(program = %program.display(), error = %error, "exec as the holder failed");
        }
        error
    }
}

/// Tells the holder how the worker is doing; nothing to tell when there is none.
struct HolderLink(parking_lot::Mutex<std::fs::File>);

impl HolderLink {
    fn tell(&self, news: &WorkerNews) {
        let mut line = serde_json::to_vec(news).unwrap_or_default();
        line.push(b'\n');
        if let Err(e) = std::io::Write::write_all(&mut *self.0.lock(), &line) {
            tracing::warn!(error = %e, "cannot tell the holder");
        }
    }
}

/// A worker: everything but holding the connection. Exits 0 when the daemon stops (the holder
/// unmounts), [`holder::RESTART_EXIT`] for a planned restart.
fn run_worker(args: Args, config: Config, h: Handoff) -> Result<()> {
    let paths = match &h.paths {
        Some(p) => Paths { state_dir: p.state_dir.clone(), mount: p.mount.clone(), socket: p.socket.clone() },
        None => Paths::of(&args),
    };
    let take = shadowcopy::descriptors::take_inherited;
    let fuse = take(h.fuse).context("the FUSE descriptor")?;
    let clones = h.clones.iter().map(|&fd| take(fd)).collect::<std::io::Result<Vec<_>>>().context("the FUSE clones")?;
    let listener = std::os::unix::net::UnixListener::from(take(h.control).context("the control socket")?);
    let ledger_fd = take(h.ledger).context("the node ledger")?;
    let spare = Spare::of(&fuse, &clones, &listener, &ledger_fd).context("keeping spare copies of the held descriptors")?;
    let ledger = NodeLedger::open(ledger_fd).context("reading the node ledger")?;
    let holder = HolderLink(parking_lot::Mutex::new(std::fs::File::from(take(h.status).context("the holder's status pipe")?)));
    let admin_gid = args.admin_group.as_deref().map(group_id).transpose().context("--admin-group")?;
    let mount = paths.mount.canonicalize()?;

    shadowcopy_mount::failpoints::init();
    // A dead worker's lock went with it.
    let state = StateDir::lock(&paths.state_dir)?;

    // Block the stop signals in every thread; the main thread waits for them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;

    let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    let (fs_uid, fs_gid) = args.fs_owner.unwrap_or((uid, gid));
    let settings = Settings {
        cache_chunks: (args.cache_size.unwrap_or(64 << 20) / (16 << 10)).max(16) as usize,
        index_cache_bytes: args.index_cache.unwrap_or(64 << 20),
        fs_owner: ForeignOwner { uid: fs_uid, gid: fs_gid, ..ForeignOwner::default() },
        allow_other: args.allow_other,
        nearly_full_percent: args.diff_area_warn.unwrap_or(90),
        ledger: Arc::new(ledger),
        config,
        ..Settings::new(mount.clone())
    };
    if !args.allow_other && h.generation == 1 {
        tracing::info!("the mount is for this user only (no --allow-other): Samba and other users see no previous versions");
    }
    let service = Arc::new(Service::start(state, settings));
    let keeper = ThawKeeper::new(std::env::current_exe().context("finding this program, to run its thaw keeper")?);
    keeper.start().context("starting the thaw keeper")?;
    let _ = service.keeper.set(keeper);

    let frontend = Frontend::new(Arc::clone(&service));
    let drain = frontend.drain();
    let config = fuse_config(&args);
    let acl = config.acl;
    let (session, route) = if h.initialized {
        let session = fuser::Session::from_fd_initialized(frontend, fuse, acl, config);
        let route = h.route.unwrap_or(CrashRoute::ReplaceClones);
        if route == CrashRoute::Resend {
            // Before any thread reads: what the dead worker had read comes again, once.
            if let Err(e) = fuser::notify_resend(session.as_fd()) {
                tracing::error!(error = %e, "asking the kernel to resend the previous worker's requests failed");
            }
        }
        (session, route)
    } else {
        let session = fuser::Session::from_fd(frontend, fuse, acl, config)
            .with_context(|| format!("the FUSE handshake at {} (is /dev/fuse there, and fuse3 installed?)", mount.display()))?;
        // Nothing has been read yet, so a resend now moves nothing: it only says whether the
        // kernel has it.
        let route = if args.no_resend {
            CrashRoute::ReplaceClones
        } else {
            match fuser::notify_resend(session.as_fd()) {
                Ok(()) => CrashRoute::Resend,
                Err(e) => {
                    tracing::debug!(error = %e, "FUSE_NOTIFY_RESEND refused");
                    CrashRoute::ReplaceClones
                }
            }
        };
        holder.tell(&WorkerNews::Initialized { route });
        (session, route)
    };
    let _ = service.worker.set(WorkerIncarnation {
        status: WorkerStatus {
            generation: h.generation,
            pid: std::process::id(),
            started_unix: h.started_unix,
            reason: h.reason.to_string(),
            crash_route: match route {
                CrashRoute::Resend => "resend".into(),
                CrashRoute::ReplaceClones => "replace-clones".into(),
            },
        },
        holder_pid: h.holder_pid,
        daemon_started_unix: h.daemon_started_unix,
    });
    let notifier = session.notifier();
    let _ = service.notify.set(Box::new(move |gone: &[Departure]| {
        for d in gone {
            let r = match d {
                Departure::Copy { volume_serial, name } => {
                    let dir = fuser::INodeNo(Node::VolumeDir(*volume_serial).id().unwrap_or(0));
                    let images = fuser::INodeNo(Node::ImagesDir(*volume_serial).id().unwrap_or(0));
                    let _ = notifier.inval_entry(images, std::ffi::OsStr::new(&format!("{name}.img")));
                    notifier.inval_entry(dir, std::ffi::OsStr::new(name))
                }
                Departure::Volume { name } => notifier.inval_entry(fuser::INodeNo(1), std::ffi::OsStr::new(name)),
            };
            if let Err(e) = r {
                // ENOENT: the kernel had nothing cached under that name.
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::debug!(error = %e, "cache invalidation failed");
                }
            }
        }
    }));
    let serving = fuser::ServeStop::new().context("starting the FUSE session")?;
    let stop_serving = serving.clone();
    let fuse_thread = std::thread::Builder::new().name("fuser-bg".into()).spawn(move || session.serve_devices(clones, &serving))?;
    raise_readahead(&mount, args.readahead_kb.unwrap_or(1024));
    if h.generation > 1 {
        // A worker killed mid-hold left its filesystems frozen (its keeper thaws them too, at
        // the latest by the deadline). Only once serving: a thaw writes the filesystem's
        // superblock through `live`, which needs this worker to answer.
        // The keeper thaws, not this process (see `keeper`).
        let (at, svc) = (mount.clone(), Arc::clone(&service));
        std::thread::Builder::new().name("shadowcopyd-thaw".into()).spawn(move || {
            let Some(keeper) = svc.keeper.get() else { return };
            match keeper.thaw_leftovers(&at) {
                Ok(thawed) => {
                    for mount_point in thawed {
                        tracing::warn!(mount_point = %mount_point.display(), "thawed a filesystem the previous worker left frozen");
                    }
                }
                Err(e) => tracing::error!(error = %e, "thawing what the previous worker left frozen failed"),
            }
        })?;
    }

    let svc = Arc::clone(&service);
    let access = Access { admin_gid };
    std::thread::Builder::new().name("shadowcopyd-control".into()).spawn(move || control::serve(listener, svc, access))?;
    let svc = Arc::clone(&service);
    std::thread::Builder::new().name("shadowcopyd-state".into()).spawn(move || svc.run_state_saver())?;
    let svc = Arc::clone(&service);
    // Engine events, scheduled copies and retention, twice a second.
    std::thread::Builder::new().name("shadowcopyd-timer".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        svc.tick();
    })?;

    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    lifecycle::forward_signals(signals, stop_tx.clone()).context("starting the signal thread")?;
    lifecycle::watch_holder(stop_tx.clone()).context("starting the holder watch")?;
    let _ = service.stop_requests.set(parking_lot::Mutex::new(stop_tx));

    // The first worker attaches what the configuration says (in order), before READY=1, so
    // units ordered after the daemon find their filesystems mounted. Later workers leave the
    // attachments as they are (an admin may have unmounted one on purpose).
    let not_attached = if h.generation == 1 { service.attach_configured() } else { 0 };
    tracing::info!(mount = %mount.display(), socket = %paths.socket.display(), state_dir = %paths.state_dir.display(), volumes = service.volumes().len(), generation = h.generation, "shadowcopyd ready");
    holder.tell(&WorkerNews::Ready);
    let when_in_use = if args.stop_when_unused { WhenInUse::StopWhenUnused } else { WhenInUse::KeepServing };
    let failed = service.unopened_count();
    let config_errors = service.settings.config.errors.len();
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!("{failed} could not be opened (shadowcopy volume list)"));
    }
    if not_attached > 0 {
        problems.push(format!("{not_attached} could not be attached (shadowcopy volume list)"));
    }
    if config_errors > 0 {
        problems.push(format!("{config_errors} problems in {} (shadowcopyd --check-config)", service.settings.config.path.display()));
    }
    lifecycle::tell_service_manager(lifecycle::Notice::Ready(&format!(
        "serving {} volumes at {}{}",
        service.volumes().len(),
        mount.display(),
        problems.iter().map(|p| format!("; {p}")).collect::<String>()
    )));
    let reason = lifecycle::wait_for_stop(&service, &stop_rx, when_in_use, args.unmount_at_stop);
    let holder_gone = match reason {
        StopReason::HolderGone { pid } => Some(pid),
        _ => None,
    };
    let restart = reason == StopReason::Restart || holder_gone.is_some();
    if restart {
        tracing::info!("planned restart: draining requests, handing every volume over");
        lifecycle::tell_service_manager(lifecycle::Notice::Status("restarting the worker in place"));
    } else {
        lifecycle::tell_service_manager(lifecycle::Notice::Stopping);
        tracing::info!(?reason, "stopping: flushing every volume and unmounting");
        service.exposures.undo_all();
        service.flush_all();
        let in_use = service.live_in_use(true);
        if !in_use.is_empty() {
            tracing::warn!(
                "stopping by force while {}: their filesystems get I/O errors from now on",
                shadowcopy_mount::service::describe_in_use(&in_use)
            );
        }
    }
    // No operation starts from here on; requests not yet read wait in the kernel for the next
    // worker (or end with the mount).
    service.quiesce();
    stop_serving.stop();
    match fuse_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the FUSE session ended with an error"),
        Err(_) => tracing::error!("the FUSE session panicked"),
    }
    if !drain.wait_idle(Duration::from_secs(10)) {
        tracing::warn!("requests on copies were still being answered after 10 s; handing over anyway (the kernel resends them)");
    }
    if restart {
        // No disk flush and no seal: the next worker shares the page cache, and the holder keeps
        // the mount, so nothing can write the volume behind its back meanwhile.
        service.hand_over_all();
        tracing::info!("handed over");
        if let Some(dead) = holder_gone {
            if let Some(keeper) = service.keeper.get() {
                keeper.stop();
            }
            let e = spare.become_holder(&h, route, dead);
            // Nothing holds the connection but this process: exiting ends the mount.
            bail!("this worker could not become the holder after the holder died: {e}");
        }
        std::process::exit(holder::RESTART_EXIT);
    }
    service.flush_all();
    service.seal_all();
    tracing::info!("stopped");
    Ok(())
}
