//! Windows shadow copies through the daemon: a Windows NTFS volume with two VSS stores is added
//! read-only; each store appears as `@GMT-…` (NTFS tree) and `.images/@GMT-….img` (raw), listed
//! with its original ids and creation time. Oracles: `vshadowinfo`, `vshadowmount` (raw bytes)
//! and `ntfs-3g -o ro` on `vshadowmount`'s images (names, sizes, content).

mod common;

use std::path::Path;

use common::*;
use shadowcopy::protocol::{Answer, CreateRequest, DeleteTarget, Op};
use shadowcopy::testing::system::*;

fn vshadow_ids(image: &Path) -> Vec<String> {
    run_text("vshadowinfo", &[image.to_str().unwrap()])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Shadow copy ID").map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string()))
        .collect()
}

#[test]
fn windows_copies_match_vshadowmount_and_ntfs_3g() {
    require_commands(&["vshadowinfo", "vshadowmount", "ntfs-3g"]);
    let d = Daemon::start(&[]);
    let image = windows_vss_image(&d.dir);
    d.add_read_only_volume("win", &image);
    let copies = d.list();
    assert_eq!(copies.iter().map(|c| c.id.to_string()).collect::<Vec<_>>(), vshadow_ids(&image), "ids and order match vshadowinfo");
    let names: Vec<&str> = copies.iter().map(|c| c.exposed_name.as_str()).collect();
    assert_eq!(names, ["@GMT-2013.12.03-06.35.09", "@GMT-2013.12.03-06.37.48"], "creation times (UTC) from the stores");
    for c in &copies {
        assert_eq!(c.provider, "windows-vss");
        assert_eq!(c.attribute_flags, 0x0042_0009, "VSS attribute flags as vshadowinfo shows them");
        assert!(
            c.attributes.contains(&"persistent".to_string()) && c.attributes.contains(&"differential".to_string()),
            "{:?}",
            c.attributes
        );
    }
    let vmnt = d.dir.join("vshadow");
    std::fs::create_dir(&vmnt).unwrap();
    run("vshadowmount", &[image.to_str().unwrap(), vmnt.to_str().unwrap()]);
    let vshadow = Mount { point: vmnt.clone() };
    for (i, c) in copies.iter().enumerate() {
        let theirs = vmnt.join(format!("vss{}", i + 1));
        let ours = d.image("win", c);
        let (a, b) = (std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());
        assert!(a == b, "{} differs from vshadowmount's vss{}", c.exposed_name, i + 1);
        // Exported to a sparse image file, byte for byte the same.
        let exported = d.dir.join(&format!("export{i}.img"));
        d.call(Op::Export { id: c.id, path: exported.display().to_string() }).expect("export of a Windows copy");
        assert!(std::fs::read(&exported).unwrap() == b, "the export of {} differs from vshadowmount's vss{}", c.exposed_name, i + 1);
        let oracle_mount = Mount::new(theirs.to_str().unwrap(), &d.dir.join(&format!("ntfs{i}")), Some("ntfs-3g"), "ro");
        let oracle = manifest_of_dir(&oracle_mount.point, Fields::NAMES_SIZES_CONTENT);
        let tree = manifest_of_dir(&d.tree("win", c), Fields::NAMES_SIZES_CONTENT);
        // Link counts of files as ntfs-3g shows them.
        let links = |root: &Path| -> Vec<(String, u64)> {
            use std::os::unix::fs::MetadataExt;
            manifest_of_dir(root, Fields::NAMES_SIZES_CONTENT)
                .keys()
                .map(|p| (p.clone(), std::fs::symlink_metadata(root.join(p.trim_start_matches('/'))).unwrap().nlink()))
                .collect()
        };
        let (ours_links, oracle_links) = (links(&d.tree("win", c)), links(&oracle_mount.point));
        let files_only = |v: Vec<(String, u64)>, root: &Path| -> Vec<(String, u64)> {
            v.into_iter().filter(|(p, _)| root.join(p.trim_start_matches('/')).is_file()).collect()
        };
        assert_eq!(files_only(ours_links, &d.tree("win", c)), files_only(oracle_links, &oracle_mount.point), "nlink of files");
        assert!(oracle.len() > 3, "ntfs-3g sees files in vss{} ({} paths)", i + 1, oracle.len());
        assert_same(&tree, &oracle, &format!("{} vs ntfs-3g on vshadowmount's vss{}", c.exposed_name, i + 1));
    }
    // The two copies differ from each other and from the live volume.
    let live = std::fs::read(d.live("win")).unwrap();
    assert!(live != std::fs::read(d.image("win", &copies[0])).unwrap());
    // Read-only: no writes, no new copies, no deletion of Windows' stores.
    let err = std::fs::OpenOptions::new().write(true).open(d.live("win")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    match d.call(Op::Create(CreateRequest::new(vec!["win".into()]))) {
        Err(shadowcopy::protocol::ClientError::Daemon(e)) => assert!(e.message.contains("read-only"), "{}", e.message),
        other => panic!("create on a read-only volume: {other:?}"),
    }
    assert!(d.call(Op::Delete { target: DeleteTarget::Id(copies[0].id) }).is_err());
    // vshadowmount goes first: the daemon's temp dir (dropped with `d`) holds its mount point.
    drop(vshadow);
    // They come back after a restart, with the same names.
    let mut d = d;
    d.restart();
    let again = d.list();
    assert_eq!(again.iter().map(|c| &c.exposed_name).collect::<Vec<_>>(), copies.iter().map(|c| &c.exposed_name).collect::<Vec<_>>());
}

#[test]
fn a_damaged_windows_store_is_reported_and_skipped() {
    require_commands(&["vshadowinfo"]);
    let d = Daemon::start(&[]);
    let image = windows_vss_image(&d.dir);
    // Damage one store's block list. If it is the newer store, the older one (which reads
    // through it) is reported too; either way at least one copy is reported and not exposed,
    // and any other is served.
    let bytes = std::fs::read(&image).unwrap();
    let catalog = u64::from_le_bytes(bytes[0x1e00 + 48..0x1e00 + 56].try_into().unwrap()) as usize;
    let mut locations = Vec::new();
    for e in bytes[catalog + 128..catalog + 0x4000].chunks_exact(128) {
        if u64::from_le_bytes(e[0..8].try_into().unwrap()) == 3 {
            locations.push(u64::from_le_bytes(e[8..16].try_into().unwrap()) as usize);
        }
    }
    assert_eq!(locations.len(), 2);
    let mut damaged = bytes.clone();
    damaged[locations[0]..locations[0] + 16].copy_from_slice(&[0xEE; 16]);
    std::fs::write(&image, &damaged).unwrap();
    d.add_read_only_volume("win", &image);
    let copies = d.list();
    assert_eq!(copies.len(), 2, "both stores are listed");
    let failed: Vec<_> = copies.iter().filter(|c| c.failed.is_some()).collect();
    assert!(!failed.is_empty(), "the damaged store is reported: {copies:?}");
    for c in &failed {
        assert!(!d.tree("win", c).exists() && !d.image("win", c).exists(), "a damaged copy is not exposed");
    }
    for c in copies.iter().filter(|c| c.failed.is_none()) {
        assert!(d.image("win", c).exists());
        let n = std::fs::read_dir(d.tree("win", c)).unwrap().count();
        assert!(n > 0, "the undamaged copy's tree is served");
    }
    assert!(matches!(d.call(Op::Status), Ok(Answer::Status(_))), "the daemon is alive");
    let reason = failed[0].failed.as_deref().unwrap();
    assert!(reason.contains("block list") || reason.contains("damaged"), "the reason names the damage: {reason}");
}
