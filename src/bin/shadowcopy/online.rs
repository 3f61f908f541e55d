//! The commands that talk to `shadowcopyd`: build a request, call the daemon, print the answer
//! as a table or as JSON.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use shadowcopy::protocol::{default_socket_path, Answer, Client, CopyView, CreateRequest, DeleteTarget, Op, WriterSelection};
use shadowcopy::size::format_size;

use crate::render::{table, utc, Progress};

use super::{Command, CreateArgs, DaemonCmd, DeleteArgs, StorageCmd, VolumeCmd, WriterCmd};

pub(crate) fn run(cmd: Command, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let names = Names::new(&socket);
    let op = match cmd {
        Command::Volume(VolumeCmd::Add { name, image, diff_area, max_size, chunk_size, read_only, attach, at }) => {
            let image = image.canonicalize().with_context(|| format!("the image {} cannot be found", image.display()))?;
            let attach = (attach || at.mount.is_some()).then(|| attach_spec(at));
            Op::VolumeAdd {
                name,
                image: image.display().to_string(),
                diff_area: diff_area.map(absolute),
                max_size,
                chunk_size,
                read_only,
                attach,
            }
        }
        Command::Volume(VolumeCmd::Attach { name, at }) => Op::VolumeAttach { name, spec: attach_spec(at) },
        Command::Volume(VolumeCmd::Detach { name }) => Op::VolumeDetach { name },
        Command::Volume(VolumeCmd::List) => Op::VolumeList,
        Command::Volume(VolumeCmd::Remove { name }) => Op::VolumeRemove { name },
        Command::Create(args) => return create(args, socket, json),
        Command::BackupComplete { set_id } => Op::BackupComplete { set_id: names.set(&set_id)? },
        Command::Writers => Op::Writers,
        Command::Writer(WriterCmd::Run { name, exec, volumes }) => return super::hook::run(socket, name, exec, volumes),
        Command::List { volume } => Op::List { volume },
        Command::Delete(DeleteArgs { id, set, oldest, all }) => Op::Delete {
            target: match (id, set, oldest, all) {
                (Some(id), ..) => DeleteTarget::Id(names.copy(&id)?),
                (_, Some(s), ..) => DeleteTarget::Set(names.set(&s)?),
                (_, _, Some(v), _) => DeleteTarget::Oldest(v),
                (_, _, _, Some(v)) => DeleteTarget::All(v),
                _ => bail!("say which copies: an ID, --set, --oldest or --all"),
            },
        },
        Command::ShadowStorage(StorageCmd::List) => Op::StorageList,
        Command::ShadowStorage(StorageCmd::Resize { volume, max_size }) => Op::StorageResize { volume, max_size },
        Command::Export { id, file } => Op::Export { id: names.copy(&id)?, path: absolute(file) },
        Command::Revert { id } => Op::Revert { id: names.copy(&id)? },
        Command::Diff { id, to } => Op::Diff { id: names.copy(&id)?, to: to.map(|t| names.copy(&t)).transpose()? },
        Command::Expose { id, dir, device, force } => Op::Expose { id: names.copy(&id)?, at: dir.map(absolute), device, force },
        Command::Policy(cmd) => {
            let only = match &cmd {
                super::policy::PolicyCmd::Show { volume } => volume.clone(),
                _ => None,
            };
            return policy_command(super::policy::op(&cmd)?, only, socket, json);
        }
        Command::Cleanup { volume, dry_run } => Op::Cleanup { volume, dry_run },
        Command::Events { follow, lines, after } => return super::policy::events(follow, lines, after, socket, json),
        Command::Unexpose { path } => Op::Unexpose { path: absolute(path) },
        Command::Status => Op::Status,
        Command::Daemon(DaemonCmd::Stop { force, unmount, no_wait }) => return daemon_stop(force, unmount, no_wait, socket, json),
        Command::Daemon(DaemonCmd::Restart { no_wait }) => return daemon_restart(no_wait, socket, json),
        Command::Adopt(args) => return super::adopt::adopt(args, socket, json),
        Command::Changes { from, to } => return super::changes::changes(&from, to.as_deref(), socket, json),
        Command::SambaConfig { target, share } => return super::samba::samba_config(&target, share.as_deref(), socket),
        Command::Versions { path, all } => return super::versions::versions(&path, all, socket, json),
        Command::Restore { path, from, to, overwrite } => {
            return super::versions::restore(&path, &from, to.as_deref(), overwrite, socket, json)
        }
        Command::Offline(_) | Command::Completions { .. } | Command::Manpages { .. } => unreachable!("handled by main"),
    };
    let socket = socket.unwrap_or_else(default_socket_path);
    let mut client = Client::connect(&socket)?;
    let mut progress = Progress::new(!json);
    let answer = client.call(op, &mut |done, total| progress.update(done, total));
    progress.finish();
    let answer = answer?;
    show(&answer, json, &client.take_notices())
}

/// `policy set|show|clear`: the answer, only the named volume's for `show VOLUME`.
fn policy_command(op: Op, only: Option<String>, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let socket = socket.unwrap_or_else(default_socket_path);
    let mut client = Client::connect(&socket)?;
    let cleared = matches!(&op, Op::PolicySet { policy: None, .. });
    let mut answer = client.call(op, &mut |_, _| {})?;
    if let (Some(v), Answer::Policies(list)) = (&only, &mut answer) {
        list.retain(|p| &p.volume == v);
        if list.is_empty() && !json {
            out!("Volume `{v}` has no policy. Give it one with `shadowcopy policy set {v} --schedule hourly`.");
            return Ok(());
        }
    }
    if cleared && !json {
        out!("policy removed: no more scheduled copies or retention; the copies stay");
        return Ok(());
    }
    show(&answer, json, &client.take_notices())
}

/// `shadowcopy create`: takes the set, prints it, and with `--exec` runs the command on it, tells
/// the writers BackupComplete if it succeeded, and lets a volatile set go when this process ends
/// (the daemon releases it with the connection).
fn create(args: CreateArgs, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let context = args.context.map(Into::into).unwrap_or_default();
    let persistent = if args.persistent {
        Some(true)
    } else if args.volatile {
        Some(false)
    } else {
        None
    };
    let req = CreateRequest {
        volumes: args.volumes,
        context,
        persistent,
        writers: WriterSelection { none: args.no_writers, only: args.writers, exclude: args.exclude_writers },
        keep_after_disconnect: args.keep_after_exit,
        defer_backup_complete: args.defer_backup_complete || args.exec.is_some(),
        description: args.description,
        labels: args.labels.into_iter().collect(),
        cleanup: args.cleanup,
    };
    if !req.is_persistent() && args.exec.is_none() && !args.keep_after_exit {
        bail!(
            "a volatile set (context `{}`) is released when this command exits: add --exec COMMAND to use it meanwhile, \
             --keep-after-exit to keep it until the daemon stops, or --persistent",
            context.as_str()
        );
    }
    let socket = socket.unwrap_or_else(default_socket_path);
    let mut client = Client::connect(&socket)?;
    // What the daemon is waiting for (a writer can take seconds per event), on one line.
    let live = !json && std::io::stderr().is_terminal();
    let mut shown = false;
    let answer = client.call_with_stages(Op::Create(req), &mut |_, _| {}, &mut |stage| {
        if live {
            eprint!("\r\x1b[K{stage}");
            shown = true;
        }
    });
    if shown {
        eprint!("\r\x1b[K");
    }
    let answer = answer?;
    show(&answer, json, &client.take_notices())?;
    let (Some(command), Answer::Set(set)) = (args.exec, &answer) else { return Ok(()) };
    let mount = match client.call(Op::Status, &mut |_, _| {})? {
        Answer::Status(s) => PathBuf::from(s.mount),
        other => bail!("unexpected answer to status: {other:?}"),
    };
    let paths: Vec<String> = set.copies.iter().map(|c| mount.join(&c.volume).join(&c.exposed_name).display().to_string()).collect();
    let ids: Vec<String> = set.copies.iter().map(|c| c.id.to_string()).collect();
    let images: Vec<String> = set
        .copies
        .iter()
        .map(|c| mount.join(&c.volume).join(".images").join(format!("{}.img", c.exposed_name)).display().to_string())
        .collect();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&command)
        .env("SHADOWCOPY_SET_ID", set.set_id.to_string())
        .env("SHADOWCOPY_COPY_IDS", ids.join(" "))
        .env("SHADOWCOPY_COPY_PATHS", paths.join("\n"))
        .env("SHADOWCOPY_IMAGE_PATHS", images.join("\n"));
    if let ([path], [image]) = (paths.as_slice(), images.as_slice()) {
        cmd.env("SHADOWCOPY_COPY_PATH", path).env("SHADOWCOPY_IMAGE_PATH", image);
    }
    let status = cmd.status().with_context(|| format!("running `{command}`"))?;
    if !status.success() {
        eprintln!("shadowcopy: `{command}` failed ({status}); the writers were not told BackupComplete");
        std::process::exit(status.code().unwrap_or(1).max(1));
    }
    match client.call(Op::BackupComplete { set_id: set.set_id }, &mut |_, _| {})? {
        Answer::Done(m) if !json => eprintln!("{m}"),
        _ => {}
    }
    Ok(())
}

/// A path as the daemon needs it: absolute (it runs elsewhere, with another working directory).
fn absolute(p: PathBuf) -> String {
    std::path::absolute(&p).unwrap_or(p).display().to_string()
}

/// Turns what people type for a copy or a set into its id, asking the daemon for the list of
/// copies once, only when a name is not a whole id.
pub(crate) struct Names<'a> {
    socket: &'a Option<PathBuf>,
    copies: std::cell::OnceCell<Vec<CopyView>>,
}

impl<'a> Names<'a> {
    /// Names resolved through the daemon at `socket`.
    pub(crate) fn new(socket: &'a Option<PathBuf>) -> Self {
        Names { socket, copies: std::cell::OnceCell::new() }
    }

    fn all(&self) -> Result<&[CopyView]> {
        if let Some(c) = self.copies.get() {
            return Ok(c);
        }
        let socket = self.socket.clone().unwrap_or_else(default_socket_path);
        let Answer::Copies(copies) = Client::connect(&socket)?.call(Op::List { volume: None }, &mut |_, _| {})? else {
            bail!("unexpected answer to list")
        };
        Ok(self.copies.get_or_init(|| copies))
    }

    /// A copy: its id, a unique id prefix (4 characters or more), `@GMT-…` (one volume only)
    /// or `VOLUME/@GMT-…`.
    pub(crate) fn copy(&self, name: &str) -> Result<uuid::Uuid> {
        if let Ok(id) = name.parse() {
            return Ok(id);
        }
        let copies = self.all()?;
        let found: Vec<&CopyView> = match name.split_once('/') {
            Some((volume, gmt)) => copies.iter().filter(|c| c.volume == volume && c.exposed_name == gmt).collect(),
            None if name.starts_with("@GMT-") => copies.iter().filter(|c| c.exposed_name == name).collect(),
            None => copies.iter().filter(|c| name.len() >= 4 && c.id.to_string().starts_with(&name.to_lowercase())).collect(),
        };
        match found.as_slice() {
            [one] => Ok(one.id),
            [] => bail!("no shadow copy is named `{name}` (see `shadowcopy list`; a prefix needs 4 characters or more)"),
            many => bail!(
                "`{name}` names {} copies: {}; say which, e.g. with VOLUME/@GMT-… or a longer id",
                many.len(),
                many.iter().map(|c| format!("{}/{} ({})", c.volume, c.exposed_name, c.id)).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// A set: its id or a unique prefix of it (4 characters or more).
    fn set(&self, name: &str) -> Result<uuid::Uuid> {
        if let Ok(id) = name.parse() {
            return Ok(id);
        }
        let mut sets: Vec<uuid::Uuid> =
            self.all()?.iter().map(|c| c.set_id).filter(|s| name.len() >= 4 && s.to_string().starts_with(&name.to_lowercase())).collect();
        sets.sort();
        sets.dedup();
        match sets.as_slice() {
            [one] => Ok(*one),
            [] => bail!("no shadow copy set is named `{name}` (see `shadowcopy list`; a prefix needs 4 characters or more)"),
            many => bail!(
                "`{name}` names {} sets: {}; give more of the id",
                many.len(),
                many.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

fn attach_spec(at: super::AttachArgs) -> shadowcopy::protocol::AttachSpec {
    shadowcopy::protocol::AttachSpec { mount: at.mount.map(absolute), fs_type: at.fs_type, fs_options: at.fs_options }
}

/// Asks the daemon to stop, then (unless `no_wait`) waits until its socket is gone.
fn daemon_stop(force: bool, unmount: bool, no_wait: bool, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let socket = socket.unwrap_or_else(default_socket_path);
    let answer = Client::connect(&socket)?.call(Op::DaemonStop { force, unmount }, &mut |_, _| {})?;
    if !no_wait {
        const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);
        let started = std::time::Instant::now();
        while socket.exists() {
            if started.elapsed() > PATIENCE {
                bail!("shadowcopyd accepted to stop but its socket {} is still there after {PATIENCE:?}; see its log", socket.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    show(&answer, json, &[])
}

/// The daemon's status, or why it cannot be had.
fn status_of(socket: &std::path::Path) -> Result<shadowcopy::protocol::StatusInfo> {
    match Client::connect(socket)?.call(Op::Status, &mut |_, _| {})? {
        Answer::Status(s) => Ok(s),
        other => bail!("the daemon answered `status` with {other:?}"),
    }
}

/// Asks the daemon to replace its worker, then (unless `no_wait`) waits until a worker of a
/// later generation answers.
fn daemon_restart(no_wait: bool, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let socket = socket.unwrap_or_else(default_socket_path);
    let before = status_of(&socket)?.worker.map_or(0, |w| w.generation);
    let answer = Client::connect(&socket)?.call(Op::DaemonRestart, &mut |_, _| {})?;
    if !no_wait {
        const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);
        let started = std::time::Instant::now();
        loop {
            // Between workers the socket queues connections: a call may wait or fail once.
            if let Ok(s) = status_of(&socket) {
                if s.worker.as_ref().is_some_and(|w| w.generation > before) {
                    break;
                }
            }
            if started.elapsed() > PATIENCE {
                bail!("shadowcopyd accepted to restart but no new worker answered within {PATIENCE:?}; see its log");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    show(&answer, json, &[])
}

/// Prints an answer as JSON or as a table; `notices` (copies deleted for space) go to stderr,
/// or into the JSON object as `notices`.
fn show(a: &Answer, json: bool, notices: &[String]) -> Result<()> {
    if json {
        let mut v = answer_json(a)?;
        if !notices.is_empty() {
            v["notices"] = serde_json::json!(notices);
        }
        out!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for n in notices {
            eprintln!("shadowcopy: note: {n}");
        }
        print_table(a);
    }
    Ok(())
}

/// Every answer as one JSON object with stable field names (`docs/protocol.md`, "The CLI
/// under --json"): lists are wrapped in an object named for what they hold.
fn answer_json(a: &Answer) -> Result<serde_json::Value> {
    use serde_json::json;
    Ok(match a {
        Answer::Status(s) => serde_json::to_value(s)?,
        Answer::Volumes(v) => json!({ "volumes": v }),
        Answer::Volume(v) => serde_json::to_value(v)?,
        Answer::Copies(c) => json!({ "copies": c }),
        Answer::Set(s) => serde_json::to_value(s)?,
        Answer::Storage(s) => json!({ "storage": s }),
        Answer::Ranges(r) => json!({ "ranges": r, "total_bytes": r.iter().map(|x| x.len).sum::<u64>() }),
        Answer::Writers(w) => json!({ "writers": w }),
        Answer::Policies(p) => json!({ "policies": p }),
        Answer::Cleanup(c) => serde_json::to_value(c)?,
        Answer::Events(e) => json!({ "events": e }),
        Answer::Inodes(i) => json!({ "inodes": i }),
        Answer::Changes(c) => json!({ "changes": c }),
        Answer::Done(m) => json!({ "message": m }),
    })
}

/// A volume's configured attachment and what is there now, in a few words.
fn attached(a: Option<&shadowcopy::protocol::AttachmentInfo>) -> String {
    let Some(a) = a else { return "no".into() };
    let now = match (&a.mounted_at, a.devices.first()) {
        (Some(at), _) => format!("mounted at {at}"),
        (None, Some(d)) if a.spec.mount.is_none() => d.clone(),
        (None, Some(d)) => format!("{d}, not mounted at {}", a.spec.mount.as_deref().unwrap_or_default()),
        (None, None) => "not attached now".into(),
    };
    match &a.problem {
        Some(p) => format!("{now} (failed: {p})"),
        None => now,
    }
}

fn created(c: &CopyView) -> String {
    utc(c.created_unix as u64)
}

fn state(c: &CopyView) -> String {
    match (&c.failed, &c.stale, &c.tree_damage) {
        (Some(r), _, _) => format!("FAILED: {r}"),
        (None, Some(_), _) => "stale: the volume was written while shadowcopy was not serving it".into(),
        (None, None, Some(d)) => format!("files damaged: {d}"),
        (None, None, None) => "ok".into(),
    }
}

/// The copies: the columns people read by default (fitted to 100 columns, ids shortened to the
/// 8 characters that name them), every column with `-o wide`.
fn print_copies(copies: &[CopyView]) {
    if copies.is_empty() {
        out!("No shadow copies.");
        return;
    }
    let described = |c: &CopyView| {
        let mut d = c.description.clone().unwrap_or_default();
        if c.cleanup {
            d = if d.is_empty() { "(retention)".into() } else { format!("{d} (retention)") };
        }
        if d.is_empty() {
            "-".into()
        } else {
            d
        }
    };
    if !crate::render::wide() {
        let rows: Vec<Vec<String>> = copies
            .iter()
            .map(|c| {
                let mut name = c.exposed_name.clone();
                if !c.exposed_at.is_empty() {
                    name += " (exposed)";
                }
                vec![
                    c.id.to_string()[..8].to_string(),
                    c.volume.clone(),
                    name,
                    c.context.clone().unwrap_or_else(|| "-".into()),
                    described(c),
                    state(c),
                ]
            })
            .collect();
        // The name is the creation time (to the second; `-o wide` has the exact time).
        table(&["ID", "VOLUME", "NAME (CREATED, UTC)", "CONTEXT", "DESCRIPTION", "STATE"], &rows);
        return;
    }
    let rows: Vec<Vec<String>> = copies
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.set_id.to_string(),
                c.volume.clone(),
                created(c),
                if c.exposed_at.is_empty() {
                    c.exposed_name.clone()
                } else {
                    format!("{} (also {})", c.exposed_name, c.exposed_at.join(", "))
                },
                c.context.clone().unwrap_or_else(|| "-".into()),
                format!("{} ({:#010x})", c.attributes.join(","), c.attribute_flags),
                c.provider.clone(),
                format_size(c.diff_area_used),
                described(c),
                if c.labels.is_empty() {
                    "-".into()
                } else {
                    c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
                },
                state(c),
            ]
        })
        .collect();
    table(
        &[
            "SHADOW COPY ID",
            "SET ID",
            "VOLUME",
            "CREATED",
            "EXPOSED AS",
            "CONTEXT",
            "ATTRIBUTES",
            "PROVIDER",
            "DIFF AREA USED",
            "DESCRIPTION",
            "LABELS",
            "STATE",
        ],
        &rows,
    );
}

fn print_table(a: &Answer) {
    match a {
        Answer::Status(s) => {
            out!("shadowcopyd {} (protocol {})", s.version, s.protocol);
            out!("mount:     {}", s.mount);
            out!("state dir: {}", s.state_dir);
            out!("volumes:   {}", s.volumes);
            out!("pid:       {} (thaw keeper: {})", s.pid, s.thaw_keeper.map_or("not running".to_string(), |p| p.to_string()));
            out!("started:   {}", utc(s.started_unix as u64));
            if let Some(w) = &s.worker {
                out!(
                    "worker:    {} (pid {}, generation {}, since {}: {})",
                    if w.generation == 1 { "first" } else { "replaced" },
                    w.pid,
                    w.generation,
                    utc(w.started_unix as u64),
                    w.reason
                );
                out!(
                    "on crash:  {}",
                    if w.crash_route == "resend" {
                        "the kernel resends what the dead worker had read (FUSE_NOTIFY_RESEND): I/O waits, nothing fails"
                    } else {
                        "the requests the dead worker was answering fail (no FUSE_NOTIFY_RESEND on this kernel); others wait"
                    }
                );
            }
            for u in &s.live_in_use {
                out!("in use:    {u}");
            }
            for i in &s.indexes {
                out!(
                    "index:     {}: {} chunks ({} checkpointed, {} on disk), {} in memory, cache {} ({}), opened in {}",
                    i.volume,
                    i.preserved_chunks,
                    i.checkpointed_chunks,
                    format_size(i.disk_bytes),
                    format_size(i.memory_bytes),
                    format_size(i.cache_bytes),
                    i.cache_hit_rate.map_or("no lookup yet".to_string(), |r| format!("hit rate {:.1}%", r * 100.0)),
                    i.open_seconds.map_or("-".to_string(), |s| format!("{s:.2} s")),
                );
            }
        }
        Answer::Volumes(vs) => {
            if vs.is_empty() {
                out!("No volumes. Add one with `shadowcopy volume add NAME IMAGE`.");
                return;
            }
            let rows: Vec<Vec<String>> = vs
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        format_size(v.size),
                        if v.read_only { "read-only" } else { "read-write" }.into(),
                        v.provider.clone(),
                        v.copies.to_string(),
                        v.image.clone(),
                        v.live.clone(),
                        attached(v.attachment.as_ref()),
                        v.failure.clone().unwrap_or_else(|| "ok".into()),
                    ]
                })
                .collect();
            table(&["VOLUME", "SIZE", "ACCESS", "PROVIDER", "COPIES", "IMAGE", "LIVE FILE", "ATTACHED AT START", "STATE"], &rows);
        }
        Answer::Volume(v) if v.read_only => {
            out!(
                "volume `{}` added read-only: {} ({}), {} shadow copies found ({})",
                v.name,
                v.image,
                format_size(v.size),
                v.copies,
                v.provider
            );
            out!("read it through {}", v.live);
        }
        Answer::Volume(v) => {
            out!("volume `{}` added: {} ({}), diff area {}", v.name, v.image, format_size(v.size), v.diff_area);
            out!("write to it through {}", v.live);
        }
        Answer::Copies(c) => print_copies(c),
        Answer::Set(s) => {
            out!("shadow copy set {} created", s.set_id);
            if s.frozen.is_empty() {
                out!("no mounted filesystem on these volumes was found to freeze (crash-consistent copy)");
            } else {
                out!("froze {} for {:.1} ms", s.frozen.join(", "), s.frozen_us as f64 / 1000.0);
            }
            out!("writes held {} µs", s.hold_us);
            if s.writers.is_empty() {
                out!("no writers took part");
            } else {
                out!("writers: {}", s.writers.join(", "));
            }
            if !s.skipped_writers.is_empty() {
                out!("left out: {}", s.skipped_writers.join(", "));
            }
            print_copies(&s.copies);
        }
        Answer::Storage(s) => {
            let rows: Vec<Vec<String>> = s
                .iter()
                .map(|x| {
                    vec![
                        x.volume.clone(),
                        format_size(x.used_bytes),
                        format_size(x.allocated_bytes),
                        x.max_bytes.map_or("unbounded".into(), format_size),
                        format_size(x.chunk_size.into()),
                        x.copies.to_string(),
                        x.diff_area.clone(),
                    ]
                })
                .collect();
            table(&["VOLUME", "USED", "ALLOCATED", "MAXIMUM", "CHUNK", "COPIES", "DIFF AREA"], &rows);
        }
        Answer::Ranges(r) => {
            let rows: Vec<Vec<String>> = r.iter().map(|x| vec![x.offset.to_string(), x.len.to_string()]).collect();
            table(&["OFFSET", "LENGTH"], &rows);
            out!("{} ranges, {}", r.len(), format_size(r.iter().map(|x| x.len).sum()));
        }
        Answer::Writers(ws) => {
            if ws.is_empty() {
                out!("No writers. Start one with `shadowcopy writer run --name NAME --exec PATH --volume VOLUME`.");
                return;
            }
            let rows: Vec<Vec<String>> = ws
                .iter()
                .map(|w| {
                    let state = serde_json::to_value(w.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
                    vec![
                        w.name.clone(),
                        state,
                        w.last_error.clone().unwrap_or_else(|| "-".into()),
                        w.components.iter().map(|c| format!("{} ({})", c.name, c.volumes.join(","))).collect::<Vec<_>>().join("; "),
                        w.class_id.to_string(),
                        w.instance_id.to_string(),
                    ]
                })
                .collect();
            table(&["WRITER", "STATE", "LAST ERROR", "COMPONENTS (VOLUMES)", "CLASS ID", "INSTANCE ID"], &rows);
        }
        Answer::Policies(ps) => {
            if ps.is_empty() {
                out!("No policies. Give a volume one with `shadowcopy policy set VOLUME --schedule hourly`.");
                return;
            }
            let rows: Vec<Vec<String>> = ps
                .iter()
                .map(|p| {
                    vec![
                        p.volume.clone(),
                        p.policy.schedule.clone().unwrap_or_else(|| "-".into()),
                        crate::policy::describe_keep(&p.policy.keep),
                        p.next_copy_unix.map_or("-".into(), utc),
                        p.owned_copies.to_string(),
                    ]
                })
                .collect();
            table(&["VOLUME", "SCHEDULE", "KEEPS", "NEXT COPY", "COPIES OWNED"], &rows);
        }
        Answer::Cleanup(c) => {
            let verb = if c.dry_run { "would delete" } else { "deleted" };
            out!(
                "volume `{}`: {verb} {} copies; keeps {} it owns{}",
                c.volume,
                c.deleted.len(),
                c.kept,
                match c.kept_exposed {
                    0 => String::new(),
                    n => format!(", and {n} it would delete but that are exposed"),
                }
            );
            if !c.deleted.is_empty() {
                print_copies(&c.deleted);
            }
        }
        Answer::Events(_) => out!("(events are printed by `shadowcopy events`)"),
        Answer::Changes(_) => out!("(changes are printed by `shadowcopy changes`)"),
        Answer::Inodes(i) => match i {
            Some(i) => out!("{} inodes changed", i.len()),
            None => out!("the changed inodes cannot be told for these copies"),
        },
        Answer::Done(m) => out!("{m}"),
    }
}
