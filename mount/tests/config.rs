//! The configuration file: what it attaches at start (in order), what `volume attach`, `volume
//! add --attach` and `volume detach` write into it, what a stop with `--unmount` or
//! `unmount_at_stop` undoes (in reverse order), and that a mistake in it is reported with its
//! line and keeps nothing else from coming up. The kernel's mount table is the oracle.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::protocol::{Answer, Op, VolumeInfo};
use shadowcopy::testing::system::{mkfs_ext4, require_commands, run, TempDir};

/// An ext4 image holding `file` with `content`.
fn ext4_image(dir: &TempDir, name: &str, file: &str, content: &str) -> PathBuf {
    let root = dir.join(&format!("{name}-root"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join(file), content).unwrap();
    let image = dir.join(&format!("{name}.img"));
    mkfs_ext4(&image, "32M", Some(&root), &[]);
    image
}

fn volumes(d: &Daemon) -> Vec<VolumeInfo> {
    match d.call(Op::VolumeList) {
        Ok(Answer::Volumes(v)) => v,
        other => panic!("volume list: {other:?}"),
    }
}

/// Waits until every named volume's configured filesystem is mounted (the first worker attaches
/// after the control socket answers, before READY=1).
fn wait_mounted(d: &Daemon, names: &[&str]) -> Vec<VolumeInfo> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let vs = volumes(d);
        let done = names.iter().all(|n| vs.iter().any(|v| &v.name == n && v.attachment.as_ref().is_some_and(|a| a.mounted_at.is_some())));
        if done {
            return vs;
        }
        assert!(Instant::now() < deadline, "not all of {names:?} were mounted: {vs:#?}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The mount at `point` as the kernel shows it: (source device, options).
fn kernel_mount(point: &Path) -> Option<(String, String)> {
    shadowcopy::probe::mount_at(&point.canonicalize().ok()?).unwrap().map(|m| (m.source, m.options))
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn configured_filesystems_come_up_in_order_and_go_down_in_reverse_and_a_bad_entry_stops_nothing() {
    require_commands(&["mkfs.ext4"]);
    let mut d = Daemon::start(&[]);
    let _cleanup = MountsUnder::of(&d);
    let outer = ext4_image(&d.dir, "outer", "hello", "outer\n");
    let inner = ext4_image(&d.dir, "inner", "hello", "inner\n");
    d.add_volume("outer", &outer);
    d.add_volume("inner", &inner);
    let srv = d.dir.join("srv");
    let nested = srv.join("nested");

    // `volume attach` mounts now and writes the file (which did not exist).
    let said = ok(d.cli(&["volume", "attach", "outer", "--mount", srv.to_str().unwrap(), "--fs-options", "noatime"]), "volume attach");
    assert!(said.contains("mounted /dev/loop"), "{said}");
    let (source, options) = kernel_mount(&srv).expect("outer is mounted");
    assert!(source.starts_with("/dev/loop") && options.split(',').any(|o| o == "noatime"), "{source} {options}");
    assert_eq!(std::fs::read_to_string(srv.join("hello")).unwrap(), "outer\n");
    let written = std::fs::read_to_string(&d.config).expect("volume attach wrote the configuration");
    assert!(written.contains("name = \"outer\"") && written.contains("fs_options = \"noatime\""), "{written}");

    // The admin adds by hand: the inner volume mounted inside the outer one (so order
    // matters), a comment, a mistyped entry and an entry for a volume that is not registered.
    let previous = d.dir.join("previous");
    std::fs::create_dir(&previous).unwrap();
    let text = format!(
        "[daemon]\nunmount_at_stop = false\n\n{written}[[volume.expose]]\ncopy = \"newest\"\nat = \"{}\"\n\n# inside outer: must come after it\n[[volume]]\nname = \"inner\"\nmount = \"{}\"\n\n[[volume]]\nname = \"typo\"\nmonut = \"/nowhere\"\n\n[[volume]]\nname = \"ghost\"\n",
        previous.display(),
        nested.display()
    );
    std::fs::write(&d.config, &text).unwrap();
    let typo_line = text.lines().position(|l| l.starts_with("monut")).unwrap() + 1;
    let ghost_line = text.lines().position(|l| l == "name = \"ghost\"").unwrap();

    // `--check-config` finds both mistakes it can see without the daemon, with their lines.
    let check =
        std::process::Command::new(daemon_binary()).args(["--config", d.config.to_str().unwrap(), "--check-config"]).output().unwrap();
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains(&format!("{}:{typo_line}: ", d.config.display())) && said.contains("monut"), "{said}");

    // Stop with --unmount: nothing is left mounted or attached over `live`, the daemon exits.
    std::fs::write(srv.join("written-before-stop"), "kept\n").unwrap();
    run("sync", &[]);
    d.create(&["outer"], false);
    std::fs::write(srv.join("written-after-the-copy"), "not in the copy\n").unwrap();
    ok(d.cli(&["daemon", "stop", "--unmount"]), "daemon stop --unmount");
    assert!(d.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()), "the daemon stopped:\n{}", d.log());
    assert!(kernel_mount(&srv).is_none(), "outer was unmounted");

    // Start: both come up, the inner one inside the outer one, despite the two bad entries.
    d.restart();
    let vs = wait_mounted(&d, &["outer", "inner"]);
    assert_eq!(std::fs::read_to_string(srv.join("written-before-stop")).unwrap(), "kept\n");
    assert_eq!(std::fs::read_to_string(nested.join("hello")).unwrap(), "inner\n");
    // The newest copy of outer is exposed where the configuration says.
    assert_eq!(std::fs::read_to_string(previous.join("written-before-stop")).unwrap(), "kept\n");
    assert!(!previous.join("written-after-the-copy").exists(), "the exposure is the copy, not live");
    let inner_info = vs.iter().find(|v| v.name == "inner").unwrap().attachment.clone().unwrap();
    assert_eq!(inner_info.mounted_at.as_deref(), Some(nested.canonicalize().unwrap().to_str().unwrap()));
    assert!(inner_info.problem.is_none(), "{inner_info:?}");
    // The ghost entry is the last one: its problem appears once the first worker got there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let Answer::Status(status) = d.call(Op::Status).unwrap() else { panic!() };
        if status.config_errors.len() >= 2 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.config.as_deref(), Some(d.config.to_str().unwrap()));
    assert!(
        status.config_errors.iter().any(|e| e.contains(&format!(":{typo_line}: ")) && e.contains("monut")),
        "{:?}",
        status.config_errors
    );
    assert!(
        status.config_errors.iter().any(|e| e.contains(&format!(":{ghost_line}: ")) && e.contains("no volume `ghost` is registered")),
        "{:?}",
        status.config_errors
    );
    let listed = ok(d.cli(&["volume", "list"]), "volume list");
    assert!(listed.contains("ATTACHED AT") && listed.contains("mounted at"), "{listed}");

    // A plain SIGTERM while they are mounted is refused: the filesystems stay.
    run("kill", &["-TERM", &d.pid().to_string()]);
    assert!(d.wait_exit(Duration::from_secs(3)).is_none(), "a stop under mounted filesystems was refused");
    assert!(kernel_mount(&nested).is_some() && kernel_mount(&srv).is_some());

    // With unmount_at_stop the next SIGTERM unmounts inner, then outer, then stops.
    std::fs::write(&d.config, text.replace("unmount_at_stop = false", "unmount_at_stop = true")).unwrap();
    ok(d.cli(&["daemon", "restart"]), "daemon restart");
    // A restarted worker leaves the attachments as they are (no second mount).
    assert_eq!(shadowcopy::probe::mounts().unwrap().iter().filter(|m| m.mount_point.starts_with(&srv)).count(), 2);
    let nested_abs = nested.canonicalize().unwrap();
    let log_before = d.log().len();
    d.stop();
    assert!(kernel_mount(&srv).is_none() && kernel_mount(&nested).is_none(), "both were unmounted");
    assert!(
        shadowcopy::probe::loop_devices().unwrap().iter().all(|l| !l.backing_file.starts_with(&d.mount)),
        "no loop device is left over a live file"
    );
    let log = d.log()[log_before..].to_string();
    let (inner_at, outer_at) = (log.find("unmounted").unwrap(), log.rfind("unmounted").unwrap());
    assert!(log[inner_at..].starts_with(&format!("unmounted {}", nested_abs.display())) && inner_at < outer_at, "{log}");
}

#[test]
fn volume_add_with_a_mount_point_attaches_it_and_detach_takes_it_out_of_the_file() {
    require_commands(&["mkfs.ext4"]);
    let d = Daemon::start(&[]);
    let _cleanup = MountsUnder::of(&d);
    std::fs::write(&d.config, "# the admin's own words\n[daemon]\nthreads = 4\n").unwrap();
    let image = ext4_image(&d.dir, "data", "hello", "data\n");
    let at = d.dir.join("data");

    // A wrong filesystem type: `mount` says why, the volume stays added, the file unchanged.
    let out = d.cli(&["volume", "add", "data", image.to_str().unwrap(), "--mount", at.to_str().unwrap(), "--fs-type", "xfs"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("was added, but not attached") && said.contains("mount") && said.contains("volume attach data"), "{said}");
    assert!(!std::fs::read_to_string(&d.config).unwrap().contains("data"), "nothing was written for a failed attach");
    assert!(kernel_mount(&at).is_none());

    ok(d.cli(&["volume", "attach", "data", "--mount", at.to_str().unwrap()]), "volume attach");
    assert_eq!(std::fs::read_to_string(at.join("hello")).unwrap(), "data\n");
    let text = std::fs::read_to_string(&d.config).unwrap();
    assert!(text.starts_with("# the admin's own words\n[daemon]\nthreads = 4\n") && text.contains("name = \"data\""), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(d.cli(&["--json", "volume", "list"]), "volume list --json")).unwrap();
    let a = &json["volumes"][0]["attachment"];
    assert_eq!(a["mounted_at"], at.canonicalize().unwrap().to_str().unwrap(), "{json}");
    assert!(a["devices"][0].as_str().unwrap().starts_with("/dev/loop"), "{json}");

    // Attached again: nothing changes (no second mount).
    ok(d.cli(&["volume", "attach", "data", "--mount", at.to_str().unwrap()]), "volume attach again");
    assert_eq!(shadowcopy::probe::mounts().unwrap().iter().filter(|m| m.mount_point == at.canonicalize().unwrap()).count(), 1);

    // Busy: detach is refused and says how to find out by what.
    let busy = std::fs::File::open(at.join("hello")).unwrap();
    let out = d.cli(&["volume", "detach", "data"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is busy"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(busy);

    let said = ok(d.cli(&["volume", "detach", "data"]), "volume detach");
    assert!(said.contains("unmounted") && said.contains("taken out of"), "{said}");
    assert!(kernel_mount(&at).is_none());
    assert!(shadowcopy::probe::loop_devices_backed_by(&d.live("data")).unwrap().is_empty(), "its loop device went with the unmount");
    let text = std::fs::read_to_string(&d.config).unwrap();
    assert!(!text.contains("data") && text.contains("threads = 4"), "{text}");
}
