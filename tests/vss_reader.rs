//! The Windows VSS store reader against libvshadow's tools on a real Windows volume (two stores):
//! ids, set ids and creation times equal `vshadowinfo`'s; each store's image equals, byte for
//! byte, what `vshadowmount` exposes; a damaged store is reported and the other stays readable.

use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use shadowcopy::fsread::ByteSource;
use shadowcopy::provider::Provider;
use shadowcopy::testing::system::*;
use shadowcopy::vss::WindowsStores;

fn open(path: &Path) -> WindowsStores {
    let f: Arc<dyn ByteSource> = Arc::new(std::fs::File::open(path).expect("open"));
    WindowsStores::open(f, 256).expect("open stores").expect("the volume has VSS stores")
}

/// `vshadowinfo`'s stores: (copy id, set id, creation time as "Mon DD, YYYY HH:MM:SS").
fn vshadowinfo(image: &Path) -> Vec<(String, String, String)> {
    let out = run_text("vshadowinfo", &[image.to_str().unwrap()]);
    let mut stores = Vec::new();
    let mut cur: (String, String, String) = Default::default();
    for line in out.lines() {
        let value = |l: &str| l.split_once(':').map(|(_, v)| v.trim().to_string()).unwrap_or_default();
        let l = line.trim();
        if l.starts_with("Shadow copy ID") {
            cur.0 = value(l);
        } else if l.starts_with("Shadow copy set ID") {
            cur.1 = value(l);
        } else if l.starts_with("Creation time") {
            cur.2 = value(l);
        } else if l.starts_with("Volume size") && !cur.0.is_empty() {
            stores.push(std::mem::take(&mut cur));
        }
    }
    stores
}

fn month_day_year(secs: u64) -> String {
    let name = shadowcopy::protocol::gmt_name(secs); // @GMT-YYYY.MM.DD-HH.MM.SS
    let t = &name[5..];
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m: usize = t[5..7].parse().unwrap();
    format!("{} {}, {} {}:{}:{}", months[m - 1], &t[8..10], &t[0..4], &t[11..13], &t[14..16], &t[17..19])
}

#[test]
fn stores_match_vshadowinfo_and_vshadowmount() {
    require_commands(&["vshadowinfo", "vshadowmount", "umount"]);
    let dir = TempDir::new("sc-vss-");
    let image = windows_vss_image(&dir);
    let stores = open(&image);
    let copies = stores.copies();
    let info = vshadowinfo(&image);
    assert_eq!(copies.len(), 2, "two stores in the test image");
    assert_eq!(info.len(), copies.len(), "vshadowinfo: {info:?}");
    for (c, (id, set, created)) in copies.iter().zip(&info) {
        assert_eq!(&c.copy_id.to_string(), id);
        assert_eq!(&c.set_id.to_string(), set);
        let secs = c.created.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(created.starts_with(&month_day_year(secs)), "created {created} vs ours {}", month_day_year(secs));
        assert!(c.damage.is_none(), "{:?}", c.damage);
    }
    // Byte for byte against vshadowmount's images.
    let mnt = dir.join("vshadow");
    std::fs::create_dir(&mnt).unwrap();
    run("vshadowmount", &[image.to_str().unwrap(), mnt.to_str().unwrap()]);
    let _m = Mount { point: mnt.clone() };
    let infos = stores.copies();
    for (i, c) in infos.iter().enumerate() {
        let theirs = std::fs::read(mnt.join(format!("vss{}", i + 1))).expect("vshadowmount image");
        let mut ours = vec![0u8; theirs.len()];
        for (k, chunk) in ours.chunks_mut(1 << 20).enumerate() {
            stores.read_copy(c.copy_id, chunk, (k as u64) << 20).expect("read");
        }
        let first_diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        assert!(first_diff.is_none(), "store {} differs from vshadowmount at byte {first_diff:?}", i + 1);
        let base = std::fs::read(&image).unwrap();
        assert_ne!(ours, base, "store {} differs from the current volume", i + 1);
    }
}

#[test]
fn a_damaged_store_is_reported_and_the_other_stays_readable() {
    require_commands(&["vshadowmount", "umount"]);
    let dir = TempDir::new("sc-vss-damage-");
    let image = windows_vss_image(&dir);
    let good = open(&image);
    let newest = good.copies()[1].clone();
    let mut reference = vec![0u8; 8 << 20];
    good.read_copy(newest.copy_id, &mut reference, 0).unwrap();
    // Damage the oldest store's block list header: find it through the catalog.
    let bytes = std::fs::read(&image).unwrap();
    let catalog = u64::from_le_bytes(bytes[0x1e00 + 48..0x1e00 + 56].try_into().unwrap()) as usize;
    let mut block_list = None;
    for e in bytes[catalog + 128..catalog + 0x4000].chunks_exact(128) {
        if u64::from_le_bytes(e[0..8].try_into().unwrap()) == 3 {
            let id = uuid::Uuid::from_bytes_le(e[16..32].try_into().unwrap());
            if id == good.copies()[0].store_id {
                block_list = Some(u64::from_le_bytes(e[8..16].try_into().unwrap()) as usize);
            }
        }
    }
    let at = block_list.expect("the oldest store's block list");
    let damaged = dir.join("damaged.raw");
    let mut d = bytes.clone();
    d[at..at + 16].copy_from_slice(&[0xEE; 16]);
    std::fs::write(&damaged, &d).unwrap();
    let stores = open(&damaged);
    let copies = stores.copies();
    let reason = copies[0].damage.as_deref().expect("the oldest store is reported damaged");
    assert!(reason.contains("block list"), "{reason}");
    let mut buf = vec![0u8; 4096];
    let err = stores.read_copy(copies[0].copy_id, &mut buf, 0).unwrap_err();
    assert!(err.to_string().contains("failed"), "{err}");
    // The newest store reads exactly as before.
    assert!(copies[1].damage.is_none());
    let mut again = vec![0u8; 8 << 20];
    stores.read_copy(copies[1].copy_id, &mut again, 0).unwrap();
    assert!(again == reference, "the undamaged store still reads the same");
    // A damaged catalog: the volume opens, no store is readable, the reason is given.
    let mut c = bytes.clone();
    c[catalog..catalog + 16].copy_from_slice(&[0; 16]);
    let damaged_catalog = dir.join("catalog.raw");
    std::fs::write(&damaged_catalog, &c).unwrap();
    let s = open(&damaged_catalog);
    assert!(s.catalog_damage.as_deref().is_some_and(|r| r.contains("catalog")), "{:?}", s.catalog_damage);
}
