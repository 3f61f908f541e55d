//! `shadowcopy versions` and `shadowcopy restore` on an ext4 mounted from a volume's `live`, as
//! people use them: which copies hold a different version of a file, and putting one back with
//! its owner, mode, times, xattrs and ACL (`getfacl`/`getfattr`/`stat` are the oracles).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use shadowcopy::testing::system::*;

fn json(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = d.cli(&all);
    assert!(out.status.success(), "shadowcopy {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn version_names(v: &serde_json::Value) -> Vec<String> {
    v["versions"].as_array().unwrap().iter().map(|x| x["exposed_name"].as_str().unwrap().to_string()).collect()
}

fn text(cmd: &str, args: &[&str]) -> String {
    run_text(cmd, args)
}

#[test]
fn versions_lists_the_copies_that_differ_and_restore_puts_one_back_whole() {
    require_commands(&["mkfs.ext4", "losetup", "mount", "setfacl", "getfacl", "setfattr", "getfattr", "cp"]);
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    let doc = fs.path("doc.txt");
    let doc_s = doc.to_str().unwrap();
    std::fs::write(&doc, b"version one\n").unwrap();
    std::fs::write(fs.path("gone.txt"), b"deleted later\n").unwrap();
    run("chown", &["1234:1234", doc_s]);
    run("chmod", &["640", doc_s]);
    run("setfattr", &["-n", "user.note", "-v", "one", doc_s]);
    run("setfacl", &["-m", "u:4321:r", doc_s]);
    let a = d.create(&["vol"], false).copies[0].clone();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct names and mtimes
    std::fs::write(&doc, b"version two, longer\n").unwrap();
    let b = d.create(&["vol"], false).copies[0].clone();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let c = d.create(&["vol"], false).copies[0].clone();
    std::fs::write(&doc, b"version three\n").unwrap();
    std::fs::remove_file(fs.path("gone.txt")).unwrap();

    // Newest first; B is the same as C, so only --all shows it.
    let v = json(&d, &["versions", doc_s]);
    assert_eq!(version_names(&v), vec![c.exposed_name.clone(), a.exposed_name.clone()], "{v}");
    let v = json(&d, &["versions", "--all", doc_s]);
    assert_eq!(version_names(&v), vec![c.exposed_name.clone(), b.exposed_name.clone(), a.exposed_name.clone()]);
    // A deleted file still has its versions.
    let gone = fs.path("gone.txt");
    let v = json(&d, &["versions", gone.to_str().unwrap()]);
    assert_eq!(version_names(&v), vec![c.exposed_name.clone()], "the newest copy holding it differs from nothing now: {v}");
    // The table for people.
    let out = d.cli(&["versions", doc_s]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&a.exposed_name) && table.contains("MODIFIED"), "{table}");

    // Restore refuses to overwrite unless told.
    let out = d.cli(&["restore", doc_s, "--from", &a.exposed_name]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--overwrite"));
    assert_eq!(std::fs::read(&doc).unwrap(), b"version three\n");
    // Elsewhere, by @GMT name: content, owner, mode, mtime, xattr and ACL as in the copy.
    let elsewhere = fs.path("doc.restored");
    let out = d.cli(&["restore", doc_s, "--from", &a.exposed_name, "--to", elsewhere.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let in_copy = d.tree("vol", &a).join("doc.txt");
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"version one\n");
    let (m1, m2) = (std::fs::metadata(&in_copy).unwrap(), std::fs::metadata(&elsewhere).unwrap());
    assert_eq!((m2.uid(), m2.gid(), m2.mode(), m2.mtime()), (m1.uid(), m1.gid(), m1.mode(), m1.mtime()));
    assert_eq!((m2.uid(), m2.mode() & 0o777), (1234, 0o640));
    let acl = |p: &Path| text("getfacl", &["--omit-header", "-p", p.to_str().unwrap()]);
    assert_eq!(acl(&elsewhere), acl(&in_copy));
    assert!(acl(&elsewhere).contains("user:4321:r--"), "{}", acl(&elsewhere));
    assert!(text("getfattr", &["-n", "user.note", elsewhere.to_str().unwrap()]).contains("user.note=\"one\""));
    // In place, by id prefix, with --overwrite.
    let out = d.cli(&["restore", doc_s, "--from", &a.id.to_string()[..8], "--overwrite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&doc).unwrap(), b"version one\n");
    // The deleted file comes back where it was.
    let out = d.cli(&["restore", gone.to_str().unwrap(), "--from", &c.exposed_name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&gone).unwrap(), b"deleted later\n");
    // A path on no shadowcopy volume is refused with what it is on.
    let out = d.cli(&["versions", "/proc/self/status"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a loop device over a shadowcopy volume"));
}
