//! Shared parts of the daemon's end-to-end tests: a running `shadowcopyd` in a temporary
//! directory (stopped, unmounted and removed on drop, also when the test fails) and a client.
//!
//! The daemon runs in its own process group: its main process (the holder), the worker it runs
//! and the worker's thaw keeper. [`Daemon::kill`] kills them all (a crash of the whole
//! service); [`Daemon::kill_worker`] kills the worker only (the holder starts another).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shadowcopy::protocol::{Answer, Client, ClientError, CopyView, CreateRequest, Op, SetView};
use shadowcopy::testing::system::*;

/// A daemon with its own state directory, mount and socket.
pub(crate) struct Daemon {
    pub dir: TempDir,
    pub mount: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// Its configuration file (`--config`; none there unless a test writes it), so that no
    /// test ever reads the host's /etc/shadowcopy.
    pub config: PathBuf,
    child: ChildGuard,
    extra: Vec<String>,
    /// Fail points directory (`SHADOWCOPYD_FAILPOINTS_DIR`), when enabled.
    failpoints: Option<PathBuf>,
    /// Environment variables the daemon is started with.
    env: Vec<(String, String)>,
    /// The program file it runs (and a planned restart executes again).
    pub program: PathBuf,
}

/// An active fail point; removed (switched off) on drop.
pub(crate) struct FailPoint(PathBuf);

impl Drop for FailPoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn daemon_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shadowcopyd"))
}

/// The `shadowcopy` CLI, built next to the daemon (`scripts/test` builds the workspace first).
pub(crate) fn cli_binary() -> PathBuf {
    let p = daemon_binary().with_file_name("shadowcopy");
    require(p.is_file(), &format!("the CLI at {} (build the workspace first: cargo build --workspace)", p.display()));
    p
}

impl Daemon {
    pub(crate) fn start(extra: &[&str]) -> Daemon {
        Self::start_with(extra, false)
    }

    /// A daemon started with these environment variables too (kept across restarts).
    pub(crate) fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        Self::build(&[], false, env)
    }

    /// A daemon whose fail points (see `mount/src/failpoints.rs`) the test can switch on.
    pub(crate) fn start_with_failpoints() -> Daemon {
        Self::start_with(&[], true)
    }

    /// A daemon with fail points and these arguments.
    pub(crate) fn start_with_failpoints_and(extra: &[&str]) -> Daemon {
        Self::start_with(extra, true)
    }

    /// Switches a fail point on until the returned guard drops.
    pub(crate) fn failpoint(&self, name: &str) -> FailPoint {
        let dir = self.failpoints.as_ref().expect("started with fail points");
        let p = dir.join(name);
        std::fs::write(&p, b"on").expect("fail point");
        FailPoint(p)
    }

    fn start_with(extra: &[&str], failpoints: bool) -> Daemon {
        Self::build(extra, failpoints, &[])
    }

    /// A daemon run from a copy of its program file in its own directory (`program`), which a
    /// test may replace to upgrade it.
    pub(crate) fn start_from_copy(extra: &[&str]) -> Daemon {
        Self::build_from(extra, false, &[], true)
    }

    fn build(extra: &[&str], failpoints: bool, env: &[(&str, &str)]) -> Daemon {
        Self::build_from(extra, failpoints, env, false)
    }

    fn build_from(extra: &[&str], failpoints: bool, env: &[(&str, &str)], own_program: bool) -> Daemon {
        require_commands(&["losetup", "mount", "umount"]);
        require(Path::new("/dev/fuse").exists(), "/dev/fuse");
        let dir = TempDir::new("sc-daemon-");
        let mut d = Daemon {
            mount: dir.join("mnt"),
            socket: dir.join("control.sock"),
            state: dir.join("state"),
            config: dir.join("shadowcopy.toml"),
            dir,
            child: ChildGuard(None),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            failpoints: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            program: daemon_binary(),
        };
        if own_program {
            d.program = d.dir.join("shadowcopyd");
            // By `cp`, not from this process: a child forked by another test thread while this
            // process held the file open for writing would make its exec fail (ETXTBSY).
            copy_program(&daemon_binary(), &d.program);
        }
        if failpoints {
            let fp = d.dir.join("failpoints");
            std::fs::create_dir(&fp).expect("fail points directory");
            d.failpoints = Some(fp);
        }
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).expect("log file");
        let mut cmd = Command::new(&self.program);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(fp) = &self.failpoints {
            cmd.env("SHADOWCOPYD_FAILPOINTS_DIR", fp);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .args([
                "--state-dir",
                self.state.to_str().unwrap(),
                "--mount",
                self.mount.to_str().unwrap(),
                "--socket",
                self.socket.to_str().unwrap(),
                "--config",
                self.config.to_str().unwrap(),
            ])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting shadowcopyd");
        self.child = ChildGuard(Some(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Client::connect(&self.socket) {
                if c.call(Op::Status, &mut |_, _| {}).is_ok() {
                    return;
                }
            }
            if let Some(status) = self.child.child().try_wait().expect("waiting") {
                panic!("shadowcopyd exited at start ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "shadowcopyd did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's main process (the holder).
    pub(crate) fn pid(&mut self) -> u32 {
        self.child.child().id()
    }

    /// What `status` says about the worker that answers.
    pub(crate) fn worker(&self) -> shadowcopy::protocol::WorkerStatus {
        match self.call(Op::Status) {
            Ok(Answer::Status(s)) => s.worker.expect("the daemon runs a worker"),
            other => panic!("status: {other:?}\n{}", self.log()),
        }
    }

    /// The worker's process id: the process that opens volumes and answers requests.
    pub(crate) fn worker_pid(&self) -> u32 {
        self.worker().pid
    }

    /// SIGKILLs the worker and waits until its replacement answers; the new worker's status.
    pub(crate) fn kill_worker(&mut self) -> shadowcopy::protocol::WorkerStatus {
        let old = self.worker();
        run("kill", &["-KILL", &old.pid.to_string()]);
        self.wait_for_generation(old.generation + 1)
    }

    /// Waits until a worker of generation `generation` or later answers; its status.
    pub(crate) fn wait_for_generation(&mut self, generation: u64) -> shadowcopy::protocol::WorkerStatus {
        self.await_worker(generation, true).1
    }

    /// Like [`Daemon::wait_for_generation`], for a daemon whose first holder (the test's child)
    /// may be dead: the holder's process id, and the worker's status.
    pub(crate) fn wait_for_generation_any_holder(&mut self, generation: u64) -> (u32, shadowcopy::protocol::WorkerStatus) {
        self.await_worker(generation, false)
    }

    fn await_worker(&mut self, generation: u64, child_is_holder: bool) -> (u32, shadowcopy::protocol::WorkerStatus) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Answer::Status(s)) = self.call(Op::Status) {
                if let Some(w) = s.worker.filter(|w| w.generation >= generation) {
                    return (s.pid, w);
                }
            }
            if child_is_holder {
                if let Some(status) = self.child.child().try_wait().expect("waiting") {
                    panic!("shadowcopyd exited ({status}) instead of starting worker {generation}:\n{}", self.log());
                }
            }
            assert!(Instant::now() < deadline, "worker {generation} did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the daemon stalls at fail point `point` (its `.reached` file appears) for
    /// `what`; the `.reached` file, for the test to remove once it moves on.
    pub(crate) fn wait_until_reached(&self, point: &str, what: &str) -> PathBuf {
        let reached = self.dir.join(&format!("failpoints/{point}.reached"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reached.exists() {
            assert!(Instant::now() < deadline, "{what} never reached {point}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        reached
    }

    /// SIGTERM and wait: the daemon must flush, unmount and exit 0.
    pub(crate) fn stop(&mut self) {
        let pid = self.pid();
        run("kill", &["-TERM", &pid.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.child().try_wait().expect("waiting") {
                assert!(status.success(), "shadowcopyd exited with {status}:\n{}", self.log());
                self.child.0 = None;
                break;
            }
            assert!(Instant::now() < deadline, "shadowcopyd did not stop on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!is_mounted(&self.mount), "the mount is still there after the daemon stopped");
    }

    /// Whether the daemon process is still running.
    pub(crate) fn running(&mut self) -> bool {
        self.child.child().try_wait().expect("waiting").is_none()
    }

    /// Waits up to `limit` for the daemon to exit by itself; its exit status, or `None` if it
    /// is still running.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.child().try_wait().expect("waiting") {
                self.child.0 = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Runs the CLI against this daemon.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(cli_binary()).arg("--socket").arg(&self.socket).args(args).output().expect("running the CLI")
    }

    /// Starts the CLI against this daemon in the background, its output discarded.
    pub(crate) fn spawn_cli(&self, args: &[&str]) -> std::process::Child {
        Command::new(cli_binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running the CLI")
    }

    /// SIGKILL of every process of the daemon (holder, worker, thaw keeper): a crash of the
    /// whole service. The stale mount is left for the next start to clear.
    pub(crate) fn kill(&mut self) {
        let mut c = self.child.0.take().expect("running");
        kill_group(c.id());
        c.wait().expect("wait");
        wait_group_gone(c.id());
    }

    pub(crate) fn restart(&mut self) {
        if self.child.0.is_some() {
            self.stop();
        }
        self.spawn();
    }

    pub(crate) fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connecting to the daemon")
    }

    pub(crate) fn call(&self, op: Op) -> Result<Answer, ClientError> {
        self.client().call(op, &mut |_, _| {})
    }

    /// Registers `image` as volume `name`.
    pub(crate) fn add_volume(&self, name: &str, image: &Path) {
        self.add_volume_with_max(name, image, "50%");
    }

    /// Registers `image` as volume `name` with a diff area of at most `max_size`.
    pub(crate) fn add_volume_with_max(&self, name: &str, image: &Path, max_size: &str) {
        self.call(Op::VolumeAdd {
            name: name.into(),
            image: image.display().to_string(),
            diff_area: None,
            max_size: Some(max_size.into()),
            chunk_size: None,
            read_only: false,
            attach: None,
        })
        .unwrap_or_else(|e| panic!("volume add: {e}"));
    }

    /// Registers `image` read-only as volume `name` (its Windows shadow copies are served).
    pub(crate) fn add_read_only_volume(&self, name: &str, image: &Path) {
        self.call(Op::VolumeAdd {
            name: name.into(),
            image: image.display().to_string(),
            diff_area: None,
            max_size: None,
            chunk_size: None,
            read_only: true,
            attach: None,
        })
        .unwrap_or_else(|e| panic!("volume add --read-only: {e}"));
    }

    pub(crate) fn create(&self, volumes: &[&str], volatile: bool) -> SetView {
        let req = CreateRequest {
            persistent: Some(!volatile),
            // Each call is its own connection: keep volatile sets after it.
            keep_after_disconnect: true,
            ..CreateRequest::new(volumes.iter().map(|s| s.to_string()).collect())
        };
        match self.call(Op::Create(req)) {
            Ok(Answer::Set(s)) => s,
            other => panic!("create: {other:?}\n{}", self.log()),
        }
    }

    pub(crate) fn list(&self) -> Vec<CopyView> {
        match self.call(Op::List { volume: None }) {
            Ok(Answer::Copies(c)) => c,
            other => panic!("list: {other:?}"),
        }
    }

    pub(crate) fn live(&self, volume: &str) -> PathBuf {
        self.mount.join(volume).join("live")
    }

    pub(crate) fn tree(&self, volume: &str, c: &CopyView) -> PathBuf {
        self.mount.join(volume).join(&c.exposed_name)
    }

    pub(crate) fn image(&self, volume: &str, c: &CopyView) -> PathBuf {
        self.mount.join(volume).join(".images").join(format!("{}.img", c.exposed_name))
    }
}

/// SIGKILL to every process of the group `pgid` leads.
pub(crate) fn kill_group(pgid: u32) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// Waits (a few seconds at most) until no process of group `pgid` is left.
fn wait_group_gone(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let in_group = || {
        std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid pgrp …; comm may hold spaces, so split after the last ')'.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
    };
    while in_group() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.0.as_mut() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(c) = self.child.0.take() {
            kill_group(c.id());
            drop(ChildGuard(Some(c)));
            // What the TERM left (a worker whose holder went) goes too.
        }
        if is_mounted(&self.mount) {
            let _ = Command::new(which("umount").unwrap_or_else(|| "umount".into())).args(["-l", self.mount.to_str().unwrap()]).status();
        }
    }
}

/// On drop (also when a test fails): unmounts every filesystem mounted under a daemon's
/// directory outside its own mount, innermost first, and detaches the loop devices backed by
/// files there (images, `live` files), so the daemon can stop. Declare it after the daemon.
pub(crate) struct MountsUnder {
    dir: PathBuf,
    daemon_mount: PathBuf,
}

impl MountsUnder {
    pub(crate) fn of(d: &Daemon) -> MountsUnder {
        MountsUnder { dir: d.dir.path().to_path_buf(), daemon_mount: d.mount.clone() }
    }
}

impl Drop for MountsUnder {
    fn drop(&mut self) {
        let mut points: Vec<PathBuf> = shadowcopy::probe::mounts()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.dir) && !p.starts_with(&self.daemon_mount))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
        for l in shadowcopy::probe::loop_devices().unwrap_or_default() {
            if l.backing_file.starts_with(&self.dir) {
                let _ = Command::new("losetup").args(["-d", &l.device]).status();
            }
        }
    }
}

/// The Debian package `scripts/package` built (`scripts/test` builds it first).
pub(crate) fn built_package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let found = std::fs::read_dir(&dir)
        .ok()
        .and_then(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "deb")).max());
    require(found.is_some(), &format!("the .deb in {} (scripts/package builds it; scripts/test runs it)", dir.display()));
    found.unwrap()
}

/// Copies a program file with `cp` (see [`Daemon::start_from_copy`] for why not here).
pub(crate) fn copy_program(from: &Path, to: &Path) {
    run("cp", &[from.to_str().unwrap(), to.to_str().unwrap()]);
}

pub(crate) fn is_mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&p))
}

/// An image file of `size` with mode 0600 (as a careful admin keeps volume images).
pub(crate) fn image_file(dir: &TempDir, name: &str, size: u64) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("image");
    f.set_len(size).expect("size");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// A loop device on a volume's live file, with an ext4 made on it and mounted. Unmounted, then
/// detached, on drop (field order).
pub(crate) struct LiveFs {
    pub mount: Mount,
    pub loop_dev: LoopDevice,
}

impl LiveFs {
    pub(crate) fn new(live: &Path, at: &Path, direct_io: bool) -> LiveFs {
        let loop_dev = LoopDevice::attach(live, direct_io);
        run("mkfs.ext4", &["-q", "-F", &loop_dev.device]);
        let mount = Mount::new(&loop_dev.device, at, None, "");
        LiveFs { mount, loop_dev }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.mount.point.join(rel)
    }
}

/// Kernel log lines since `before` (a `dmesg` snapshot) that report I/O errors on `device`.
pub(crate) fn kernel_io_errors(before: &str, device: &str) -> Vec<String> {
    let now = run_text("dmesg", &[]);
    let dev = device.trim_start_matches("/dev/");
    now.lines()
        .skip(before.lines().count())
        .filter(|l| l.contains(dev) && (l.contains("error") || l.contains("I/O") || l.contains("failed")))
        .map(|l| l.to_string())
        .collect()
}
