//! Application consistency with PostgreSQL (Debian's server): a cluster lives on an ext4
//! loop-mounted from `live`, pgbench keeps it busy, and sets are taken with the PostgreSQL writer
//! (`examples/postgres_writer`). Each copy is exported, loop-mounted read-write, given the
//! backup label the writer kept for its set, and started as a second server: it recovers as a
//! base backup ("starting backup recovery", "completed backup recovery"), and `pgbench_history`
//! holds exactly the rows the writer counted at Freeze.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::protocol::{Answer, Op};
use shadowcopy::testing::system::{require, require_commands, run, ChildGuard, Mount};

/// The newest installed server's `bin` directory (`/usr/lib/postgresql/N/bin`).
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("postgres").is_file() && p.join("pgbench").is_file())
        .collect();
    found.sort();
    let bin = found.pop().map(|(_, p)| p);
    require(bin.is_some(), "a PostgreSQL server with pgbench (apt-get install postgresql)");
    bin.unwrap()
}

/// `runuser -u postgres -- PROGRAM ARGS` (the server refuses to run as root).
fn as_postgres(bin: &Path, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(program)).args(args);
    c
}

fn ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory owned by the postgres user.
fn postgres_dir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    run("chown", &["-R", "postgres:postgres", p.to_str().unwrap()]);
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
    p.to_path_buf()
}

/// A running server; stopped (immediate mode) on drop.
struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    log: PathBuf,
}

impl PgServer {
    fn start(bin: &Path, data: &Path, socket_dir: &Path, port: u16) -> PgServer {
        let log = socket_dir.join("server.log");
        let opts = format!("-k {} -p {port} -c listen_addresses='' -c shared_buffers=32MB", socket_dir.display());
        let s = PgServer { bin: bin.into(), data: data.into(), socket_dir: socket_dir.into(), port, log };
        let started = as_postgres(
            bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-l", s.log.to_str().unwrap(), "-o", &opts, "-w", "-t", "60", "start"],
        )
        .output()
        .unwrap();
        assert!(started.status.success(), "pg_ctl start: {}\n{}", String::from_utf8_lossy(&started.stderr), s.log_text());
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One value from `sql`.
    fn query(&self, sql: &str) -> String {
        let c = as_postgres(
            &self.bin,
            "psql",
            &["-h", self.socket_dir.to_str().unwrap(), "-p", &self.port.to_string(), "-U", "postgres", "-At", "-c", sql],
        );
        ok(c, sql).trim().to_string()
    }

    fn args(&self) -> Vec<String> {
        vec!["-h".into(), self.socket_dir.display().to_string(), "-p".into(), self.port.to_string(), "-U".into(), "postgres".into()]
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl", &["-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn example_binary() -> PathBuf {
    let p = daemon_binary().parent().unwrap().join("examples/postgres_writer");
    require(p.is_file(), &format!("the example {} (cargo build --workspace --all-targets)", p.display()));
    p
}

#[test]
fn with_the_postgres_writer_every_copy_starts_as_a_base_backup_with_the_rows_of_the_instant() {
    require_commands(&["mkfs.ext4", "runuser", "chown"]);
    let bin = pg_bin();
    let d = Daemon::start(&[]);
    // The server runs as postgres: it must reach its directories under the test's.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = image_file(&d.dir, "vol.img", 384 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    let data = postgres_dir(&fs.path("pgdata"));
    ok(as_postgres(&bin, "initdb", &["-D", data.to_str().unwrap(), "--auth=trust", "-U", "postgres", "-E", "UTF8"]), "initdb");
    let live_server = PgServer::start(&bin, &data, &postgres_dir(&d.dir.join("sock-live")), 54321);
    let mut init = as_postgres(&bin, "pgbench", &["-i", "-s", "1", "-q"]);
    init.args(live_server.args());
    ok(init, "pgbench -i");

    let labels = d.dir.join("labels");
    let record = d.dir.join("rows.txt");
    let _writer = ChildGuard(Some(
        Command::new(example_binary())
            .args(["--socket", d.socket.to_str().unwrap(), "--host", live_server.socket_dir.to_str().unwrap(), "--port", "54321"])
            .args([
                "--data-dir",
                data.to_str().unwrap(),
                "--volume",
                "vol",
                "--label-dir",
                labels.to_str().unwrap(),
                "--record",
                record.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(d.call(Op::Writers), Ok(Answer::Writers(w)) if !w.is_empty()) {
        assert!(Instant::now() < deadline, "the PostgreSQL writer registered");
        std::thread::sleep(Duration::from_millis(50));
    }

    // pgbench: 4 clients without pause until stopped.
    let mut load = as_postgres(&bin, "pgbench", &["-n", "-c", "4", "-j", "2", "-T", "600"]);
    load.args(live_server.args()).stdout(Stdio::null()).stderr(Stdio::null());
    let load = ChildGuard(Some(load.spawn().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while live_server.query("SELECT count(*) FROM pgbench_history").parse::<i64>().unwrap() < 100 {
        assert!(Instant::now() < deadline, "pgbench is running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sets = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        let set = d.create(&["vol"], false);
        assert_eq!(set.writers, vec!["postgresql".to_string()], "the writer took part");
        sets.push(set);
    }
    drop(load);
    let rows_at_end: i64 = live_server.query("SELECT count(*) FROM pgbench_history").parse().unwrap();

    let recorded = std::fs::read_to_string(&record).expect("the writer's record");
    let mut counts = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let copy = &set.copies[0];
        let expected: i64 = recorded
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{} ", set.set_id)))
            .unwrap_or_else(|| panic!("the writer recorded set {}: {recorded}", set.set_id))
            .parse()
            .unwrap();
        // Restore: export, mount read-write, add the backup label, drop the stale pid file.
        let exported = d.dir.join(&format!("copy{i}.img"));
        d.call(Op::Export { id: copy.id, path: exported.display().to_string() }).expect("export");
        let mounted = Mount::new(exported.to_str().unwrap(), &d.dir.join(&format!("restored{i}")), Some("ext4"), "loop");
        let restored = mounted.point.join("pgdata");
        assert!(restored.join("postmaster.pid").exists(), "the copy was taken from a running server");
        std::fs::remove_file(restored.join("postmaster.pid")).unwrap();
        let label = std::fs::read_to_string(labels.join(set.set_id.to_string()).join("backup_label")).expect("the set's backup label");
        assert!(label.contains("LABEL: shadowcopy"), "{label}");
        std::fs::write(restored.join("backup_label"), &label).unwrap();
        run("chown", &["postgres:postgres", restored.join("backup_label").to_str().unwrap()]);

        let server = PgServer::start(&bin, &restored, &postgres_dir(&d.dir.join(&format!("sock{i}"))), 54330 + i as u16);
        let rows: i64 = server.query("SELECT count(*) FROM pgbench_history").parse().unwrap();
        let log = server.log_text();
        eprintln!("copy {i} ({}): writer counted {expected} rows at Freeze, the restored server has {rows}", copy.exposed_name);
        assert!(log.contains("starting backup recovery"), "recovered from the backup label:\n{log}");
        assert!(log.contains("completed backup recovery"), "reached the end of the backup:\n{log}");
        assert_eq!(rows, expected, "copy {i}: the rows committed at Freeze, no more, no fewer");
        // The balances still add up (every pgbench transaction was applied whole).
        let sums = server.query("SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)");
        assert_eq!(sums, "t", "copy {i}: account balances match the history");
        counts.push(rows);
        drop(server);
        drop(mounted);
    }
    assert!(
        counts[0] > 0 && counts[0] < counts[1] && counts[1] < rows_at_end,
        "the copies were taken under load: {counts:?} of {rows_at_end}"
    );
    drop(live_server);
    drop(fs);
}
