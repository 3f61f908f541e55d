//! How answers look on a terminal: tables fitted to its width (comfy-table; 100 columns when
//! stdout is not a terminal, unless `-o wide`), progress bars with rate and ETA on stderr
//! (indicatif; only on a terminal), and times in UTC.
//!
//! Never decides what is shown: the commands pass the columns.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use comfy_table::{presets, ContentArrangement, Table};

/// The width tables fit into when stdout is not a terminal.
pub(crate) const DEFAULT_WIDTH: u16 = 100;

static WIDE: AtomicBool = AtomicBool::new(false);

/// `-o wide`: every column, no fitting.
pub(crate) fn set_wide(wide: bool) {
    WIDE.store(wide, Ordering::Relaxed);
}

/// Whether `-o wide` was asked for.
pub(crate) fn wide() -> bool {
    WIDE.load(Ordering::Relaxed)
}

/// Prints rows under a header: columns separated by two spaces, fitted to the terminal (long
/// cells wrap) unless `-o wide`.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    if wide() {
        t.set_content_arrangement(ContentArrangement::Disabled);
    } else {
        t.set_content_arrangement(ContentArrangement::Dynamic);
        if !std::io::stdout().is_terminal() {
            t.set_width(DEFAULT_WIDTH);
        }
    }
    t.set_header(header.iter().copied());
    for r in rows {
        t.add_row(r.iter().map(String::as_str));
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in t.lines() {
        out!("{}", line.trim_end());
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(secs: u64) -> String {
    let name = shadowcopy::protocol::gmt_name(secs);
    // @GMT-YYYY.MM.DD-HH.MM.SS → YYYY-MM-DD HH:MM:SS UTC
    let t = &name[5..];
    format!("{}-{}-{} {}:{}:{} UTC", &t[0..4], &t[5..7], &t[8..10], &t[11..13], &t[14..16], &t[17..19])
}

/// A byte-count progress bar on stderr, with rate and ETA; nothing when stderr is not a
/// terminal or the output is JSON.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar, shown only if `visible` and stderr is a terminal.
    pub(crate) fn new(visible: bool) -> Progress {
        Progress { bar: (visible && std::io::stderr().is_terminal()).then(indicatif::ProgressBar::hidden) }
    }

    /// `done` of `total` bytes.
    pub(crate) fn update(&mut self, done: u64, total: u64) {
        let Some(bar) = &self.bar else { return };
        if bar.length() != Some(total) {
            bar.set_length(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("[{bar:30}] {percent:>3}%  {bytes} of {total_bytes}  {bytes_per_sec}  ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("#>-"),
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_position(done);
    }

    /// Removes the bar.
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
