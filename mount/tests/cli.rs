//! The `shadowcopy` CLI against a running daemon: `--json` output parses and says what happened;
//! errors exit non-zero with a message that says what to do.

mod common;

use std::process::{Command, Output};

use common::*;

fn cli(d: &Daemon, args: &[&str]) -> Output {
    Command::new(cli_binary()).arg("--socket").arg(&d.socket).args(args).output().expect("running the CLI")
}

fn json(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = cli(d, &all);
    assert!(out.status.success(), "shadowcopy {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("shadowcopy {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn json_round_trip_of_the_admin_commands() {
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 32 << 20);
    let added = json(&d, &["volume", "add", "data", image.to_str().unwrap(), "--max-size", "8M", "--chunk-size", "64K"]);
    assert_eq!(added["name"], "data");
    assert_eq!(added["live"], d.live("data").display().to_string());
    let set = json(&d, &["create", "data"]);
    let id = set["copies"][0]["id"].as_str().unwrap().to_string();
    let name = set["copies"][0]["exposed_name"].as_str().unwrap().to_string();
    assert!(d.mount.join("data/.images").join(format!("{name}.img")).exists());
    let list = json(&d, &["list", "data"]);
    assert_eq!(list["copies"].as_array().unwrap().len(), 1);
    let list = &list["copies"];
    assert_eq!(list[0]["id"], id.as_str());
    let attrs: Vec<&str> = list[0]["attributes"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(attrs.contains(&"persistent") && attrs.contains(&"client_accessible"), "{attrs:?}");
    let storage = json(&d, &["shadowstorage", "list"]);
    assert_eq!(storage["storage"][0]["chunk_size"], 65536);
    assert_eq!(storage["storage"][0]["max_bytes"], 8 << 20);
    let resized = json(&d, &["shadowstorage", "resize", "data", "unbounded"]);
    assert!(resized["storage"][0]["max_bytes"].is_null());
    // Export to a file and compare with the mount's raw image.
    let exported = d.dir.join("export.img");
    json(&d, &["export", &id, exported.to_str().unwrap()]);
    assert_eq!(std::fs::read(&exported).unwrap(), std::fs::read(d.mount.join("data/.images").join(format!("{name}.img"))).unwrap());
    // Changes since the copy: a write through live shows up as a changed range.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(d.live("data")).unwrap();
        f.write_all_at(b"changed", 5 << 20).unwrap();
    }
    let ranges = json(&d, &["diff", &id]);
    assert!(ranges["total_bytes"].as_u64().unwrap() > 0);
    let hit = ranges["ranges"].as_array().unwrap().iter().any(|r| {
        let (o, l) = (r["offset"].as_u64().unwrap(), r["len"].as_u64().unwrap());
        o <= 5 << 20 && (5 << 20) < o + l
    });
    assert!(hit, "the write at 5 MiB is a changed range: {ranges}");
    // Revert brings the old bytes back.
    json(&d, &["revert", &id]);
    let mut back = [0u8; 7];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(d.live("data")).unwrap(), &mut back, 5 << 20).unwrap();
    assert_eq!(back, [0u8; 7]);
    let deleted = json(&d, &["delete", "--all", "data"]);
    assert_eq!(deleted["copies"].as_array().unwrap().len(), 1);
    assert!(json(&d, &["list"])["copies"].as_array().unwrap().is_empty());
    json(&d, &["volume", "remove", "data"]);
    assert!(json(&d, &["volume", "list"])["volumes"].as_array().unwrap().is_empty());
}

#[test]
fn errors_say_what_to_do() {
    let d = Daemon::start(&[]);
    let out = cli(&d, &["create", "nosuch"]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("no volume named `nosuch`") && msg.contains("volume list"), "{msg}");
    let out = Command::new(cli_binary()).args(["--socket", "/nonexistent/sock", "list"]).output().unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("is the daemon running"), "{msg}");
    let out = cli(&d, &["volume", "add", "bad/name", "/etc/hostname"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid volume name"));
}

/// Pins two scripting bugs (issue 12): errors stayed plain text under `--json`, and
/// `shadowcopy create … | head -1` panicked (exit 101) after the set was made.
#[test]
fn json_errors_are_json_and_a_closed_stdout_ends_quietly() {
    let d = Daemon::start(&[]);
    let out = cli(&d, &["--json", "list", "nosuch"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error on stdout");
    assert_eq!(v["error"]["kind"], "not_found", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("no volume named `nosuch`"), "{v}");
    let out = Command::new(cli_binary()).args(["--socket", "/nonexistent/control.sock", "--json", "status"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error on stdout");
    assert_eq!(v["error"]["kind"], "unavailable", "{v}");
    // A reader that goes away before the answer is printed: the set is made, the CLI ends
    // quietly with SIGPIPE's status.
    let image = image_file(&d.dir, "vol.img", 32 << 20);
    d.add_volume("vol", &image);
    let mut child = Command::new(cli_binary())
        .args(["--socket", d.socket.to_str().unwrap(), "create", "vol"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(d.list().len(), 1, "the set was made");
    // Nothing to delete is not an error.
    let out = cli(&d, &["delete", "--all", "vol"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&d, &["delete", "--all", "vol"]);
    assert!(out.status.success(), "delete --all on a volume without copies: {}", String::from_utf8_lossy(&out.stderr));
}

/// `shadowcopy completions bash` is a script bash loads, and it completes our subcommands (bash
/// itself is the oracle).
#[test]
fn bash_completes_subcommands_from_the_generated_script() {
    shadowcopy::testing::system::require_commands(&["bash"]);
    let out = Command::new(cli_binary()).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let dir = shadowcopy::testing::system::TempDir::new("sc-completions-");
    let script = dir.join("shadowcopy.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let complete = |words: &str, cword: usize, cur: &str, prev: &str| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _shadowcopy shadowcopy {cur} {prev}; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("shadowcopy da", 1, "da", "shadowcopy"), "daemon");
    assert_eq!(complete("shadowcopy daemon st", 2, "st", "daemon"), "stop");
    let subcommands = complete("shadowcopy ''", 1, "''", "shadowcopy");
    for s in ["create", "list", "volume", "completions"] {
        assert!(subcommands.split_whitespace().any(|w| w == s), "{s} in {subcommands}");
    }
}

/// Copies are named as people see them: an id prefix, `@GMT-…` (when only one volume has it) or
/// `VOLUME/@GMT-…`; an ambiguous name is refused with the candidates.
#[test]
fn copies_are_named_by_id_prefix_or_gmt_name() {
    let d = Daemon::start(&[]);
    for v in ["a", "b"] {
        let image = image_file(&d.dir, &format!("{v}.img"), 16 << 20);
        d.add_volume(v, &image);
    }
    let set = d.create(&["a", "b"], false);
    let (on_a, on_b) = (&set.copies[0], &set.copies[1]);
    assert_eq!(on_a.exposed_name, on_b.exposed_name, "one instant, one name on both volumes");
    let gmt = on_a.exposed_name.as_str();
    let out = cli(&d, &["delete", gmt]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("names 2 copies") && err.contains(&format!("a/{gmt}")), "{err}");
    let diff = json(&d, &["diff", &on_a.id.to_string()[..8]]);
    assert!(diff["ranges"].is_array(), "{diff}");
    assert!(cli(&d, &["delete", &format!("a/{gmt}")]).status.success());
    let left = d.list();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, on_b.id);
    // Now the bare name is unique.
    let out = cli(&d, &["--json", "expose", gmt, "--device"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&d, &["delete", "zzzz"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no shadow copy is named `zzzz`"));
    let loops: Vec<String> =
        shadowcopy::probe::loop_devices().unwrap().into_iter().filter(|l| l.backing_file.starts_with(&d.mount)).map(|l| l.device).collect();
    for l in &loops {
        assert!(cli(&d, &["unexpose", l]).status.success());
    }
    assert!(cli(&d, &["delete", &on_b.id.to_string()[..6]]).status.success());
    assert!(d.list().is_empty());
}

/// The scripting contract: every `--json` answer is an object; default tables fit 100 columns
/// and `-o wide` has every column; descriptions and labels stay with copies; a copy evicted for
/// space is said to the next command on its volume.
#[test]
fn json_objects_tables_that_fit_labels_and_eviction_notices() {
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 32 << 20);
    d.add_volume("vol", &image);
    for i in 0..4 {
        let label = format!("run={i}");
        let out = cli(&d, &["create", "vol", "--description", "before a deploy of the web shop's new checkout", "--label", &label]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for args in
        [&["status"][..], &["volume", "list"], &["list"], &["writers"], &["shadowstorage", "list"], &["policy", "show"], &["events"]]
    {
        let v = json(&d, args);
        assert!(v.is_object(), "shadowcopy --json {args:?} is an object: {v}");
    }
    let copies = json(&d, &["list", "vol"]);
    let first = &copies["copies"][0];
    assert_eq!(first["labels"]["run"], "0");
    assert_eq!(first["description"], "before a deploy of the web shop's new checkout");
    let out = cli(&d, &["list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().count() >= 5, "{table}");
    for line in table.lines() {
        assert!(line.chars().count() <= 100, "{} columns: {line}", line.chars().count());
    }
    let id = first["id"].as_str().unwrap();
    assert!(table.contains(&id[..8]) && !table.contains(id), "short ids by default:\n{table}");
    let wide = String::from_utf8_lossy(&cli(&d, &["-o", "wide", "list"]).stdout).to_string();
    assert!(wide.contains(id) && wide.contains("run=0") && wide.lines().any(|l| l.chars().count() > 100), "{wide}");
    assert_eq!(json(&d, &["-o", "json", "list"]), json(&d, &["list"]));

    // A small diff area overflowed through live: the next command on the volume says so.
    let small = image_file(&d.dir, "small.img", 16 << 20);
    let out = cli(&d, &["volume", "add", "small", small.to_str().unwrap(), "--max-size", "1M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let set = json(&d, &["create", "small"]);
    let evicted = set["copies"][0]["id"].as_str().unwrap().to_string();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(d.live("small")).unwrap();
        f.write_all(&vec![0x5a; 4 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let out = cli(&d, &["list", "small"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("note:") && err.contains(&evicted) && err.contains("diff area was full"), "{err}");
    let again = cli(&d, &["list", "small"]);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("note:"), "said once");
    // Status reports each volume's index: 1 MiB written over `vol`'s copies preserved 64 chunks.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(d.live("vol")).unwrap();
        f.write_all(&vec![0x5a; 1 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let status = json(&d, &["status"]);
    let indexes = status["indexes"].as_array().unwrap_or_else(|| panic!("status has indexes: {status}"));
    let vol_index = indexes.iter().find(|i| i["volume"] == "vol").unwrap_or_else(|| panic!("{status}"));
    assert_eq!(vol_index["preserved_chunks"].as_u64(), Some(64), "1 MiB of 16 KiB chunks: {vol_index}");
    assert_eq!(vol_index["cache_bytes"].as_u64(), Some(64 << 20), "the default --index-cache: {vol_index}");
    assert!(vol_index["open_seconds"].is_null(), "created, not opened, in this daemon: {vol_index}");
    assert!(indexes.iter().any(|i| i["volume"] == "small"), "{status}");
    let table = String::from_utf8_lossy(&cli(&d, &["status"]).stdout).to_string();
    assert!(table.lines().any(|l| l.starts_with("index:") && l.contains("vol: 64 chunks")), "{table}");
    let events = json(&d, &["events", "-n", "100"]);
    let deleted: Vec<&serde_json::Value> = events["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "copy_deleted").collect();
    assert!(deleted.iter().any(|e| e["copy"] == evicted.as_str() && e["reason"] == "diff_area_full"), "{events}");
}

/// A schedule and retention through the CLI and the daemon's own timer (real time, a 2 s
/// schedule): scheduled copies appear, retention deletes the ones it no longer keeps and says so
/// in `events`, copies taken by hand stay, and `events --follow` streams new events.
#[test]
fn the_daemon_takes_scheduled_copies_and_applies_retention() {
    use std::io::BufRead;
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 32 << 20);
    d.add_volume("vol", &image);
    let by_hand = json(&d, &["create", "vol"])["copies"][0]["id"].as_str().unwrap().to_string();
    let mut follower = Command::new(cli_binary())
        .args(["--socket", d.socket.to_str().unwrap(), "--json", "events", "--follow", "-n", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let policy = json(&d, &["policy", "set", "vol", "--schedule", "2s", "--min-count", "2"]);
    assert_eq!(policy["policies"][0]["policy"]["keep"]["min_count"], 2, "{policy}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (created, deleted) = loop {
        let events = json(&d, &["events", "-n", "1000"]);
        let count = |kind: &str, reason: Option<&str>| {
            events["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == kind && reason.is_none_or(|r| e["reason"] == r) && e["message"].as_str().unwrap().contains("vol"))
                .count()
        };
        let (created, deleted) = (count("copy_created", None), count("copy_deleted", Some("retention")));
        if created >= 5 && deleted >= 2 {
            break (created, deleted);
        }
        assert!(std::time::Instant::now() < deadline, "after 60 s: {created} created, {deleted} deleted by retention: {events}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let dry = json(&d, &["cleanup", "vol", "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    let out = json(&d, &["policy", "clear", "vol"]);
    assert!(out.is_object());
    let copies = json(&d, &["list", "vol"]);
    let copies = copies["copies"].as_array().unwrap();
    let owned = copies.iter().filter(|c| c["cleanup"] == true).count();
    assert!((1..=3).contains(&owned), "min-count 2 keeps about 2 (one may be in flight): {owned} of {created} created, {deleted} deleted");
    assert!(copies.iter().any(|c| c["id"] == by_hand.as_str()), "the copy taken by hand stays");
    assert!(copies.iter().filter(|c| c["cleanup"] == true).all(|c| c["description"] == "timeline (2s)"));
    // The follower saw the scheduled copies as they were made, one JSON object per line.
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["kind"], "copy_created", "{first}");
    follower.kill().unwrap();
    follower.wait().unwrap();
    // Without a policy there is nothing to clean up by: a JSON error that says what to do.
    let out = cli(&d, &["--json", "cleanup", "vol"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success() && v["error"]["kind"] == "bad_request", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("policy set"), "{v}");
}

/// `shadowcopy manpages DIR` writes a page per command that man(1) renders without a warning
/// (man and groff are the oracle), and `shadowcopyd --print-manpage` its own section 8 page.
#[test]
fn manual_pages_render_without_warnings() {
    shadowcopy::testing::system::require_commands(&["man"]);
    let dir = shadowcopy::testing::system::TempDir::new("sc-man-");
    let out = Command::new(cli_binary()).arg("manpages").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let daemon_page = dir.join("shadowcopyd.8");
    let page = Command::new(daemon_binary()).arg("--print-manpage").output().unwrap();
    assert!(page.status.success());
    std::fs::write(&daemon_page, &page.stdout).unwrap();
    let pages: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(pages.len() > 30, "{} pages", pages.len());
    for (file, needle) in [
        ("shadowcopy.1", "Volume Shadow Copy for Linux"),
        ("shadowcopy-create.1", "--description"),
        ("shadowcopy-policy-set.1", "--keep-hourly"),
        ("shadowcopy-events.1", "--follow"),
        ("shadowcopyd.8", "--diff-area-warn"),
    ] {
        let out = Command::new("man").args(["--warnings", "-l"]).arg(dir.join(file)).env("MANWIDTH", "100").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && out.stderr.is_empty(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(needle), "{file} mentions {needle}:\n{text}");
    }
}
