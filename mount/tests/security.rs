//! Invariant 4 and 5 from the outside: the kernel enforces each copy's own modes for other users
//! (CVE-2021-36934 came from copies readable by everyone), and bad input — garbage on the
//! control socket, a damaged filesystem inside a copy — gets an error, never a dead daemon.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

use common::*;
use shadowcopy::protocol::{Answer, ErrorKind, Op, Reply};
use shadowcopy::testing::system::*;

/// Runs `cat FILE` as an unprivileged user; true if it could read.
fn readable_by_nobody(path: &std::path::Path) -> bool {
    succeeds_as(65534, &["cat".as_ref(), path.as_os_str()])
}

#[test]
fn a_private_file_in_a_copy_stays_private() {
    require_commands(&["setpriv", "mkfs.ext4", "mkfifo", "mknod"]);
    let d = Daemon::start(&["--allow-other"]);
    let image = image_file(&d.dir, "vol.img", 128 << 20);
    // Let the unprivileged user walk to the mount (its own folders are 0755).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d.add_volume("vol", &image);
    let copy = {
        let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
        seed_tree(&fs.path("seed"), true, 3000);
        d.create(&["vol"], false).copies[0].clone()
    };
    let tree = d.tree("vol", &copy).join("seed");
    // Sanity: root reads both, so a refusal below is the permission check.
    assert!(std::fs::read(tree.join("private.txt")).is_ok());
    assert!(readable_by_nobody(&tree.join("shared.txt")), "a 0644 file in a copy is readable by others");
    assert!(!readable_by_nobody(&tree.join("private.txt")), "a 0600 root file in a copy must not be readable by others");
    // The raw image and the live file carry the image file's 0600.
    assert!(!readable_by_nobody(&d.image("vol", &copy)), "the raw copy of a 0600 image is private");
    assert!(!readable_by_nobody(&d.live("vol")), "the live file of a 0600 image is private");
    // Nothing in a copy can be changed, even by root.
    let err = std::fs::write(tree.join("shared.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::create_dir(tree.join("new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
}

/// Lets every user reach the daemon's folder and connect to its socket.
fn open_to_everyone(d: &Daemon) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// A command that runs as `uid` (group `uid`, no other groups): `setpriv … PROGRAM`.
fn as_user(uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(which("setpriv").expect("setpriv"));
    c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]).arg(program);
    c
}

/// Runs `argv` as `uid`; true if it succeeded.
fn succeeds_as(uid: u32, argv: &[&std::ffi::OsStr]) -> bool {
    as_user(uid, argv[0]).args(&argv[1..]).output().expect("setpriv").status.success()
}

/// What `uid` may do with each of the ACL test's paths under `root`: read each file, list each
/// directory and read the file inside it.
fn acl_access(root: &std::path::Path, uid: u32) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for f in ["deny-file.txt", "grant-file.txt", "group-grant-file.txt", "inherits/denied-by-default.txt"] {
        out.push((format!("read {f}"), succeeds_as(uid, &["cat".as_ref(), root.join(f).as_os_str()])));
    }
    for d in ["deny-dir", "grant-dir"] {
        out.push((format!("list {d}"), succeeds_as(uid, &["ls".as_ref(), root.join(d).as_os_str()])));
        out.push((format!("read {d}/inner.txt"), succeeds_as(uid, &["cat".as_ref(), root.join(d).join("inner.txt").as_os_str()])));
    }
    out
}

/// Pins the bug where the mount never asked the kernel for FUSE_POSIX_ACL, so only mode bits
/// counted inside copies: a user an ACL denied on the live file read every copy of it
/// (CVE-2021-36934's class), and a user an ACL granted was refused.
#[test]
fn posix_acls_hold_in_every_copy_as_the_kernel_enforces_them() {
    require_commands(&["setpriv", "setfacl", "getfacl", "mkfs.ext4"]);
    let d = Daemon::start(&["--allow-other"]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    const NOBODY: u32 = 65534;
    const OTHER: u32 = 65533;
    let copy = {
        let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
        let root = fs.path("acl");
        std::fs::create_dir(&root).unwrap();
        let setfacl = |args: &[&str], p: &str| run("setfacl", &[args, &[root.join(p).to_str().unwrap()]].concat());
        let file = |p: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(root.join(p), format!("{p}\n")).unwrap();
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let dir = |p: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir(root.join(p)).unwrap();
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        run("chmod", &["0755", root.to_str().unwrap()]);
        // Mode bits would let everyone read it; the ACL denies one user.
        file("deny-file.txt", 0o644);
        setfacl(&["-m", &format!("u:{NOBODY}:---")], "deny-file.txt");
        // Mode bits would let nobody but root read it; the ACL grants one user and one group.
        file("grant-file.txt", 0o600);
        setfacl(&["-m", &format!("u:{NOBODY}:r--")], "grant-file.txt");
        file("group-grant-file.txt", 0o600);
        setfacl(&["-m", &format!("g:{OTHER}:r--")], "group-grant-file.txt");
        dir("deny-dir", 0o755);
        file("deny-dir/inner.txt", 0o644);
        setfacl(&["-m", &format!("u:{NOBODY}:---")], "deny-dir");
        dir("grant-dir", 0o700);
        file("grant-dir/inner.txt", 0o644);
        setfacl(&["-m", &format!("u:{NOBODY}:r-x")], "grant-dir");
        // A default ACL: a file made in the folder afterwards inherits the denial.
        dir("inherits", 0o755);
        setfacl(&["-d", "-m", &format!("u:{NOBODY}:---")], "inherits");
        std::fs::write(root.join("inherits/denied-by-default.txt"), b"inherited\n").unwrap();
        // The live filesystem itself: the expectations below are what the kernel enforces there.
        let live = acl_access(&root, NOBODY);
        let expected_nobody = vec![
            ("read deny-file.txt".to_string(), false),
            ("read grant-file.txt".to_string(), true),
            ("read group-grant-file.txt".to_string(), false),
            ("read inherits/denied-by-default.txt".to_string(), false),
            ("list deny-dir".to_string(), false),
            ("read deny-dir/inner.txt".to_string(), false),
            ("list grant-dir".to_string(), true),
            ("read grant-dir/inner.txt".to_string(), true),
        ];
        assert_eq!(live, expected_nobody, "the kernel's own enforcement on the live filesystem");
        d.create(&["vol"], false).copies[0].clone()
    };
    let ours = d.tree("vol", &copy).join("acl");
    let lo = LoopDevice::attach_read_only(&d.image("vol", &copy));
    let kernel = Mount::new(&lo.device, &d.dir.join("kernel"), Some("ext4"), "ro,noload");
    let theirs = kernel.point.join("acl");
    for uid in [NOBODY, OTHER] {
        let (o, k) = (acl_access(&ours, uid), acl_access(&theirs, uid));
        assert_eq!(o, k, "uid {uid}: the copy through our mount vs the kernel's read-only mount of its image");
        // Not vacuous: each user is both denied and granted something by an ACL.
        assert!(o.iter().any(|(_, ok)| *ok) && o.iter().any(|(_, ok)| !*ok), "uid {uid}: {o:?}");
    }
    let facl = |p: &std::path::Path| run_text("getfacl", &["-p", "--omit-header", p.to_str().unwrap()]);
    for p in ["deny-file.txt", "grant-file.txt", "deny-dir", "inherits"] {
        assert_eq!(facl(&ours.join(p)), facl(&theirs.join(p)), "getfacl {p}");
    }
    let granted = acl_access(&ours, NOBODY);
    assert!(granted.contains(&("read grant-file.txt".to_string(), true)), "{granted:?}");
    assert!(granted.contains(&("read deny-file.txt".to_string(), false)), "{granted:?}");
    let other = acl_access(&ours, OTHER);
    assert!(other.contains(&("read group-grant-file.txt".to_string(), true)), "{other:?}");
}

fn raw_exchange(socket: &std::path::Path, bytes: &[u8]) -> Option<Reply> {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(bytes).expect("send");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

#[test]
fn garbage_on_the_control_socket_gets_error_replies() {
    let d = Daemon::start(&[]);
    let cases: Vec<(&str, Vec<u8>, ErrorKind)> = vec![
        ("not json", b"hello daemon\n".to_vec(), ErrorKind::BadRequest),
        ("binary", vec![0xff, 0x00, 0x13, 0x37, b'\n'], ErrorKind::BadRequest),
        ("unknown op", br#"{"v":1,"op":"format_disk"}"#.iter().copied().chain(*b"\n").collect(), ErrorKind::BadRequest),
        (
            "unknown field",
            br#"{"v":1,"op":"list","args":{"volume":null,"all":true}}"#.iter().copied().chain(*b"\n").collect(),
            ErrorKind::BadRequest,
        ),
        ("future version", br#"{"v":99,"op":"status"}"#.iter().copied().chain(*b"\n").collect(), ErrorKind::Version),
        ("oversized", vec![b'x'; (1 << 20) + 100], ErrorKind::BadRequest),
    ];
    for (what, bytes, kind) in cases {
        match raw_exchange(&d.socket, &bytes) {
            Some(Reply::Error(e)) => assert_eq!(e.kind, kind, "{what}: {}", e.message),
            other => panic!("{what}: expected an error reply, got {other:?}"),
        }
    }
    // A client that connects and vanishes mid-line.
    drop(UnixStream::connect(&d.socket).unwrap().write_all(br#"{"v":1,"op":"sta"#));
    // The daemon is alive and well.
    assert!(matches!(d.call(Op::Status), Ok(Answer::Status(_))));
}

#[test]
fn unprivileged_clients_may_read_but_not_change() {
    require_commands(&["setpriv"]);
    let d = Daemon::start(&[]);
    open_to_everyone(&d);
    let cli = cli_binary();
    let run_as_nobody = |args: &[&str]| as_user(65534, &cli).args(["--socket", d.socket.to_str().unwrap()]).args(args).output().unwrap();
    let list = run_as_nobody(&["--json", "list"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let add = run_as_nobody(&["volume", "add", "x", "/etc/hostname"]);
    assert!(!add.status.success());
    let msg = String::from_utf8_lossy(&add.stderr);
    assert!(msg.contains("root") && msg.contains("admin group"), "{msg}");
}

/// A copy whose filesystem is damaged: reads of the broken parts fail with EIO, the rest and the
/// raw image stay readable, and the daemon lives on.
#[test]
fn a_damaged_filesystem_in_a_copy_gives_eio_not_a_dead_daemon() {
    require_commands(&["mkfs.ext4", "debugfs", "mkfifo", "mknod"]);
    let d = Daemon::start(&[]);
    let seed = d.dir.join("seed");
    seed_tree(&seed, true, 3000);
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    mkfs_ext4(&image, "64M", Some(&seed), &["-b", "4096"]);
    // Damage the directory block of /many (3000 entries) and the extent root of big.bin.
    let stat = |p: &str| run_text("debugfs", &["-R", &format!("blocks {p}"), image.to_str().unwrap()]);
    let many_block: u64 = stat("/many").split_whitespace().next().unwrap().parse().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
        f.write_all_at(&[0xA5; 4096], many_block * 4096).unwrap();
    }
    d.add_volume("vol", &image);
    let copy = d.create(&["vol"], false).copies[0].clone();
    let tree = d.tree("vol", &copy);
    let err = std::fs::read_dir(tree.join("many")).and_then(|rd| rd.collect::<Result<Vec<_>, _>>()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "a damaged directory reads as EIO: {err}");
    assert_eq!(std::fs::read(tree.join("hello.txt")).unwrap(), b"hello, shadow copies\n", "the undamaged parts read");
    let raw = std::fs::read(d.image("vol", &copy)).unwrap();
    assert_eq!(raw.len(), 64 << 20, "the raw image stays readable");
    assert!(matches!(d.call(Op::Status), Ok(Answer::Status(_))), "the daemon is alive");
}

/// A volume whose image holds no filesystem we know: its copies are exposed as raw images only.
#[test]
fn an_unknown_filesystem_gets_the_raw_image_only() {
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 8 << 20);
    std::fs::write(&image, vec![0x42u8; 8 << 20]).unwrap();
    d.add_volume("vol", &image);
    let copy = d.create(&["vol"], false).copies[0].clone();
    assert!(!d.tree("vol", &copy).exists(), "no tree for an unknown filesystem");
    assert_eq!(std::fs::read(d.image("vol", &copy)).unwrap(), vec![0x42u8; 8 << 20]);
    assert!(d.log().contains("no known filesystem"), "the daemon says why");
}

/// `count` idle clients of user `uid` (`socat` reading the socket, sending nothing), held until
/// the guards drop; and what the daemon said to those it refused (a `busy` line, then close).
fn idle_clients(d: &Daemon, uid: u32, count: usize) -> (Vec<ChildGuard>, Vec<String>) {
    use std::io::Read;
    let mut clients: Vec<ChildGuard> = (0..count)
        .map(|_| {
            ChildGuard(Some(
                as_user(uid, "socat")
                    .args(["-u", &format!("UNIX-CONNECT:{}", d.socket.display()), "STDOUT"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("socat"),
            ))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut refused = Vec::new();
    for c in &mut clients {
        if c.child().try_wait().unwrap().is_some() {
            let mut line = String::new();
            c.child().stdout.take().unwrap().read_to_string(&mut line).unwrap();
            refused.push(line.trim().to_string());
        }
    }
    (clients, refused)
}

/// Pins F7: with a 64-connection cap and no per-user limit or idle timeout, a read-only member
/// of the socket's group holding 64 idle connections locked root out of `create`, `delete`,
/// `status` and writer registration, and the CLI said "Broken pipe" instead of "busy".
#[test]
fn idle_connections_cannot_lock_root_out() {
    require_commands(&["setpriv", "socat"]);
    let d = Daemon::start(&[]);
    open_to_everyone(&d);
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    // Three users fill the shared slots; each is capped on its own.
    let mut helpers = Vec::new();
    for uid in [65534, 65533, 65532] {
        let (guard, refused) = idle_clients(&d, uid, 20);
        assert_eq!(refused.len(), 4, "uid {uid}: 16 connections are one user's share: {refused:?}");
        assert!(refused.iter().all(|r| r.contains("busy") && r.contains(&format!("user {uid} already has 16"))), "{refused:?}");
        helpers.push(guard);
    }
    let (_fourth, refused) = idle_clients(&d, 65531, 1);
    assert_eq!(refused.len(), 1, "the shared slots are all taken");
    assert!(refused[0].contains("all 48 connections"), "{refused:?}");
    // Root still gets through, for reading and for changes.
    assert!(matches!(d.call(Op::Status), Ok(Answer::Status(_))));
    let set = d.create(&["vol"], false);
    assert_eq!(set.copies.len(), 1);
    // The CLI of a refused user says the daemon is busy, not "Broken pipe".
    let cli = |uid: u32| as_user(uid, cli_binary()).args(["--socket", d.socket.to_str().unwrap(), "list"]).output().unwrap();
    let out = cli(65531);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("busy") && !err.contains("Broken pipe"), "{err}");
    // Once the idle clients go, the slots come back.
    drop(helpers);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = cli(65531);
        if out.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots were not given back: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
