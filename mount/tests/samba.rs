//! Previous Versions for Windows clients: smbd, configured with the section `shadowcopy
//! samba-config` prints, serves every copy of a file with its time and content to smbclient (the
//! SMB client is the oracle), a version can be put back over SMB, and a file the client may not
//! read is denied in every version too.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::testing::system::*;

/// smbd on 127.0.0.1 with its own state under `dir`, serving `share` (a section) to guests.
struct Smbd {
    _child: ChildGuard,
    port: u16,
}

impl Smbd {
    fn start(dir: &TempDir, share: &str) -> Smbd {
        let port = 40000 + (std::process::id() % 20000) as u16;
        let base = dir.join("smb");
        for d in ["run", "lock", "state", "cache", "private", "ncalrpc"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let b = base.display();
        // Guests (smbd's `nobody`) stand for the Windows users; the share lets them write.
        let share = share.replace("    read only = no\n", "    read only = no\n    guest ok = yes\n");
        let conf = format!(
            "[global]\n  workgroup = TEST\n  server role = standalone server\n  smb ports = {port}\n  interfaces = lo\n  \
             bind interfaces only = yes\n  pid directory = {b}/run\n  lock directory = {b}/lock\n  state directory = {b}/state\n  \
             cache directory = {b}/cache\n  private dir = {b}/private\n  ncalrpc dir = {b}/ncalrpc\n  log file = {b}/log\n  \
             map to guest = Bad User\n  guest account = nobody\n  load printers = no\n  disable spoolss = yes\n{share}"
        );
        let conf_path = dir.join("smb.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(which("smbd").unwrap())
            .args(["--foreground", "--no-process-group", "-s", conf_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting smbd");
        let smbd = Smbd { _child: ChildGuard(Some(child)), port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !smbd.client("ls").status.success() {
            assert!(Instant::now() < deadline, "smbd did not come up: {}", std::fs::read_to_string(base.join("log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(200));
        }
        smbd
    }

    fn client(&self, commands: &str) -> std::process::Output {
        Command::new(which("smbclient").unwrap())
            .args(["//127.0.0.1/data", "-p", &self.port.to_string(), "-N", "-c", commands])
            .output()
            .expect("smbclient")
    }
}

#[test]
fn smb_clients_see_every_version_get_its_content_and_can_restore_it() {
    require_commands(&["smbd", "smbclient", "mkfs.ext4", "losetup", "mount"]);
    let d = Daemon::start(&["--allow-other"]);
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    run("chmod", &["777", fs.mount.point.to_str().unwrap()]);
    let doc = fs.path("doc.txt");
    let secret = fs.path("secret.txt");
    let mut expected = Vec::new();
    for (i, content) in ["version one\n", "version two\n"].iter().enumerate() {
        std::fs::write(&doc, content).unwrap();
        run("chmod", &["666", doc.to_str().unwrap()]);
        std::fs::write(&secret, format!("secret {i}\n")).unwrap();
        run("chmod", &["600", secret.to_str().unwrap()]);
        let copy = d.create(&["vol"], false).copies[0].clone();
        expected.push((copy.exposed_name, *content));
        std::thread::sleep(Duration::from_millis(1100));
    }
    std::fs::write(&doc, b"version three\n").unwrap();

    let out = d.cli(&["samba-config", fs.mount.point.to_str().unwrap(), "--share", "data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let section = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(section.contains("[data]") && section.contains("vfs objects = shadow_copy2"), "{section}");
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "no warning with --allow-other");
    let smb_dir = TempDir::new("sc-samba-");
    let smbd = Smbd::start(&smb_dir, &section);

    // Every version is listed, with its time.
    let info = smbd.client("allinfo doc.txt");
    let listed = String::from_utf8_lossy(&info.stdout).to_string();
    for (name, _) in &expected {
        assert!(listed.contains(name.as_str()), "{name} listed by allinfo:\n{listed}");
    }
    // Each version's content, as Windows' Previous Versions would open it.
    for (name, content) in &expected {
        let local = smb_dir.join(&format!("got-{name}"));
        let out = smbd.client(&format!("get {name}\\doc.txt {}", local.display()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(std::fs::read_to_string(&local).unwrap(), *content, "{name}");
    }
    // Restore over SMB: the old version copied back over the current file.
    let (oldest, oldest_content) = &expected[0];
    let local = smb_dir.join("restore");
    let out = smbd.client(&format!("get {oldest}\\doc.txt {}; put {} doc.txt", local.display(), local.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read_to_string(&doc).unwrap(), *oldest_content);
    // A file the client may not read (mode 600, root's) is denied now and in every version.
    for path in std::iter::once("secret.txt".to_string()).chain(expected.iter().map(|(n, _)| format!("{n}\\secret.txt"))) {
        let out = smbd.client(&format!("get {path} {}", smb_dir.join("denied").display()));
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("NT_STATUS_ACCESS_DENIED"), "{path} is denied: {text}");
    }
}

#[test]
fn samba_config_warns_when_the_daemon_would_hide_copies_from_smbd() {
    require_commands(&["mkfs.ext4", "losetup", "mount"]);
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 32 << 20);
    d.add_volume("vol", &image);
    let _fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    let out = d.cli(&["samba-config", "vol"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("path = {}", d.dir.join("fs").display())));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-other"), "{}", String::from_utf8_lossy(&out.stderr));
}
