//! FAT and NTFS volumes: written through `live` by independent tools (mtools, mkfs.ntfs and
//! ntfs-3g), copied, and every copy's tree, read through our mount, equals what the independent
//! reader finds in the copy's raw image (`mcopy -s` out of `.images/…img`; an `ntfs-3g -o ro`
//! mount of it): names, sizes and content. No POSIX owners on these: files show the volume's
//! owner (here root) with read-only modes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;
use shadowcopy::testing::system::*;

fn mtools(cmd: &str, args: &[&str]) {
    let exe = which(cmd).unwrap_or_else(|| panic!("{cmd}"));
    let out = Command::new(exe).args(args).env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C.UTF-8").output().expect(cmd);
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn check_modes(tree: &Path) {
    for (p, e) in manifest_of_dir(tree, Fields::ALL) {
        assert_eq!((e.uid, e.gid), (0, 0), "{p} is owned by the volume's owner");
        // A symlink's own mode means nothing (lrwxrwxrwx, as ntfs-3g shows it).
        if e.mode & 0o170000 != 0o120000 {
            assert_eq!(e.mode & 0o222, 0, "{p} is read-only");
        }
    }
}

#[test]
fn fat_copies_match_mtools() {
    require_commands(&["mkfs.vfat", "mcopy", "mmd"]);
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "fat.img", 160 << 20);
    run("mkfs.vfat", &["-F", "32", image.to_str().unwrap()]);
    d.add_volume("fat", &image);
    let live = d.live("fat");
    let live_s = live.to_str().unwrap();
    let seed = d.dir.join("seed");
    // mtools is quadratic in a directory's size: keep it modest.
    seed_tree(&seed, false, 300);
    // Write through the live file, with mtools.
    mtools("mcopy", &["-s", "-i", live_s, seed.to_str().unwrap(), "::/"]);
    let first = d.create(&["fat"], false).copies[0].clone();
    std::fs::write(d.dir.join("later.txt"), b"written after the first copy\n").unwrap();
    mtools("mcopy", &["-o", "-i", live_s, d.dir.join("later.txt").to_str().unwrap(), "::/seed/hello.txt"]);
    let second = d.create(&["fat"], false).copies[0].clone();
    for (i, copy) in [&first, &second].iter().enumerate() {
        let out = d.dir.join(&format!("mtools{i}"));
        std::fs::create_dir(&out).unwrap();
        mtools("mcopy", &["-s", "-n", "-i", d.image("fat", copy).to_str().unwrap(), "::/seed", out.to_str().unwrap()]);
        let oracle = manifest_of_dir(&out.join("seed"), Fields::NAMES_SIZES_CONTENT);
        let ours = manifest_of_dir(&d.tree("fat", copy).join("seed"), Fields::NAMES_SIZES_CONTENT);
        assert!(oracle.len() > 300, "mtools extracted the seed ({} paths)", oracle.len());
        assert_same(&ours, &oracle, &format!("FAT copy {i} vs mtools"));
    }
    assert_eq!(std::fs::read(d.tree("fat", &first).join("seed/hello.txt")).unwrap(), b"hello, shadow copies\n");
    assert_eq!(std::fs::read(d.tree("fat", &second).join("seed/hello.txt")).unwrap(), b"written after the first copy\n");
    check_modes(&d.tree("fat", &first));
}

/// Reparse data (hex, for setfattr) of a relative Windows symbolic link to `target`.
fn reparse_symlink(target: &str) -> String {
    let name: Vec<u8> = target.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    let n = name.len() as u16;
    let mut b = Vec::new();
    b.extend_from_slice(&0xa000_000cu32.to_le_bytes()); // IO_REPARSE_TAG_SYMLINK
    b.extend_from_slice(&(12 + 2 * n).to_le_bytes()); // data length
    b.extend_from_slice(&0u16.to_le_bytes());
    for v in [0, n, n, n] {
        b.extend_from_slice(&v.to_le_bytes()); // substitute name at 0, print name after it
    }
    b.extend_from_slice(&1u32.to_le_bytes()); // SYMLINK_FLAG_RELATIVE
    b.extend_from_slice(&name);
    b.extend_from_slice(&name);
    format!("0x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

#[test]
fn ntfs_copies_match_ntfs_3g() {
    require_commands(&["mkfs.ntfs", "ntfs-3g", "setfattr", "getfattr"]);
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "ntfs.img", 160 << 20);
    d.add_volume("win", &image);
    let live = d.live("win");
    run("mkfs.ntfs", &["-F", "-Q", "-q", live.to_str().unwrap()]);
    let seed = d.dir.join("seed");
    seed_tree(&seed, false, 3000);
    let copy = {
        // ntfs-3g writes through the live file (FUSE on FUSE), then unmounts to flush.
        let m = Mount::new(live.to_str().unwrap(), &d.dir.join("rw"), Some("ntfs-3g"), "compression");
        run("cp", &["-r", seed.to_str().unwrap(), m.point.to_str().unwrap()]);
        // A compressed folder (LZNT1): files that compress, that do not, with zero runs
        // (sparse compression units), and spanning many units.
        let comp = m.point.join("seed/compressed");
        std::fs::create_dir(&comp).unwrap();
        run("setfattr", &["-h", "-v", "0x00000800", "-n", "system.ntfs_attrib_be", comp.to_str().unwrap()]);
        let text: Vec<u8> = (0..40_000).flat_map(|i| format!("line {i} of a file that compresses well\n").into_bytes()).collect();
        let noise: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(comp.join("text.txt"), &text).unwrap();
        std::fs::write(comp.join("noise.bin"), &noise).unwrap();
        std::fs::write(comp.join("small.txt"), b"a few bytes, compressed or not\n").unwrap();
        let mixed: Vec<u8> =
            [&vec![0u8; 200_000][..], &text[..500_000], &noise[..100_000], &vec![0u8; 70_000][..], &text[..123_457]].concat();
        std::fs::write(comp.join("mixed.bin"), &mixed).unwrap();
        // Alternate data streams, written as xattrs through ntfs-3g.
        let streams = m.point.join("seed/streams.txt");
        std::fs::write(&streams, b"the main stream\n").unwrap();
        run("setfattr", &["-n", "user.summary", "-v", "a short alternate stream", streams.to_str().unwrap()]);
        let hex: String = noise[..12_000].iter().map(|b| format!("{b:02x}")).collect();
        run("setfattr", &["-n", "user.thumbnail", "-v", &format!("0x{hex}"), streams.to_str().unwrap()]);
        // Symbolic links: ntfs-3g makes Interix ones; a Windows one (a relative
        // IO_REPARSE_TAG_SYMLINK reparse point) is set as raw reparse data.
        std::os::unix::fs::symlink("compressed/text.txt", m.point.join("seed/link-relative")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", m.point.join("seed/link-absolute")).unwrap();
        let winlink = m.point.join("seed/link-windows");
        std::fs::write(&winlink, b"").unwrap();
        run(
            "setfattr",
            &["-h", "-n", "system.ntfs_reparse_data", "-v", &reparse_symlink("compressed\\noise.bin"), winlink.to_str().unwrap()],
        );
        drop(m);
        d.create(&["win"], false).copies[0].clone()
    };
    {
        let m = Mount::new(live.to_str().unwrap(), &d.dir.join("rw2"), Some("ntfs-3g"), "");
        std::fs::write(m.point.join("seed/hello.txt"), b"changed after the copy\n").unwrap();
        std::fs::remove_dir_all(m.point.join("seed/many")).unwrap();
    }
    let lo = LoopDevice::attach_read_only(&d.image("win", &copy));
    let oracle_mount = Mount::new(&lo.device, &d.dir.join("oracle"), Some("ntfs-3g"), "ro");
    let fields = Fields { xattrs: true, ..Fields::NAMES_SIZES_CONTENT };
    let oracle = manifest_of_dir(&oracle_mount.point.join("seed"), fields);
    let ours = manifest_of_dir(&d.tree("win", &copy).join("seed"), fields);
    assert!(oracle.len() > 3000, "ntfs-3g sees the seed ({} paths)", oracle.len());
    assert_same(&ours, &oracle, "NTFS copy vs ntfs-3g");
    let attrib = run_text(
        "getfattr",
        &["-h", "-e", "hex", "-n", "system.ntfs_attrib_be", oracle_mount.point.join("seed/compressed/mixed.bin").to_str().unwrap()],
    );
    assert!(attrib.contains("=0x00000820") || attrib.contains("=0x00000800"), "mixed.bin is stored compressed: {attrib}");
    let links: Vec<(String, std::path::PathBuf)> = ["link-relative", "link-absolute", "link-windows"]
        .iter()
        .map(|l| (l.to_string(), std::fs::read_link(d.tree("win", &copy).join("seed").join(l)).unwrap_or_default()))
        .collect();
    let expect = |l: &str, t: &str| (l.to_string(), std::path::PathBuf::from(t));
    assert_eq!(
        links,
        [
            expect("link-relative", "compressed/text.txt"),
            expect("link-absolute", "/etc/hostname"),
            expect("link-windows", "compressed/noise.bin")
        ]
    );
    let streams: Vec<&str> = ours["/streams.txt"].xattrs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(streams, ["user.summary", "user.thumbnail"], "alternate data streams as xattrs, as ntfs-3g shows them");
    assert!(
        ours.keys().filter(|p| p.starts_with("/compressed/")).count() == 4,
        "the compressed files are compared: {:?}",
        ours.keys().filter(|p| p.contains("compressed")).collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read(d.tree("win", &copy).join("seed/hello.txt")).unwrap(), b"hello, shadow copies\n");
    // Inode numbers are MFT record numbers, as ntfs-3g shows them.
    let ino = |root: &Path| std::fs::metadata(root.join("seed/big.bin")).unwrap().ino();
    assert_eq!(ino(&d.tree("win", &copy)), ino(&oracle_mount.point));
    check_modes(&d.tree("win", &copy));
}
