//! A PostgreSQL writer: every shadow copy of a cluster's volume is an online base backup with
//! its backup label, taken the way PostgreSQL documents for non-exclusive backups.
//!
//! - PrepareForSnapshot: `CHECKPOINT` (less WAL to replay), then `pg_backup_start(label, fast)`
//!   on a session kept open until the backup ends.
//! - Freeze: on a second session, `LOCK TABLE … IN SHARE MODE` for each `--table` (writes to
//!   them wait, reads go on), count their rows, then `pg_backup_stop()`: its end-of-backup WAL
//!   record is flushed before the instant, so the copy holds every WAL record recovery needs.
//! - Thaw: release the locks; write the label `pg_backup_stop` returned to
//!   `--label-dir/SET_ID/backup_label` (and `tablespace_map` if there are tablespaces), and
//!   append `SET_ID ROWS` to `--record`.
//! - Abort: release the locks and end a backup still running.
//!
//! The label never goes into the live data directory (a server that crashed with a stale
//! `backup_label` there would recover from the wrong checkpoint). To start a server on a copy:
//! export it (`shadowcopy export ID copy.img`), mount it read-write, copy
//! `--label-dir/SET_ID/backup_label` into the data directory, remove `postmaster.pid`, start.
//! PostgreSQL then logs "starting backup recovery …" and replays WAL up to the end of the backup
//! and beyond, to the instant.
//!
//! ```text
//! cargo run --example postgres_writer -- --host /run/postgresql --volume data \
//!     --data-dir /mnt/data/pgdata --label-dir /var/lib/shadowcopy/pg-labels
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::Parser;
use postgres::{Client, NoTls};
use shadowcopy::protocol::{default_socket_path, Component, EventMessage, WriterRegistration};
use shadowcopy::writer::{self, Failure, Writer};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// The server's socket directory (or host name).
    #[arg(long, default_value = "/run/postgresql")]
    host: String,
    #[arg(long, default_value_t = 5432)]
    port: u16,
    #[arg(long, default_value = "postgres")]
    user: String,
    #[arg(long, default_value = "postgres")]
    dbname: String,
    /// The cluster's data directory (shown as the component's path).
    #[arg(long)]
    data_dir: PathBuf,
    /// The volume the data directory (with its pg_wal) lives on.
    #[arg(long)]
    volume: String,
    /// Where each set's backup label goes (`DIR/SET_ID/backup_label`); off the live volume.
    #[arg(long)]
    label_dir: PathBuf,
    /// Tables whose writes pause from Freeze to Thaw and whose rows are counted (repeatable).
    #[arg(long = "table", default_value = "pgbench_history")]
    tables: Vec<String>,
    /// Where to append `SET_ID ROWS` (rows of the tables at the instant) for each set.
    #[arg(long)]
    record: Option<PathBuf>,
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// What `pg_backup_stop` returned.
struct Label {
    backup_label: String,
    tablespace_map: String,
}

struct PostgresWriter {
    args: Args,
    /// The session `pg_backup_start` ran on (a non-exclusive backup ends with its session).
    backup: Option<Client>,
    /// The session holding the table locks from Freeze to Thaw.
    locks: Option<Client>,
    label: Option<Label>,
    rows_at_freeze: Option<i64>,
}

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(format!("{what}: {e}"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PostgresWriter {
    fn connect(&self) -> Result<Client, Failure> {
        postgres::Config::new()
            .host(&self.args.host)
            .port(self.args.port)
            .user(&self.args.user)
            .dbname(&self.args.dbname)
            .application_name("shadowcopy-writer")
            .connect(NoTls)
            .map_err(|e| fail("connecting to PostgreSQL", e))
    }

    /// Releases the locks and ends a backup still running; drops the sessions.
    fn release(&mut self) {
        if let Some(mut c) = self.locks.take() {
            let _ = c.batch_execute("ROLLBACK");
        }
        if let Some(mut c) = self.backup.take() {
            let _ = c.query("SELECT pg_backup_stop(false)", &[]);
        }
        self.label = None;
        self.rows_at_freeze = None;
    }
}

impl Writer for PostgresWriter {
    fn prepare_for_snapshot(&mut self, _e: &EventMessage) -> Result<(), Failure> {
        self.release();
        let mut c = self.connect()?;
        c.batch_execute("CHECKPOINT").map_err(|e| fail("CHECKPOINT", e))?;
        c.query("SELECT pg_backup_start($1, true)", &[&"shadowcopy"]).map_err(|e| fail("pg_backup_start", e))?;
        self.backup = Some(c);
        Ok(())
    }

    fn freeze(&mut self, _e: &EventMessage) -> Result<(), Failure> {
        let mut locks = self.connect()?;
        locks.batch_execute("BEGIN").map_err(|e| fail("BEGIN", e))?;
        // Under the daemon's 10 s answer limit: a lock that cannot be had fails the set.
        locks.batch_execute("SET LOCAL lock_timeout = '8s'").map_err(|e| fail("lock_timeout", e))?;
        let mut rows = 0i64;
        for t in &self.args.tables {
            locks.batch_execute(&format!("LOCK TABLE {} IN SHARE MODE", quote_ident(t))).map_err(|e| fail(&format!("locking {t}"), e))?;
            let n: i64 = locks
                .query_one(&format!("SELECT count(*) FROM {}", quote_ident(t)), &[])
                .map_err(|e| fail(&format!("counting {t}"), e))?
                .get(0);
            rows += n;
        }
        self.locks = Some(locks);
        self.rows_at_freeze = Some(rows);
        let backup = self.backup.as_mut().ok_or_else(|| Failure::new("Freeze without PrepareForSnapshot: no backup is running"))?;
        let row =
            backup.query_one("SELECT labelfile, spcmapfile FROM pg_backup_stop(false)", &[]).map_err(|e| fail("pg_backup_stop", e))?;
        self.label = Some(Label { backup_label: row.get(0), tablespace_map: row.get::<_, Option<String>>(1).unwrap_or_default() });
        self.backup = None;
        Ok(())
    }

    fn thaw(&mut self, e: &EventMessage) -> Result<(), Failure> {
        let (label, rows) = (self.label.take(), self.rows_at_freeze);
        if let Some(mut c) = self.locks.take() {
            c.batch_execute("COMMIT").map_err(|e| fail("releasing the locks", e))?;
        }
        let (Some(label), Some(set)) = (label, e.set_id) else { return Err(Failure::new("Thaw without a finished backup")) };
        let dir = self.args.label_dir.join(set.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| fail(&format!("creating {}", dir.display()), e))?;
        std::fs::write(dir.join("backup_label"), &label.backup_label).map_err(|e| fail("writing backup_label", e))?;
        if !label.tablespace_map.is_empty() {
            std::fs::write(dir.join("tablespace_map"), &label.tablespace_map).map_err(|e| fail("writing tablespace_map", e))?;
        }
        if let (Some(path), Some(rows)) = (&self.args.record, rows) {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| fail("opening the record", e))?;
            writeln!(f, "{set} {rows}").map_err(|e| fail("writing the record", e))?;
        }
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
    std::fs::create_dir_all(&args.label_dir).with_context(|| format!("creating {}", args.label_dir.display()))?;
    let data_dir = args.data_dir.display().to_string();
    let registration = WriterRegistration {
        name: "postgresql".into(),
        class_id: Uuid::new_v5(&Uuid::NAMESPACE_URL, b"shadowcopy-example:postgresql"),
        instance_id: Uuid::new_v5(&Uuid::NAMESPACE_URL, data_dir.as_bytes()),
        components: vec![Component {
            name: data_dir.clone(),
            paths: vec![data_dir],
            volumes: vec![args.volume.clone()],
            restore_method: Some("restore the data directory, add backup_label, start the server".into()),
        }],
    };
    let socket = args.socket.clone().unwrap_or_else(default_socket_path);
    let mut w = PostgresWriter { args, backup: None, locks: None, label: None, rows_at_freeze: None };
    // Fail early if the server cannot be reached.
    drop(w.connect().map_err(|f| anyhow::anyhow!(f.message))?);
    writer::run(&socket, &registration, &mut w, &AtomicBool::new(false)).context("serving as a writer")
}
