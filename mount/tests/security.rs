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
    let setpriv = which("setpriv").expect("setpriv");
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .output()
        .expect("setpriv");
    out.status.success()
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
        ("unknown field", br#"{"v":1,"op":"list","args":{"volume":null,"all":true}}"#.iter().copied().chain(*b"\n").collect(), ErrorKind::BadRequest),
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
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let cli = cli_binary();
    let run_as_nobody = |args: &[&str]| {
        Command::new(which("setpriv").unwrap())
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&cli)
            .args(["--socket", d.socket.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
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
