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
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    let attrs: Vec<&str> = list[0]["attributes"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(attrs.contains(&"persistent") && attrs.contains(&"client_accessible"), "{attrs:?}");
    let storage = json(&d, &["shadowstorage", "list"]);
    assert_eq!(storage[0]["chunk_size"], 65536);
    assert_eq!(storage[0]["max_bytes"], 8 << 20);
    let resized = json(&d, &["shadowstorage", "resize", "data", "unbounded"]);
    assert!(resized[0]["max_bytes"].is_null());
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
    let hit = ranges.as_array().unwrap().iter().any(|r| {
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
    assert_eq!(deleted.as_array().unwrap().len(), 1);
    assert!(json(&d, &["list"]).as_array().unwrap().is_empty());
    json(&d, &["volume", "remove", "data"]);
    assert!(json(&d, &["volume", "list"]).as_array().unwrap().is_empty());
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
    assert!(diff.is_array() || diff.is_object(), "{diff}");
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
