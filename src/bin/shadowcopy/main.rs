//! `shadowcopy`: the requester and admin CLI.
//!
//! Talks to `shadowcopyd` over its control socket (found by `--socket`, else
//! `SHADOWCOPY_SOCKET`, else the default path) and prints tables like `vssadmin`, or JSON with
//! `--json`. `shadowcopy offline …` works on an image and its diff area without a daemon.

/// Prints a line on stdout; a closed stdout (`shadowcopy list | head -1`) ends the program
/// quietly with the status a SIGPIPE would give, instead of a panic after the work was done.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

mod adopt;
mod changes;
mod hook;
mod locate;
mod offline;
mod online;
mod policy;
mod render;
mod samba;
mod versions;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use shadowcopy::size::parse_size;

#[derive(Parser)]
#[command(
    name = "shadowcopy",
    version,
    about = "Volume Shadow Copy for Linux: point-in-time, read-only shadow copies of live volumes",
    after_help = "Start the daemon first (shadowcopyd), then e.g.:\n  shadowcopy volume add data /srv/data.img\n  \
                  losetup --find --show /run/shadowcopy/mnt/data/live   # put a filesystem on it, mount it\n  \
                  shadowcopy create data\n  shadowcopy list\n  ls /run/shadowcopy/mnt/data/\n\n\
                  Naming a copy (COPY): its id, a unique prefix of it (4 characters or more), its @GMT-… name if \
                  only one volume has it, or VOLUME/@GMT-…."
)]
struct Cli {
    /// Print machine-readable JSON instead of tables (the same as `-o json`).
    #[arg(long, global = true)]
    json: bool,
    /// `table` (fitted to the terminal, 100 columns when not on one), `wide` (every column,
    /// not fitted) or `json`.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The daemon's control socket [default: $SHADOWCOPY_SOCKET, else /run/shadowcopy/control.sock
    /// for root, $XDG_RUNTIME_DIR/shadowcopy/control.sock otherwise].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `-o` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Register, list and remove volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Take one shadow copy set of the named volumes (writers freeze, filesystems on them are
    /// frozen for the instant, then everything resumes).
    #[command(after_help = "Contexts (like VSS's):\n  \
        client-accessible-writers  persistent, with writers, listed in the volume's folder (default)\n  \
        client-accessible          persistent, no writers, listed\n  \
        app-rollback               persistent, with writers, reachable by path only\n  \
        nas-rollback               persistent, no writers, reachable by path only\n  \
        backup                     volatile, with writers, reachable by path only; released when this command exits\n  \
        file-share-backup          like backup, without writers\n\n\
        A backup in one command:\n  \
        shadowcopy create data --context backup --exec 'tar -C \"$SHADOWCOPY_COPY_PATH\" -czf /backup/data.tgz .'")]
    Create(CreateArgs),
    /// Tell the writers of a set created with --defer-backup-complete that the backup tool has
    /// read the copies (BackupComplete).
    BackupComplete {
        /// The set: its id or a unique prefix of it.
        #[arg(value_name = "SET")]
        set_id: String,
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
    Export {
        /// The copy (see "Naming a copy" in --help).
        #[arg(value_name = "COPY")]
        id: String,
        file: PathBuf,
    },
    /// Roll a volume back to a shadow copy (nothing may have its live file open).
    Revert {
        /// The copy (see "Naming a copy" in --help).
        #[arg(value_name = "COPY")]
        id: String,
    },
    /// Byte ranges that changed between a copy and a later copy (or the live volume).
    Diff {
        /// The earlier copy (see "Naming a copy" in --help).
        #[arg(value_name = "COPY")]
        id: String,
        /// The later copy [default: the live volume].
        #[arg(value_name = "LATER")]
        to: Option<String>,
    },
    /// Make a copy visible outside the mount (like diskshadow's `expose`): its files on an
    /// existing directory (a bind mount), or its raw image as a read-only loop device. Lasts
    /// until `unexpose` or the daemon stops.
    Expose {
        /// The copy (see "Naming a copy" in --help).
        #[arg(value_name = "COPY")]
        id: String,
        /// The directory to show the copy's files at.
        #[arg(required_unless_present = "device", conflicts_with = "device")]
        dir: Option<PathBuf>,
        /// Attach the copy's raw image to a read-only loop device instead (e.g. to mount it with
        /// the kernel's own filesystem driver).
        #[arg(long)]
        device: bool,
        /// Expose on a directory that is not empty (what is in it stays hidden until unexpose).
        #[arg(long, conflicts_with = "device")]
        force: bool,
    },
    /// A volume's schedule and retention (like snapper's timeline): the daemon takes the
    /// scheduled copies and deletes the copies its policy owns once the policy no longer keeps
    /// them. It never deletes an exposed copy, nor one it does not own.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Delete now the copies a volume's retention policy no longer keeps (the daemon does it on
    /// its own after each scheduled copy).
    Cleanup {
        volume: String,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// What happened: copies created and deleted (with why), failures, diff areas nearly full.
    Events {
        /// Keep printing events as they happen (until interrupted).
        #[arg(long, short)]
        follow: bool,
        /// How many of the latest events to show first.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        /// Only events after this sequence number (the SEQ column).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
    },
    /// Undo an exposure (a directory or a loop device).
    Unexpose { path: PathBuf },
    /// The daemon's version, mount and state directory.
    Status,
    /// The daemon itself.
    #[command(subcommand)]
    Daemon(DaemonCmd),
    /// The earlier versions of a file or folder (like Explorer's Previous Versions): the copies
    /// that hold it differently from the next newer state, newest first. PATH is on a
    /// filesystem mounted from a volume's `live` (or inside a copy's folder in the mount).
    Versions {
        path: PathBuf,
        /// Every copy that holds it, also those identical to the next newer one.
        #[arg(long)]
        all: bool,
    },
    /// Files and folders added (+), deleted (-), modified (M) or with only their metadata
    /// changed (m) between copy A and a later copy B, or the live filesystem (like `zfs diff`).
    /// Compares what stat shows (no data is read); see the module docs for what that misses.
    Changes {
        #[arg(value_name = "A")]
        from: String,
        /// A later copy [default: the live filesystem mounted from the volume].
        #[arg(value_name = "B")]
        to: Option<String>,
    },
    /// Print the smb.conf `[share]` section that shows a volume's copies to Windows clients as
    /// Previous Versions (Samba's vfs_shadow_copy2). Give the folder to share (on a filesystem
    /// mounted from a volume) or the volume's name (its filesystem's mount point is shared).
    SambaConfig {
        #[arg(value_name = "MOUNTPOINT|VOLUME")]
        target: String,
        /// The share's name [default: the volume's].
        #[arg(long)]
        share: Option<String>,
    },
    /// Put a file or folder back from a copy, with its owner, mode, times, xattrs and ACLs.
    Restore {
        path: PathBuf,
        /// The copy: its id, an id prefix of 8 or more characters, or its @GMT-… name.
        #[arg(long, value_name = "COPY")]
        from: String,
        /// Restore to DEST instead of PATH.
        #[arg(long, value_name = "DEST")]
        to: Option<PathBuf>,
        /// Replace what is at the destination (files are replaced whole; a folder is merged into).
        #[arg(long)]
        overwrite: bool,
    },
    /// Operations on an image and its diff area without a daemon (nothing else may write the
    /// image meanwhile).
    #[command(subcommand)]
    Offline(offline::Offline),
    /// Print a shell completion script, e.g.
    /// `shadowcopy completions bash > /etc/bash_completion.d/shadowcopy`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (shadowcopy.1 and one per subcommand, shadowcopy-create.1, …) to
    /// DIR, e.g. /usr/local/share/man/man1.
    Manpages { dir: PathBuf },
    /// Turn a mounted filesystem (on a block device or an image file) into a shadowcopy volume
    /// with a moment's downtime: refused while any process uses it (they are named); unmounts
    /// it, registers it, mounts it again at the same place with the same type and options
    /// through the volume's `live` (at every start of the daemon too), comments out its fstab
    /// line (keeping a backup) and verifies. A failure after the unmount puts the original mount
    /// back. The root filesystem is refused.
    Adopt(adopt::AdoptArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(required = true)]
    pub volumes: Vec<String>,
    /// What the set is for (see below) [default: client-accessible-writers].
    #[arg(long, value_enum)]
    pub context: Option<ContextArg>,
    /// Keep the set across daemon restarts, whatever the context.
    #[arg(long, conflicts_with = "volatile")]
    pub persistent: bool,
    /// Not kept across daemon restarts (cheaper: no durability work); released when this command
    /// exits unless --keep-after-exit.
    #[arg(long)]
    pub volatile: bool,
    /// Keep a volatile set after this command exits (until deleted or the daemon stops).
    #[arg(long)]
    pub keep_after_exit: bool,
    /// Once the set is taken, run COMMAND (with `sh -c`) with SHADOWCOPY_SET_ID,
    /// SHADOWCOPY_COPY_IDS, SHADOWCOPY_COPY_PATHS and SHADOWCOPY_IMAGE_PATHS (the copies' trees
    /// and raw images, one per line) and, for one volume, SHADOWCOPY_COPY_PATH and
    /// SHADOWCOPY_IMAGE_PATH in its environment. When it succeeds the writers get BackupComplete;
    /// a volatile set is released when it ends. The exit status is COMMAND's.
    #[arg(long, value_name = "COMMAND")]
    pub exec: Option<String>,
    /// Do not send BackupComplete now: send it later with `shadowcopy backup-complete SET_ID`,
    /// once the copies were read.
    #[arg(long, conflicts_with = "exec")]
    pub defer_backup_complete: bool,
    /// What the copies are for, in words (`list` shows it).
    #[arg(long, short = 'd', value_name = "TEXT")]
    pub description: Option<String>,
    /// A label for scripts (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Let the volume's retention policy delete these copies once it no longer keeps them
    /// (scheduled copies always are the policy's; copies taken by hand are not, unless this).
    #[arg(long)]
    pub cleanup: bool,
    /// Only these writers take part (repeatable) [default: writers with components on the volumes].
    #[arg(long = "writer", value_name = "NAME")]
    pub writers: Vec<String>,
    /// Leave this writer out (repeatable).
    #[arg(long = "exclude-writer", value_name = "NAME")]
    pub exclude_writers: Vec<String>,
    /// No writers: a crash-consistent set.
    #[arg(long, conflicts_with_all = ["writers", "exclude_writers"])]
    pub no_writers: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

/// `--context` values, mapped to the protocol's.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ContextArg {
    Backup,
    FileShareBackup,
    NasRollback,
    AppRollback,
    ClientAccessible,
    ClientAccessibleWriters,
}

impl From<ContextArg> for shadowcopy::protocol::Context {
    fn from(c: ContextArg) -> Self {
        use shadowcopy::protocol::Context as C;
        match c {
            ContextArg::Backup => C::Backup,
            ContextArg::FileShareBackup => C::FileShareBackup,
            ContextArg::NasRollback => C::NasRollback,
            ContextArg::AppRollback => C::AppRollback,
            ContextArg::ClientAccessible => C::ClientAccessible,
            ContextArg::ClientAccessibleWriters => C::ClientAccessibleWriters,
        }
    }
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
        /// Also attach a loop device over its `live` now and at every start of the daemon
        /// (written to its configuration file); see `volume attach`.
        #[arg(long)]
        attach: bool,
        #[command(flatten)]
        at: AttachArgs,
    },
    /// Attach a loop device over a volume's `live` now and at every start of the daemon
    /// (written to its configuration file, /etc/shadowcopy/shadowcopy.toml), optionally with
    /// the filesystem on it mounted (`mount -o loop`). Replaces the volume's attachment.
    Attach {
        name: String,
        #[command(flatten)]
        at: AttachArgs,
    },
    /// Unmount the filesystem a volume's attachment mounted, detach its loop device, and take
    /// the attachment out of the daemon's configuration file.
    Detach { name: String },
    /// List registered volumes.
    List,
    /// Unregister a volume and delete its diff area (its copies are lost).
    Remove { name: String },
}

/// Where and how an attached volume's filesystem is mounted.
#[derive(Args)]
struct AttachArgs {
    /// Mount the filesystem on the volume here (created if missing); without it only a loop
    /// device is attached.
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Its type (`mount -t`), e.g. ext4 or xfs [default: what `mount` finds].
    #[arg(long, requires = "mount")]
    fs_type: Option<String>,
    /// Its mount options (`mount -o`), e.g. `noatime,discard`.
    #[arg(long, requires = "mount", allow_hyphen_values = true)]
    fs_options: Option<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct DeleteArgs {
    /// One shadow copy.
    #[arg(value_name = "COPY")]
    id: Option<String>,
    /// Every copy of a set.
    #[arg(long, value_name = "SET_ID")]
    set: Option<String>,
    /// The oldest copy of a volume.
    #[arg(long, value_name = "VOLUME")]
    oldest: Option<String>,
    /// Every copy of a volume.
    #[arg(long, value_name = "VOLUME")]
    all: Option<String>,
}

#[derive(Subcommand)]
enum DaemonCmd {
    /// Stop shadowcopyd: it flushes every volume, unmounts and exits. Refused while any
    /// volume's `live` is in use (a loop device, a mounted filesystem, a program): the error
    /// says by what. Waits until the daemon is gone.
    Stop {
        /// Stop even though `live` is in use: the filesystems on it then fail (I/O errors).
        #[arg(long)]
        force: bool,
        /// First unmount the filesystems the configuration mounted, in reverse order, and
        /// detach their loop devices (refused, and nothing stops, if one is busy).
        #[arg(long)]
        unmount: bool,
        /// Return once the daemon accepted, without waiting for it to be gone.
        #[arg(long)]
        no_wait: bool,
    },
    /// Replace shadowcopyd's worker by a fresh start of its program file, which may be a newer
    /// version (an upgrade): the mount and the control socket stay, in-flight I/O waits and
    /// nothing fails. Waits until the new worker answers.
    Restart {
        /// Return once the daemon accepted, without waiting for the new worker.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
enum StorageCmd {
    /// Space used by each volume's diff area.
    List,
    /// Change a volume's maximum diff-area size (`10%`, `2G`, `unbounded`); shrinking deletes
    /// the oldest copies until it fits.
    Resize { volume: String, max_size: String },
}

/// Writes `shadowcopy.1` and a page per subcommand (nested ones as `shadowcopy-volume-add.1`).
fn manpages(dir: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    fn write(cmd: clap::Command, name: String, dir: &std::path::Path, written: &mut usize) -> Result<()> {
        let cmd = cmd.display_name(name.clone()).bin_name(name.replace('-', " "));
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        *written += 1;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            write(sub.clone(), format!("{name}-{}", sub.get_name()), dir, written)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    let mut cmd = Cli::command();
    cmd.build();
    write(cmd, "shadowcopy".into(), dir, &mut written)?;
    out!("wrote {written} manual pages to {}", dir.display());
    Ok(())
}

/// [`out!`]'s work.
fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // 128 + SIGPIPE, as a program killed by the signal would report.
            std::process::exit(141);
        }
        eprintln!("shadowcopy: writing to stdout failed: {e}");
        std::process::exit(1);
    }
}

/// The kind and message of a failure, as `--json` reports it: the daemon's own kind, or
/// `unavailable` when it cannot be reached, or `failed`.
fn error_json(e: &anyhow::Error) -> serde_json::Value {
    use shadowcopy::protocol::ClientError;
    let kind = match e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
        Some(ClientError::Daemon(reply)) => serde_json::to_value(reply.kind).unwrap_or_else(|_| "failed".into()),
        Some(ClientError::Connect { .. }) => "unavailable".into(),
        _ => "failed".into(),
    };
    serde_json::json!({ "error": { "kind": kind, "message": format!("{e:#}") } })
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // No colour codes in files and the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let json = cli.json || cli.output == Output::Json;
    render::set_wide(cli.output == Output::Wide);
    let r: Result<()> = match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer first: clap_complete panics on a closed stdout, `out!` does not.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "shadowcopy", &mut script);
            out!("{}", String::from_utf8_lossy(&script).trim_end());
            Ok(())
        }
        Command::Manpages { dir } => manpages(&dir),
        Command::Offline(cmd) => offline::run(cmd, json),
        cmd => online::run(cmd, cli.socket, json),
    };
    if let Err(e) = r {
        if json {
            // Scripts read one JSON document on stdout, error or not.
            out!("{}", error_json(&e));
        } else {
            eprintln!("shadowcopy: {e:#}");
        }
        std::process::exit(1);
    }
}
