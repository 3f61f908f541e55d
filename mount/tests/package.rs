//! The Debian package (`scripts/package`, which `scripts/test` runs first): installed with
//! `dpkg -i` on this machine, its files where Debian puts them, and the installed daemon and CLI
//! taking a volume from `volume add --mount` to copies and back after a stop and a start, with
//! the installed `/etc/shadowcopy/shadowcopy.toml`. Purged afterwards, also when the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{built_package, is_mounted};
use shadowcopy::protocol::{Answer, Client, Op};
use shadowcopy::testing::system::{mkfs_ext4, require, require_commands, TempDir};

const INSTALLED_CONFIG: &str = "/etc/shadowcopy/shadowcopy.toml";

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs the package; purges it (conffiles too) on drop.
struct Installed;

impl Installed {
    fn new(deb: &Path) -> Installed {
        let before = sh("dpkg-query", &["-W", "-f=${Status}", "shadowcopy"]);
        require(
            !String::from_utf8_lossy(&before.stdout).contains("installed"),
            "no shadowcopy package installed on this machine before the test (it would be replaced, then purged)",
        );
        ok(sh("dpkg", &["-i", deb.to_str().unwrap()]), "dpkg -i");
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "shadowcopy"]).stdout(Stdio::null()).status();
    }
}

/// The installed daemon, on paths of its own; SIGTERM, then SIGKILL, on drop, with what it
/// mounted unmounted first.
struct InstalledDaemon {
    child: Option<std::process::Child>,
    dir: PathBuf,
    mount: PathBuf,
    socket: PathBuf,
}

impl InstalledDaemon {
    fn start(dir: &Path) -> InstalledDaemon {
        let (mount, socket, state) = (dir.join("mnt"), dir.join("control.sock"), dir.join("state"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).unwrap();
        let child = Command::new("/usr/sbin/shadowcopyd")
            .args(["--config", INSTALLED_CONFIG, "--state-dir", state.to_str().unwrap(), "--mount", mount.to_str().unwrap()])
            .args(["--socket", socket.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the installed shadowcopyd");
        let d = InstalledDaemon { child: Some(child), dir: dir.to_path_buf(), mount, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Client::connect(&d.socket).and_then(|mut c| c.call(Op::Status, &mut |_, _| {})).is_err() {
            assert!(Instant::now() < deadline, "the installed daemon did not come up:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new("/usr/bin/shadowcopy").arg("--socket").arg(&self.socket).args(args).output().expect("the installed CLI")
    }

    /// SIGTERM; it must exit 0 by itself.
    fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        ok(sh("kill", &["-TERM", &c.id().to_string()]), "kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(status.success(), "the installed daemon exited with {status}:\n{}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "the installed daemon did not stop on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for InstalledDaemon {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        for m in shadowcopy::probe::mounts().unwrap_or_default().into_iter().rev() {
            if m.mount_point.starts_with(&self.dir) && !m.mount_point.starts_with(&self.mount) {
                let _ = Command::new("umount").arg("-l").arg(&m.mount_point).status();
            }
        }
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).status();
        let _ = c.kill();
        let _ = c.wait();
        if is_mounted(&self.mount) {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

#[test]
fn the_installed_package_protects_a_volume_that_comes_back_mounted_after_a_restart() {
    require_commands(&["dpkg", "dpkg-query", "mkfs.ext4", "man", "systemd-analyze", "bash"]);
    let deb = built_package();
    let _installed = Installed::new(&deb);

    // Its files, where Debian keeps them.
    let listed = ok(sh("dpkg", &["-L", "shadowcopy"]), "dpkg -L");
    for path in [
        "/usr/bin/shadowcopy",
        "/usr/sbin/shadowcopyd",
        "/usr/lib/systemd/system/shadowcopyd.service",
        "/usr/lib/systemd/system/shadowcopyd.socket",
        INSTALLED_CONFIG,
        "/usr/share/man/man1/shadowcopy.1.gz",
        "/usr/share/man/man1/shadowcopy-volume-attach.1.gz",
        "/usr/share/man/man8/shadowcopyd.8.gz",
        "/usr/share/bash-completion/completions/shadowcopy",
        "/usr/share/zsh/vendor-completions/_shadowcopy",
        "/usr/share/fish/vendor_completions.d/shadowcopy.fish",
    ] {
        assert!(listed.lines().any(|l| l == path), "{path} is in the package:\n{listed}");
        assert!(Path::new(path).exists(), "{path} was installed");
    }
    assert!(ok(sh("dpkg-query", &["-W", "-f=${Conffiles}", "shadowcopy"]), "conffiles").contains(INSTALLED_CONFIG));
    assert!(ok(sh("/usr/bin/shadowcopy", &["--version"]), "--version").contains(env!("CARGO_PKG_VERSION")));
    assert_eq!(ok(sh("man", &["-w", "shadowcopyd"]), "man -w").trim(), "/usr/share/man/man8/shadowcopyd.8.gz");
    ok(sh("systemd-analyze", &["verify", "/usr/lib/systemd/system/shadowcopyd.service"]), "systemd-analyze verify of the installed unit");
    let completion = ok(
        sh("bash", &["-c", "source /usr/share/bash-completion/completions/shadowcopy && complete -p shadowcopy"]),
        "the bash completion loads",
    );
    assert!(completion.contains("shadowcopy"), "{completion}");
    ok(sh("/usr/sbin/shadowcopyd", &["--config", INSTALLED_CONFIG, "--check-config"]), "the shipped configuration is valid");

    // The installed daemon and CLI: a volume added with a mount point is mounted now...
    let dir = TempDir::new("sc-package-");
    let seed = dir.join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("report.txt"), "first\n").unwrap();
    let image = dir.join("data.img");
    mkfs_ext4(&image, "64M", Some(&seed), &[]);
    let srv = dir.join("srv");
    let mut d = InstalledDaemon::start(dir.path());
    ok(d.cli(&["volume", "add", "data", image.to_str().unwrap(), "--mount", srv.to_str().unwrap()]), "volume add --mount");
    assert!(std::fs::read_to_string(INSTALLED_CONFIG).unwrap().contains("name = \"data\""), "the installed configuration now attaches it");
    assert_eq!(std::fs::read_to_string(srv.join("report.txt")).unwrap(), "first\n");
    ok(d.cli(&["create", "data"]), "create");
    std::fs::write(srv.join("report.txt"), "second\n").unwrap();

    // ...the shipped `unmount_at_stop = true` makes SIGTERM unmount it and stop...
    d.stop();
    assert!(shadowcopy::probe::mount_at(&srv.canonicalize().unwrap()).unwrap().is_none(), "the stop unmounted it");

    // ...and the next start mounts it again by itself, with the copy intact.
    let d = InstalledDaemon::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !srv.join("report.txt").exists() {
        assert!(Instant::now() < deadline, "the volume was not mounted again at start:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(srv.join("report.txt")).unwrap(), "second\n");
    let copies = match Client::connect(&d.socket).unwrap().call(Op::List { volume: Some("data".into()) }, &mut |_, _| {}).unwrap() {
        Answer::Copies(c) => c,
        other => panic!("list: {other:?}"),
    };
    assert_eq!(copies.len(), 1);
    let in_copy = d.mount.join("data").join(&copies[0].exposed_name).join("report.txt");
    assert_eq!(std::fs::read_to_string(in_copy).unwrap(), "first\n");
    drop(d);
}
