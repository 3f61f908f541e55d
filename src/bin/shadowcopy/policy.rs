//! `shadowcopy policy …`, `cleanup` and `events`: a volume's schedule and retention, and what
//! the daemon did.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use shadowcopy::protocol::{default_socket_path, Answer, Client, EventView, Keep, Op, Policy};

/// Retention when `policy set` is given no `--keep-*`, `--min-count` or `--min-age`.
const DEFAULT_KEEP: Keep = Keep { hourly: 24, daily: 7, weekly: 4, monthly: 12, yearly: 0, min_count: 0, min_age_secs: 0 };

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Give a volume a schedule and retention (replacing any it had). Without --keep-*,
    /// --min-count or --min-age it keeps 24 hourly, 7 daily, 4 weekly and 12 monthly copies.
    #[command(after_help = "A period (hour, day, ISO week, month, year; UTC) keeps its first copy; \
        the newest --min-count copies and those younger than --min-age are kept too.\n\nExamples:\n  \
        shadowcopy policy set data --schedule hourly --keep-hourly 24 --keep-daily 14\n  \
        shadowcopy policy set data --schedule 15m --keep-hourly 8 --min-count 4\n  \
        shadowcopy policy set data --keep-daily 30          # retention of copies made with --cleanup only")]
    Set(SetArgs),
    /// Show the volumes' policies, with when the next scheduled copy is due.
    Show {
        /// Only this volume.
        volume: Option<String>,
    },
    /// Remove a volume's policy: no more scheduled copies or retention (the copies stay).
    Clear { volume: String },
}

#[derive(Args)]
pub(crate) struct SetArgs {
    volume: String,
    /// `hourly`, `daily`, `weekly`, or an interval such as `15m`, `6h`, `2d` (aligned to UTC).
    /// Without it: retention only.
    #[arg(long)]
    schedule: Option<String>,
    /// Hours that keep their first copy.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// Days that keep their first copy.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// ISO weeks that keep their first copy.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Months that keep their first copy.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Years that keep their first copy.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Always keep the newest N copies.
    #[arg(long, value_name = "N")]
    min_count: Option<u32>,
    /// Keep every copy younger than this (`30m`, `12h`, `2d`).
    #[arg(long, value_name = "AGE")]
    min_age: Option<String>,
}

impl SetArgs {
    fn policy(&self) -> Result<Policy> {
        let given = [self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly, self.min_count];
        let keep = if given.iter().all(Option::is_none) && self.min_age.is_none() {
            DEFAULT_KEEP
        } else {
            Keep {
                hourly: self.keep_hourly.unwrap_or(0),
                daily: self.keep_daily.unwrap_or(0),
                weekly: self.keep_weekly.unwrap_or(0),
                monthly: self.keep_monthly.unwrap_or(0),
                yearly: self.keep_yearly.unwrap_or(0),
                min_count: self.min_count.unwrap_or(0),
                min_age_secs: self
                    .min_age
                    .as_deref()
                    .map(|a| shadowcopy::protocol::parse_duration(a).map_err(|e| anyhow::anyhow!("--min-age: {e}")))
                    .transpose()?
                    .unwrap_or(0),
            }
        };
        Ok(Policy { schedule: self.schedule.clone(), keep })
    }
}

/// The operation for a `policy` command; `Show` filters the answer by volume afterwards.
pub(crate) fn op(cmd: &PolicyCmd) -> Result<Op> {
    Ok(match cmd {
        PolicyCmd::Set(a) => Op::PolicySet { volume: a.volume.clone(), policy: Some(a.policy()?) },
        PolicyCmd::Show { .. } => Op::PolicyList,
        PolicyCmd::Clear { volume } => Op::PolicySet { volume: volume.clone(), policy: None },
    })
}

/// The words for a policy's retention (`24 hourly, 7 daily`).
pub(crate) fn describe_keep(k: &Keep) -> String {
    let mut parts: Vec<String> =
        [(k.hourly, "hourly"), (k.daily, "daily"), (k.weekly, "weekly"), (k.monthly, "monthly"), (k.yearly, "yearly")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
    if k.min_count > 0 {
        parts.push(format!("the newest {}", k.min_count));
    }
    if k.min_age_secs > 0 {
        parts.push(format!("all younger than {}", age(k.min_age_secs)));
    }
    parts.join(", ")
}

fn age(secs: u64) -> String {
    match secs {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `shadowcopy events [--follow]`.
pub(crate) fn events(follow: bool, lines: usize, after: Option<u64>, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let socket = socket.unwrap_or_else(default_socket_path);
    let mut client = Client::connect(&socket)?;
    let op = Op::Events { after, limit: Some(lines), follow };
    if !follow {
        let Answer::Events(list) = client.call(op, &mut |_, _| {})? else { bail!("unexpected answer to events") };
        if json {
            out!("{}", serde_json::to_string_pretty(&serde_json::json!({ "events": list }))?);
        } else if list.is_empty() {
            out!("No events.");
        } else {
            for e in &list {
                print_event(e);
            }
        }
        return Ok(());
    }
    // One line per event: a JSON object each under --json (a stream to pipe into jq).
    client.follow(op, &mut |e| {
        if json {
            out!("{}", serde_json::to_string(&e).unwrap_or_default());
        } else {
            print_event(&e);
        }
        true
    })?;
    Ok(())
}

fn print_event(e: &EventView) {
    let kind = serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    out!("{:>6}  {}  {:<22}  {}", e.seq, crate::render::utc(e.time_unix as u64), kind, e.message);
}
