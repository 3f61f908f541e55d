//! `shadowcopy changes A [B]` against `diff -rq` of the two trees (the oracle for what was added,
//! deleted and modified), plus the metadata-only changes `diff` cannot see.

mod common;

use std::collections::BTreeSet;

use common::*;
use shadowcopy::testing::system::*;

fn changes(d: &Daemon, args: &[&str]) -> BTreeSet<(String, String)> {
    let mut all = vec!["--json", "changes"];
    all.extend_from_slice(args);
    let out = d.cli(&all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["change"].as_str().unwrap().to_string(), c["path"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn changes_between_copies_and_live_match_diff_and_see_metadata() {
    require_commands(&["mkfs.ext4", "losetup", "mount", "diff"]);
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    seed_tree(&fs.mount.point, true, 300);
    let a = d.create(&["vol"], false).copies[0].clone();
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Same size, new bytes; appended; deleted; added; a new folder; a removed folder; chmod only.
    std::fs::write(fs.path("hello.txt"), b"HELLO, shadow copies\n").unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(fs.path("empty")).unwrap();
    std::io::Write::write_all(&mut f, b"no longer empty\n").unwrap();
    drop(f);
    std::fs::remove_file(fs.path("name with spaces & ünïcödé.txt")).unwrap();
    std::fs::write(fs.path("brand new.txt"), b"new\n").unwrap();
    std::fs::create_dir_all(fs.path("newdir/inner")).unwrap();
    std::fs::write(fs.path("newdir/inner/f"), b"f\n").unwrap();
    std::fs::remove_dir_all(fs.path("dir/sub/deeper")).unwrap();
    run("chmod", &["600", fs.path("many/file-00007").to_str().unwrap()]);
    let b = d.create(&["vol"], false).copies[0].clone();

    let ours = changes(&d, &[&a.exposed_name, &b.exposed_name]);
    // The oracle: diff -rq of the two copies' raw images mounted by the kernel's ext4. (Not of
    // our two folders: they share one st_dev and keep the original inode numbers, so diff takes
    // a file in one copy for the same file in the other and skips it; see the closing note.)
    let ka = Mount::new(d.image("vol", &a).to_str().unwrap(), &d.dir.join("kernel-a"), Some("ext4"), "ro,loop,noload");
    let kb = Mount::new(d.image("vol", &b).to_str().unwrap(), &d.dir.join("kernel-b"), Some("ext4"), "ro,loop,noload");
    let (ta, tb) = (ka.point.clone(), kb.point.clone());
    let out = std::process::Command::new("diff").arg("-rq").arg("--no-dereference").arg(&ta).arg(&tb).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.stderr.is_empty(), "diff: {}", String::from_utf8_lossy(&out.stderr));
    let mut oracle = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Only in ") {
            let (dir, name) = rest.split_once(": ").unwrap();
            let (root, change) = if dir.starts_with(ta.to_str().unwrap()) { (&ta, "deleted") } else { (&tb, "added") };
            let rel = std::path::Path::new(dir).strip_prefix(root).unwrap().join(name);
            oracle.insert((change.to_string(), format!("/{}", rel.display())));
        } else if let Some(rest) = line.strip_prefix("Files ") {
            let first = rest.split(" and ").next().unwrap();
            let rel = std::path::Path::new(first).strip_prefix(&ta).unwrap();
            oracle.insert(("modified".to_string(), format!("/{}", rel.display())));
        }
    }
    assert!(oracle.len() >= 6, "the oracle sees the changes: {oracle:?}");
    // Ours, without folders whose listing changed (their mtime moved) and metadata-only changes,
    // is exactly diff's answer.
    let content: BTreeSet<(String, String)> = ours
        .iter()
        .filter(|(c, p)| c != "metadata" && !(c == "modified" && ta.join(p.trim_start_matches('/')).is_dir()))
        .cloned()
        .collect();
    assert_eq!(content, oracle, "\nours: {ours:?}");
    assert!(ours.contains(&("metadata".into(), "/many/file-00007".into())), "the chmod is a metadata change: {ours:?}");
    assert!(ours.contains(&("modified".into(), "/dir/sub".into())), "a folder whose entries changed is modified: {ours:?}");
    // The daemon's changed inodes (what lets the walk skip stat for the rest): every inode the
    // changes touched, as the kernel numbers them, and few others.
    let Ok(shadowcopy::protocol::Answer::Inodes(Some(inodes))) = d.call(shadowcopy::protocol::Op::ChangedInodes { id: a.id, to: b.id })
    else {
        panic!("no changed inodes for two ext4 copies")
    };
    let kernel_ino = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(tb.join(p)).unwrap());
    for p in ["hello.txt", "empty", "brand new.txt", "newdir", "many/file-00007", "dir/sub", ""] {
        assert!(inodes.contains(&kernel_ino(p)), "{p} (inode {}) is among the changed inodes {inodes:?}", kernel_ino(p));
    }
    assert!(inodes.len() < 40, "about the changed inodes only (300 files were seeded): {} {inodes:?}", inodes.len());
    // Between two copies the daemon answers itself (no walk over the mount), the same answer.
    let Ok(shadowcopy::protocol::Answer::Changes(Some(inside))) = d.call(shadowcopy::protocol::Op::Changes { id: a.id, to: b.id }) else {
        panic!("the daemon compares two ext4 copies itself")
    };
    let inside: BTreeSet<(String, String)> = inside.into_iter().map(|c| (c.change, c.path)).collect();
    assert_eq!(inside, ours);
    // readdir in a copy gives the inode numbers stat gives.
    for e in std::fs::read_dir(d.tree("vol", &b).join("many")).unwrap().take(20) {
        let e = e.unwrap();
        assert_eq!(
            std::os::unix::fs::DirEntryExt::ino(&e),
            std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(e.path()).unwrap())
        );
    }
    // Against live: nothing changed since B, so the same answer.
    assert_eq!(changes(&d, &[&a.exposed_name]), ours);
    // The people's format.
    let out = d.cli(&["changes", &a.exposed_name, &b.exposed_name]);
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(lines.lines().any(|l| l == "+ /brand new.txt") && lines.lines().any(|l| l == "m /many/file-00007"), "{lines}");
}
