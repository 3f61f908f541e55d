//! Application consistency with SQLite: a process inserts rows on an ext4 loop-mounted from
//! `live` without pause while copies are taken. With the SQLite writer (`examples/sqlite_writer`),
//! every copy's database opens without recovery (no hot journal), passes
//! `PRAGMA integrity_check`, and holds exactly the rows the writer saw committed at Freeze.
//! Without it, copies are only crash-consistent: each is recoverable (SQLite rolls back the hot
//! journal it may hold) — the run prints what each copy needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rusqlite::{Connection, OpenFlags};
use shadowcopy::protocol::{Answer, CopyView, CreateRequest, Op, WriterSelection};
use shadowcopy::testing::system::{require, ChildGuard};

fn example_binary() -> PathBuf {
    let p = daemon_binary().parent().unwrap().join("examples/sqlite_writer");
    require(p.is_file(), &format!("the example {} (cargo build --workspace --all-targets)", p.display()));
    p
}

fn inserter(db: PathBuf, stop: Arc<AtomicBool>, committed: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let conn = Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn.execute_batch("PRAGMA synchronous=FULL").unwrap();
        let payload = "x".repeat(3000);
        while !stop.load(Ordering::Relaxed) {
            let tx = conn.unchecked_transaction().unwrap();
            for _ in 0..5 {
                tx.execute("INSERT INTO t (payload) VALUES (?1)", [&payload]).unwrap();
            }
            tx.commit().unwrap();
            committed.fetch_add(5, Ordering::Relaxed);
            // An application between two transactions (a loop that never lets go of SQLite's
            // lock would starve any other writer of the database, ours included).
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// What one copy's database looks like.
#[derive(Debug)]
struct Seen {
    hot_journal: bool,
    /// `PRAGMA integrity_check` opening the copy as it is (no recovery).
    as_is: String,
    rows_as_is: Option<i64>,
    /// The same after SQLite recovered a private copy of it (hot journal rolled back).
    recovered: String,
    rows_recovered: i64,
}

fn inspect(tree: &Path, scratch: &Path) -> Seen {
    let db = tree.join("app.db");
    let journal = tree.join("app.db-journal");
    let hot_journal = journal.metadata().is_ok_and(|m| m.len() > 0);
    let uri = format!("file:{}?immutable=1", db.display());
    let ro = Connection::open_with_flags(&uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI).unwrap();
    let as_is: String = ro.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap_or_else(|e| format!("error: {e}"));
    let rows_as_is = ro.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).ok();
    std::fs::create_dir_all(scratch).unwrap();
    std::fs::copy(&db, scratch.join("app.db")).unwrap();
    if journal.exists() {
        std::fs::copy(&journal, scratch.join("app.db-journal")).unwrap();
    }
    let rw = Connection::open(scratch.join("app.db")).unwrap();
    let recovered: String = rw.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    let rows_recovered = rw.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    Seen { hot_journal, as_is, rows_as_is, recovered, rows_recovered }
}

/// Takes `n` copies while rows are inserted; with or without the SQLite writer.
fn run(with_writer: bool, n: usize) -> (Daemon, Vec<(CopyView, Seen, Option<i64>)>) {
    shadowcopy::testing::system::require_commands(&["mkfs.ext4"]);
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 256 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    let db = fs.path("app.db");
    Connection::open(&db).unwrap().execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)").unwrap();
    let record = d.dir.join("rows.txt");
    let writer = with_writer.then(|| {
        let child = Command::new(example_binary())
            .args([
                "--socket",
                d.socket.to_str().unwrap(),
                "--db",
                db.to_str().unwrap(),
                "--volume",
                "vol",
                "--record",
                record.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(d.call(Op::Writers), Ok(Answer::Writers(w)) if !w.is_empty()) {
            assert!(Instant::now() < deadline, "the SQLite writer registered");
            std::thread::sleep(Duration::from_millis(50));
        }
        ChildGuard(Some(child))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let ins = inserter(db.clone(), Arc::clone(&stop), Arc::clone(&committed));
    let mut copies = Vec::new();
    for _ in 0..n {
        std::thread::sleep(Duration::from_millis(400));
        let sel = WriterSelection { none: !with_writer, ..Default::default() };
        match d.call(Op::Create(CreateRequest { writers: sel, ..CreateRequest::new(vec!["vol".into()]) })) {
            Ok(Answer::Set(s)) => {
                assert_eq!(s.writers.len(), usize::from(with_writer));
                copies.push(s.copies[0].clone());
            }
            other => panic!("create: {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    ins.join().unwrap();
    assert!(committed.load(Ordering::Relaxed) > 100, "the inserter kept working");
    let recorded: Vec<(String, i64)> = std::fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (s, r) = l.split_once(' ').unwrap();
            (s.to_string(), r.parse().unwrap())
        })
        .collect();
    let out = copies
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let seen = inspect(&d.tree("vol", &c), &d.dir.join(&format!("scratch{i}")));
            let expected = recorded.iter().find(|(s, _)| *s == c.set_id.to_string()).map(|(_, r)| *r);
            eprintln!(
                "{} writer, copy {i}: hot journal {}, as is: {} ({:?} rows), after recovery: {} ({} rows), writer saw {:?}",
                if with_writer { "with" } else { "without" },
                seen.hot_journal,
                seen.as_is,
                seen.rows_as_is,
                seen.recovered,
                seen.rows_recovered,
                expected
            );
            (c, seen, expected)
        })
        .collect();
    // The writer holds the database open: stop it before unmounting.
    drop(writer);
    drop(fs);
    (d, out)
}

#[test]
fn with_the_sqlite_writer_every_copy_is_consistent_as_is() {
    let (_d, copies) = run(true, 4);
    for (c, seen, expected) in copies {
        assert!(!seen.hot_journal, "{}: no hot journal under the writer's lock", c.exposed_name);
        assert_eq!(seen.as_is, "ok", "{}: opens clean without recovery", c.exposed_name);
        let expected = expected.unwrap_or_else(|| panic!("{}: the writer recorded its row count", c.exposed_name));
        assert_eq!(seen.rows_as_is, Some(expected), "{}: exactly the rows committed at Freeze", c.exposed_name);
        assert_eq!(seen.rows_recovered, expected);
    }
}

#[test]
fn without_a_writer_copies_are_crash_consistent_only() {
    let (_d, copies) = run(false, 4);
    for (c, seen, _) in copies {
        // What a power cut leaves: SQLite recovers it (rolls back a hot journal if there is one).
        assert_eq!(seen.recovered, "ok", "{}: recoverable", c.exposed_name);
    }
}
