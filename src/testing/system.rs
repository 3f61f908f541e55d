//! Guards for real system resources used by integration tests. Every guard undoes what it made
//! when dropped (unmount, detach, kill, remove), so a failing test leaves nothing behind.
//! Prerequisites (root, a command, `/dev/fuse`) are checked with [`require`], which panics with
//! what to install: a test never skips silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// Panics unless `cond`, naming what is missing and how to get it.
pub fn require(cond: bool, what: &str) {
    assert!(cond, "missing prerequisite: {what} (scripts/test and .ci/run install everything; run them as root)");
}

/// Panics unless every command is on the PATH (with `/sbin` and `/usr/sbin`).
pub fn require_commands(cmds: &[&str]) {
    for c in cmds {
        require(which(c).is_some(), &format!("the command `{c}`"));
    }
    require(nix::unistd::geteuid().is_root(), "root (loop devices and mounts)");
}

/// The path of a command, searching PATH plus the sbin directories.
pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path.split(':').chain(["/sbin", "/usr/sbin", "/usr/local/sbin"]).map(|d| Path::new(d).join(cmd)).find(|p| p.is_file());
    found
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let exe = which(cmd).unwrap_or_else(|| PathBuf::from(cmd));
    let out = Command::new(&exe).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command and returns its stdout as text.
pub fn run_text(cmd: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&run(cmd, args).stdout).into_owned()
}

/// A temporary directory under `/var/tmp` (not a tmpfs: images and diff areas can be large),
/// removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A new temporary directory named `prefix…` (under /var/tmp when it exists).
    pub fn new(prefix: &str) -> TempDir {
        let base = Path::new("/var/tmp");
        let d = tempfile::Builder::new().prefix(prefix).tempdir_in(if base.is_dir() { base } else { Path::new("/tmp") });
        TempDir(d.expect("creating a temporary directory"))
    }
    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    /// A path inside it.
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
}

/// A loop device attached to a file; detached on drop.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub device: String,
}

impl LoopDevice {
    /// `losetup --find --show [--direct-io=on] FILE`.
    pub fn attach(file: &Path, direct_io: bool) -> LoopDevice {
        let f = file.to_str().expect("utf-8 path");
        let mut args = vec!["--find", "--show"];
        if direct_io {
            args.push("--direct-io=on");
        }
        args.push(f);
        let device = run_text("losetup", &args).trim().to_string();
        LoopDevice { device }
    }

    /// A read-only loop device.
    pub fn attach_read_only(file: &Path) -> LoopDevice {
        let device = run_text("losetup", &["--find", "--show", "--read-only", file.to_str().expect("utf-8 path")]).trim().to_string();
        LoopDevice { device }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new(which("losetup").unwrap_or_else(|| "losetup".into()))
                .args(["-d", &self.device])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("warning: could not detach {}", self.device);
    }
}

/// A mounted filesystem; unmounted on drop (lazily if busy).
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
}

impl Mount {
    /// `mount [-t TYPE] [-o OPTIONS] SOURCE POINT`; creates `point`.
    pub fn new(source: &str, point: &Path, fstype: Option<&str>, options: &str) -> Mount {
        std::fs::create_dir_all(point).expect("creating a mount point");
        let p = point.to_str().expect("utf-8 path");
        let mut args = Vec::new();
        if let Some(t) = fstype {
            args.extend(["-t", t]);
        }
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend([source, p]);
        run("mount", &args);
        Mount { point: point.to_path_buf() }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let p = self.point.to_string_lossy().into_owned();
        let umount = which("umount").unwrap_or_else(|| "umount".into());
        for _ in 0..20 {
            if Command::new(&umount).arg(&p).status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new(&umount).args(["-l", &p]).status();
    }
}

/// A child process killed (SIGKILL) and reaped on drop unless it already exited.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// The child (panics if it was taken).
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is running")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes an ext4 image of `size` (e.g. `64M`) from the directory `root` (`mkfs.ext4 -d`).
pub fn mkfs_ext4(image: &Path, size: &str, root: Option<&Path>, extra: &[&str]) {
    let mut args: Vec<&str> = vec!["-q", "-F"];
    args.extend(extra);
    let r;
    if let Some(root) = root {
        r = root.to_str().expect("utf-8 path").to_string();
        args.extend(["-d", &r]);
    }
    args.extend([image.to_str().expect("utf-8 path"), size]);
    run("mkfs.ext4", &args);
}

/// What a tree holds, path by path: the fields `stat` shows, content hashes, link targets and
/// xattrs. Two manifests compare equal when the trees would look the same to any program.
pub type Manifest = std::collections::BTreeMap<String, Entry>;

/// One path of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Inode number.
    pub ino: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Hard links.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Change time (seconds, nanoseconds).
    pub ctime: (i64, i64),
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Device number.
    pub rdev: u64,
    /// Hash of a file's content, a symlink's target.
    pub content: Option<u64>,
    /// Extended attributes, sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Which fields a comparison looks at (FAT and NTFS have no inode numbers, owners or ctime in
/// the POSIX sense; their oracles differ there).
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// Compare inode numbers.
    pub ino: bool,
    /// Compare owners and modes.
    pub owner_and_mode: bool,
    /// Compare link counts.
    pub nlink: bool,
    /// Compare block counts.
    pub blocks: bool,
    /// Compare mtime and ctime.
    pub times: bool,
    /// Compare atime.
    pub atime: bool,
    /// Compare extended attributes.
    pub xattrs: bool,
}

impl Fields {
    /// Every field.
    pub const ALL: Fields = Fields { ino: true, owner_and_mode: true, nlink: true, blocks: true, times: true, atime: true, xattrs: true };
    /// Names, sizes and content only (filesystems without POSIX metadata).
    pub const NAMES_SIZES_CONTENT: Fields =
        Fields { ino: false, owner_and_mode: false, nlink: false, blocks: false, times: false, atime: false, xattrs: false };
}

/// Hashes bytes (FNV-1a, 64 bit): stable across runs.
pub fn content_hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The manifest of the tree under `root`, as the kernel shows it (paths relative, `/` for root).
pub fn manifest_of_dir(root: &Path, fields: Fields) -> Manifest {
    let mut m = Manifest::new();
    let mut stack = vec![(PathBuf::new(), root.to_path_buf())];
    while let Some((rel, abs)) = stack.pop() {
        let md = std::fs::symlink_metadata(&abs).unwrap_or_else(|e| panic!("lstat {}: {e}", abs.display()));
        let ft = md.file_type();
        let content = if ft.is_file() {
            Some(content_hash(&std::fs::read(&abs).unwrap_or_else(|e| panic!("reading {}: {e}", abs.display()))))
        } else if ft.is_symlink() {
            Some(content_hash(std::fs::read_link(&abs).expect("readlink").as_os_str().as_encoded_bytes()))
        } else {
            None
        };
        let xattrs = if fields.xattrs { list_xattrs(&abs) } else { Vec::new() };
        let key = if rel.as_os_str().is_empty() { "/".to_string() } else { format!("/{}", rel.display()) };
        m.insert(key, entry(&md, content, xattrs, fields));
        if ft.is_dir() {
            for e in std::fs::read_dir(&abs).unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display())) {
                let e = e.expect("dir entry");
                // The inode number in the directory entry is the one `stat` shows.
                if fields.ino {
                    use std::os::unix::fs::{DirEntryExt, MetadataExt};
                    let st = std::fs::symlink_metadata(e.path()).expect("lstat").ino();
                    assert_eq!(e.ino(), st, "d_ino and st_ino of {} differ", e.path().display());
                }
                stack.push((rel.join(e.file_name()), e.path()));
            }
        }
    }
    m
}

/// Builds an entry from `lstat` results, keeping only `fields`.
pub fn entry(md: &std::fs::Metadata, content: Option<u64>, xattrs: Vec<(String, Vec<u8>)>, f: Fields) -> Entry {
    use std::os::unix::fs::MetadataExt;
    let is_dir = md.file_type().is_dir();
    Entry {
        ino: if f.ino { md.ino() } else { 0 },
        mode: if f.owner_and_mode { md.mode() } else { md.mode() & 0o170000 },
        nlink: if f.nlink { md.nlink() } else { 0 },
        uid: if f.owner_and_mode { md.uid() } else { 0 },
        gid: if f.owner_and_mode { md.gid() } else { 0 },
        // A directory's size is filesystem-specific on FAT/NTFS.
        size: if is_dir && !f.blocks { 0 } else { md.size() },
        blocks: if f.blocks { md.blocks() } else { 0 },
        mtime: if f.times { (md.mtime(), md.mtime_nsec()) } else { (0, 0) },
        ctime: if f.times { (md.ctime(), md.ctime_nsec()) } else { (0, 0) },
        atime: if f.atime { (md.atime(), md.atime_nsec()) } else { (0, 0) },
        rdev: md.rdev(),
        content,
        xattrs,
    }
}

fn list_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let names = match xattr::list(p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Vec::new(),
        Err(e) => panic!("listxattr {}: {e}", p.display()),
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .map(|name| {
            let v = xattr::get(p, &name).unwrap_or_else(|e| panic!("getxattr {} {name:?}: {e}", p.display())).unwrap_or_default();
            (name.to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort();
    out
}

/// Panics with the first differences if two manifests differ.
pub fn assert_same(ours: &Manifest, oracle: &Manifest, what: &str) {
    let mut diffs = Vec::new();
    for (p, o) in oracle {
        match ours.get(p) {
            None => diffs.push(format!("missing in ours: {p}")),
            Some(e) if e != o => diffs.push(format!("{p}:\n  ours:   {e:?}\n  oracle: {o:?}")),
            _ => {}
        }
    }
    for p in ours.keys() {
        if !oracle.contains_key(p) {
            diffs.push(format!("extra in ours: {p}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences ({} paths in the oracle):\n{}",
        diffs.len(),
        oracle.len(),
        diffs.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Fills `root` with a tree that exercises a filesystem reader: small, empty, large, sparse
/// files; short and long symlinks; hard links; a FIFO and device nodes; a large directory;
/// xattrs; odd names; a private (0600, other owner) file; deep nesting. `posix` adds what only
/// POSIX filesystems hold (links, nodes, owners, xattrs). `many` files go into one directory
/// (3000 makes an ext4 htree).
pub fn seed_tree(root: &Path, posix: bool, many: usize) {
    use std::os::unix::fs::PermissionsExt;
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, data).expect("write");
    };
    w("hello.txt", b"hello, shadow copies\n");
    w("empty", b"");
    w("dir/sub/deeper/deepest/leaf.txt", b"deep\n");
    w("name with spaces & ünïcödé.txt", b"odd names\n");
    let mut x = 0x1234_5678_9abc_def0u64;
    let big: Vec<u8> = (0..(3 << 20) + 12345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    w("big.bin", &big);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(root.join("sparse.bin")).expect("sparse");
        f.set_len(40 << 20).expect("truncate");
        f.write_all_at(b"middle of nowhere", 17 << 20).expect("write");
        f.write_all_at(b"end", (40 << 20) - 3).expect("write");
    }
    for i in 0..many {
        w(&format!("many/file-{i:05}"), format!("{i}\n").as_bytes());
    }
    if posix {
        std::os::unix::fs::symlink("hello.txt", root.join("short-link")).expect("symlink");
        let long = format!("{}/target", "a-long-directory-name".repeat(6));
        std::os::unix::fs::symlink(long, root.join("long-link")).expect("symlink");
        std::fs::hard_link(root.join("hello.txt"), root.join("dir/hard-link")).expect("link");
        run("mkfifo", &[root.join("fifo").to_str().expect("utf-8")]);
        run("mknod", &[root.join("null-dev").to_str().expect("utf-8"), "c", "1", "3"]);
        run("mknod", &[root.join("block-dev").to_str().expect("utf-8"), "b", "7", "200"]);
        w("private.txt", b"secret\n");
        std::fs::set_permissions(root.join("private.txt"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        w("shared.txt", b"for everyone\n");
        std::fs::set_permissions(root.join("shared.txt"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::chown(root.join("shared.txt"), Some(1234), Some(4321)).expect("chown");
        std::fs::set_permissions(root.join("dir"), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        xattr::set(root.join("hello.txt"), "user.comment", b"greeting").expect("setxattr");
        xattr::set(root.join("big.bin"), "user.big", &[b'x'; 700]).expect("setxattr");
    }
}

/// The project's test data, `tests/data` (see its README for origins and licences).
pub fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The Windows NTFS volume with two VSS stores (`windows-vss-ntfs.qcow2`), converted to a raw
/// image in `dir` with `qemu-img`.
pub fn windows_vss_image(dir: &TempDir) -> PathBuf {
    require_commands(&["qemu-img"]);
    let src = testdata_dir().join("windows-vss-ntfs.qcow2");
    require(src.is_file(), &format!("the test image {}", src.display()));
    let raw = dir.join("windows-vss.raw");
    run("qemu-img", &["convert", "-O", "raw", src.to_str().expect("utf-8"), raw.to_str().expect("utf-8")]);
    raw
}
