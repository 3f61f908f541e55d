//! An SQLite writer: makes every shadow copy of a database application-consistent.
//!
//! At Freeze it takes SQLite's write lock (`BEGIN IMMEDIATE`): in-flight transactions finish and
//! are durable in the database file, new ones wait. With the default rollback journal, no hot
//! journal exists while the lock is held, so the copy opens without recovery. At Thaw (or Abort)
//! it releases the lock. It records `SET_ID ROWS` (rows of `--table` at the instant) in
//! `--record`, so a test can check each copy holds exactly those rows.
//!
//! ```text
//! cargo run --example sqlite_writer -- --db /mnt/app/app.db --volume data --record /tmp/rows.txt
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use rusqlite::Connection;
use shadowcopy::protocol::{default_socket_path, Component, EventMessage, WriterRegistration};
use shadowcopy::writer::{self, Failure, Writer};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    db: PathBuf,
    /// The volume the database lives on.
    #[arg(long)]
    volume: String,
    #[arg(long, default_value = "t")]
    table: String,
    /// Where to append `SET_ID ROWS` for each set.
    #[arg(long)]
    record: Option<PathBuf>,
    #[arg(long)]
    socket: Option<PathBuf>,
}

struct SqliteWriter {
    conn: Connection,
    table: String,
    record: Option<PathBuf>,
    rows_at_freeze: Option<i64>,
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(e.to_string())
}

impl SqliteWriter {
    fn release(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.rows_at_freeze = None;
    }
}

impl Writer for SqliteWriter {
    fn freeze(&mut self, _e: &EventMessage) -> Result<(), Failure> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
        let rows: i64 = self.conn.query_row(&format!("SELECT count(*) FROM \"{}\"", self.table), [], |r| r.get(0)).map_err(fail)?;
        self.rows_at_freeze = Some(rows);
        Ok(())
    }

    fn thaw(&mut self, e: &EventMessage) -> Result<(), Failure> {
        if let (Some(path), Some(rows), Some(set)) = (&self.record, self.rows_at_freeze, e.set_id) {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(fail)?;
            writeln!(f, "{set} {rows}").map_err(fail)?;
        }
        self.release();
        Ok(())
    }

    fn abort(&mut self, _e: &EventMessage) -> Result<(), Failure> {
        self.release();
        Ok(())
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // No colour codes in files and the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let conn = Connection::open(&args.db).with_context(|| format!("opening {}", args.db.display()))?;
    // Under the daemon's 10 s answer limit.
    conn.busy_timeout(Duration::from_secs(8))?;
    let registration = WriterRegistration {
        name: "sqlite".into(),
        class_id: Uuid::new_v5(&Uuid::NAMESPACE_URL, b"shadowcopy-example:sqlite"),
        instance_id: Uuid::new_v4(),
        components: vec![Component {
            name: args.db.display().to_string(),
            paths: vec![args.db.display().to_string()],
            volumes: vec![args.volume.clone()],
            restore_method: None,
        }],
    };
    let mut w = SqliteWriter { conn, table: args.table, record: args.record, rows_at_freeze: None };
    let socket = args.socket.unwrap_or_else(default_socket_path);
    writer::run(&socket, &registration, &mut w, &AtomicBool::new(false)).context("serving as a writer")
}
