//! `shadowcopy`: the requester and admin CLI.
//!
//! Talks to `shadowcopyd` over its control socket (found by `--socket`, else
//! `SHADOWCOPY_SOCKET`, else the default path) and prints tables like `vssadmin`, or JSON with
//! `--json`. `shadowcopy offline …` works on an image and its diff area without a daemon.

mod hook;
mod offline;
mod online;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use shadowcopy::size::parse_size;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "shadowcopy",
    version,
    about = "Volume Shadow Copy for Linux: point-in-time, read-only shadow copies of live volumes",
    after_help = "Start the daemon first (shadowcopyd), then e.g.:\n  shadowcopy volume add data /srv/data.img\n  \
                  losetup --find --show /run/shadowcopy/mnt/data/live   # put a filesystem on it, mount it\n  \
                  shadowcopy create data\n  shadowcopy list\n  ls /run/shadowcopy/mnt/data/"
)]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The daemon's control socket [default: $SHADOWCOPY_SOCKET, else /run/shadowcopy/control.sock
    /// for root, $XDG_RUNTIME_DIR/shadowcopy/control.sock otherwise].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register, list and remove volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Take one shadow copy set of the named volumes (filesystems on them are frozen for the instant).
    Create {
        #[arg(required = true)]
        volumes: Vec<String>,
        /// Not kept across daemon restarts (cheaper: no durability work).
        #[arg(long)]
        volatile: bool,
        /// Only these writers take part (repeatable) [default: writers with components on the volumes].
        #[arg(long = "writer", value_name = "NAME")]
        writers: Vec<String>,
        /// Leave this writer out (repeatable).
        #[arg(long = "exclude-writer", value_name = "NAME")]
        exclude_writers: Vec<String>,
        /// No writers: a crash-consistent set.
        #[arg(long, conflicts_with_all = ["writers", "exclude_writers"])]
        no_writers: bool,
    },
    /// List the writers and their states (like `vssadmin list writers`).
    Writers,
    /// Run a writer.
    #[command(subcommand)]
    Writer(WriterCmd),
    /// List shadow copies (of one volume, or all).
    List { volume: Option<String> },
    /// Delete shadow copies.
    Delete(DeleteArgs),
    /// Diff-area space: list, or change a volume's maximum.
    #[command(subcommand, name = "shadowstorage")]
    ShadowStorage(StorageCmd),
    /// Write a shadow copy to a sparse image file (on the daemon's host).
    Export { id: Uuid, file: PathBuf },
    /// Roll a volume back to a shadow copy (nothing may have its live file open).
    Revert { id: Uuid },
    /// Byte ranges that changed between a copy and a later copy (or the live volume).
    Diff { id: Uuid, to: Option<Uuid> },
    /// The daemon's version, mount and state directory.
    Status,
    /// Operations on an image and its diff area without a daemon (nothing else may write the
    /// image meanwhile).
    #[command(subcommand)]
    Offline(offline::Offline),
}

#[derive(Subcommand)]
enum WriterCmd {
    /// A hook writer: runs `PATH EVENT` for each event (identify, prepare_for_backup,
    /// prepare_for_snapshot, freeze, thaw, post_snapshot, abort, backup_complete, …), with
    /// SHADOWCOPY_EVENT, SHADOWCOPY_SET_ID, SHADOWCOPY_COPY_IDS and SHADOWCOPY_VOLUMES in the
    /// environment; exit status 0 is success, anything else fails the event with the program's
    /// last line of output as the message. Stays connected (and reconnects) until interrupted.
    Run {
        #[arg(long)]
        name: String,
        #[arg(long)]
        exec: PathBuf,
        /// Volumes the writer's data lives on (repeatable); it takes part in sets of these.
        #[arg(long = "volume", value_name = "VOLUME")]
        volumes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Register an image file or block device and create its diff area.
    Add {
        name: String,
        image: PathBuf,
        /// Where the diff area goes [default: <state-dir>/diffareas/NAME]; keep it off any
        /// filesystem that lives on a live file.
        #[arg(long)]
        diff_area: Option<PathBuf>,
        /// Maximum diff-area size: `10%` of the volume (default), `2G`, or `unbounded`. When
        /// full, the oldest copies are deleted; live writes never fail.
        #[arg(long)]
        max_size: Option<String>,
        /// Copy-on-write chunk size, a power of two from 4K to 1M [default: 16K].
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Expose the image read-only (no diff area; `live` refuses writes) and serve the
        /// Windows shadow copies found on an NTFS volume as `@GMT-…` folders.
        #[arg(long, conflicts_with_all = ["diff_area", "max_size", "chunk_size"])]
        read_only: bool,
    },
    /// List registered volumes.
    List,
    /// Unregister a volume and delete its diff area (its copies are lost).
    Remove { name: String },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct DeleteArgs {
    /// One shadow copy.
    id: Option<Uuid>,
    /// Every copy of a set.
    #[arg(long, value_name = "SET_ID")]
    set: Option<Uuid>,
    /// The oldest copy of a volume.
    #[arg(long, value_name = "VOLUME")]
    oldest: Option<String>,
    /// Every copy of a volume.
    #[arg(long, value_name = "VOLUME")]
    all: Option<String>,
}

#[derive(Subcommand)]
enum StorageCmd {
    /// Space used by each volume's diff area.
    List,
    /// Change a volume's maximum diff-area size (`10%`, `2G`, `unbounded`); shrinking deletes
    /// the oldest copies until it fits.
    Resize { volume: String, max_size: String },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r: Result<()> = match cli.command {
        Command::Offline(cmd) => offline::run(cmd, cli.json),
        cmd => online::run(cmd, cli.socket, cli.json),
    };
    if let Err(e) = r {
        eprintln!("shadowcopy: {e:#}");
        std::process::exit(1);
    }
}
