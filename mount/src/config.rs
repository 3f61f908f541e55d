//! The configuration file (`/etc/shadowcopy/shadowcopy.toml` by default): the daemon's settings
//! and, per volume, what to attach at start (a loop device over `live`, a filesystem mounted
//! from it, exposures to restore).
//!
//! Reading never fails as a whole: each problem is reported as `file:line: what to change` and
//! what it concerns is left out (a bad setting keeps its default, a bad volume entry attaches
//! nothing), so one mistake never keeps the other volumes from coming up. Writing (for `volume
//! add --attach`, `volume attach`, `volume detach`) keeps the admin's comments and layout and
//! replaces the file atomically.
//!
//! Never attaches or mounts anything ([`crate::attach`] does) and never registers volumes
//! ([`crate::state`] keeps those).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shadowcopy::protocol::AttachSpec;

/// The default path for root.
pub const SYSTEM_PATH: &str = "/etc/shadowcopy/shadowcopy.toml";

/// `[daemon]`: the daemon's settings. Flags on its command line win over these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--mount`.
    pub mount: Option<PathBuf>,
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--allow-other`.
    pub allow_other: Option<bool>,
    /// `--cache-size` (`64M`).
    pub cache_size: Option<String>,
    /// `--index-cache` (`64M`).
    pub index_cache: Option<String>,
    /// `--admin-group`.
    pub admin_group: Option<String>,
    /// `--socket-group`.
    pub socket_group: Option<String>,
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--readahead-kb`.
    pub readahead_kb: Option<u32>,
    /// `--stop-when-unused`.
    pub stop_when_unused: Option<bool>,
    /// `--diff-area-warn`.
    pub diff_area_warn: Option<u8>,
    /// On a stop (SIGTERM, `daemon stop`), first unmount what the configuration mounted, in
    /// reverse order (as `daemon stop --unmount` does).
    pub unmount_at_stop: Option<bool>,
}

/// One `[[volume]]`: what to attach for a registered volume at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeEntry {
    /// The registered volume's name.
    pub name: String,
    /// Where to mount its filesystem; without it only a loop device is attached.
    pub mount: Option<String>,
    /// `mount -t`.
    pub fs_type: Option<String>,
    /// `mount -o`.
    pub fs_options: Option<String>,
    /// Copies to expose once it is attached.
    #[serde(default)]
    pub expose: Vec<ExposeEntry>,
    /// The line of its `[[volume]]` header (for messages).
    #[serde(skip)]
    pub line: usize,
}

impl VolumeEntry {
    /// What to attach.
    pub fn spec(&self) -> AttachSpec {
        AttachSpec { mount: self.mount.clone(), fs_type: self.fs_type.clone(), fs_options: self.fs_options.clone() }
    }
}

/// One `[[volume.expose]]`: a copy exposed at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeEntry {
    /// `newest`, an exposed name (`@GMT-…`) or a copy id.
    pub copy: String,
    /// An existing directory to bind-mount it on.
    pub at: Option<PathBuf>,
    /// Attach its image to a read-only loop device instead.
    #[serde(default)]
    pub device: bool,
}

/// The configuration as read, with what was wrong in it.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// Whether the file exists (a missing file is an empty configuration, not an error).
    pub found: bool,
    /// `[daemon]`, without the settings that were wrong.
    pub daemon: DaemonSettings,
    /// `[[volume]]` entries in file order, without those that were wrong.
    pub volumes: Vec<VolumeEntry>,
    /// `file:line: what to change`, one per problem.
    pub errors: Vec<String>,
}

/// What the two sections look like on their own, for errors with their real lines.
#[derive(Deserialize)]
struct DaemonSection {
    daemon: DaemonSettings,
}

#[derive(Deserialize)]
struct VolumeSection {
    volume: Vec<VolumeEntry>,
}

/// Where each section starts: the byte offset of its header.
#[derive(Deserialize)]
struct Headers {
    daemon: Option<toml::Spanned<toml::Value>>,
    #[serde(default)]
    volume: Vec<toml::Spanned<toml::Value>>,
}

impl Config {
    /// Reads `path`; never fails (see the module's doc).
    pub fn load(path: &Path) -> Config {
        let mut config = Config { path: path.to_path_buf(), ..Config::default() };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                config.found = true;
                config.parse(&text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => config.errors.push(format!("{}: cannot be read: {e}; nothing in it was used", path.display())),
        }
        config
    }

    /// Parses `text` as the content of `self.path`.
    fn parse(&mut self, text: &str) {
        let file = self.path.display().to_string();
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                let at = e.span().map_or(String::new(), |s| format!(":{}", line_of(text, s.start)));
                self.errors.push(format!("{file}{at}: {}; nothing in the file was used", e.message().trim()));
                return;
            }
        };
        for key in table.keys().filter(|k| !matches!(k.as_str(), "daemon" | "volume")) {
            let line = text.lines().position(|l| l.trim_start().trim_start_matches('[').starts_with(key.as_str())).map_or(1, |i| i + 1);
            self.errors.push(format!("{file}:{line}: unknown section `{key}` (there are [daemon] and [[volume]]); it was ignored"));
        }
        let headers: Headers = match toml::from_str(text) {
            Ok(h) => h,
            Err(e) => {
                self.errors
                    .push(format!("{file}: {}: use [daemon] and [[volume]] tables; nothing in the file was used", e.message().trim()));
                return;
            }
        };
        let mut starts: Vec<usize> = headers.volume.iter().map(|v| v.span().start).collect();
        starts.extend(headers.daemon.as_ref().map(|d| d.span().start));
        starts.sort_unstable();
        let section = |start: usize| -> &str {
            let end = starts.iter().copied().find(|&s| s > start).unwrap_or(text.len());
            // A span that does not start a `[` header (dotted keys at the top) is read whole.
            if text[start..].starts_with('[') {
                &text[start..end]
            } else {
                text
            }
        };
        if let Some(d) = &headers.daemon {
            self.parse_daemon(&file, text, d.span().start, section(d.span().start), &table);
        }
        let mut names = BTreeSet::new();
        for v in &headers.volume {
            let start = v.span().start;
            let header_line = line_of(text, start);
            match toml::from_str::<VolumeSection>(section(start)) {
                Ok(s) => {
                    for mut entry in s.volume.into_iter().take(1) {
                        entry.line = header_line;
                        match check_volume(&entry) {
                            Err(why) => {
                                self.errors.push(format!("{file}:{header_line}: volume `{}`: {why}; it is not attached", entry.name))
                            }
                            Ok(()) if !names.insert(entry.name.clone()) => self.errors.push(format!(
                                "{file}:{header_line}: volume `{}` has a second [[volume]] entry; keep one (this one is ignored)",
                                entry.name
                            )),
                            Ok(()) => self.volumes.push(entry),
                        }
                    }
                }
                Err(e) => {
                    let line = e.span().map_or(header_line, |s| line_of(text, start + s.start));
                    self.errors.push(format!("{file}:{line}: {}; this [[volume]] is not attached", e.message().trim()));
                }
            }
        }
    }

    /// `[daemon]` whole, or else key by key: a bad setting keeps its default, the rest apply.
    fn parse_daemon(&mut self, file: &str, text: &str, start: usize, section: &str, table: &toml::Table) {
        match toml::from_str::<DaemonSection>(section) {
            Ok(s) => {
                let mut daemon = s.daemon;
                // Each value that parses but cannot work is reported and dropped, one by one.
                while let Err((key, why)) = check_daemon(&daemon) {
                    let line = key_line(text, start, section, &key);
                    self.errors.push(format!("{file}:{line}: [daemon] {key}: {why}; its default is used"));
                    clear_key(&mut daemon, &key);
                }
                self.daemon = daemon;
            }
            Err(e) => {
                let line = e.span().map_or(line_of(text, start), |s| line_of(text, start + s.start));
                let mut good = DaemonSettings::default();
                let Some(keys) = table.get("daemon").and_then(|d| d.as_table()) else {
                    self.errors.push(format!("{file}:{line}: {}", e.message().trim()));
                    return;
                };
                for (key, value) in keys {
                    let mut one = toml::Table::new();
                    one.insert(key.clone(), value.clone());
                    let line = key_line(text, start, section, key);
                    match DaemonSettings::deserialize(toml::Value::Table(one)) {
                        Ok(s) => match check_daemon(&s) {
                            Ok(()) => merge(&mut good, s),
                            Err((_, why)) => self.errors.push(format!("{file}:{line}: [daemon] {key}: {why}; its default is used")),
                        },
                        Err(e) => self.errors.push(format!("{file}:{line}: [daemon] {key}: {}; its default is used", e.message().trim())),
                    }
                }
                self.daemon = good;
            }
        }
    }
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of `key = …` in the section starting at `start`, else the section's header line.
fn key_line(text: &str, start: usize, section: &str, key: &str) -> usize {
    let mut offset = 0;
    for l in section.split_inclusive('\n') {
        let t = l.trim_start();
        if t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return line_of(text, start + offset);
        }
        offset += l.len();
    }
    line_of(text, start)
}

fn check_daemon(d: &DaemonSettings) -> Result<(), (String, String)> {
    let bad = |key: &str, why: String| Err((key.to_string(), why));
    for (key, value) in [("cache_size", &d.cache_size), ("index_cache", &d.index_cache)] {
        if let Some(s) = value {
            if let Err(e) = shadowcopy::size::parse_size(s) {
                return bad(key, format!("{e} (write e.g. \"64M\")"));
            }
        }
    }
    if d.threads == Some(0) {
        return bad("threads", "must be at least 1".into());
    }
    if d.diff_area_warn.is_some_and(|p| !(1..=100).contains(&p)) {
        return bad("diff_area_warn", "is a percentage from 1 to 100".into());
    }
    for (key, p) in [("state_dir", &d.state_dir), ("mount", &d.mount), ("socket", &d.socket)] {
        if p.as_ref().is_some_and(|p| !p.is_absolute()) {
            return bad(key, "must be an absolute path".into());
        }
    }
    Ok(())
}

/// Drops the setting `key` (one that [`check_daemon`] can name).
fn clear_key(d: &mut DaemonSettings, key: &str) {
    match key {
        "cache_size" => d.cache_size = None,
        "index_cache" => d.index_cache = None,
        "threads" => d.threads = None,
        "diff_area_warn" => d.diff_area_warn = None,
        "state_dir" => d.state_dir = None,
        "mount" => d.mount = None,
        "socket" => d.socket = None,
        other => unreachable!("check_daemon named `{other}`, which clear_key does not know"),
    }
}

/// Takes every setting `from` has.
fn merge(into: &mut DaemonSettings, from: DaemonSettings) {
    macro_rules! take {
        ($($f:ident),*) => { $( if from.$f.is_some() { into.$f = from.$f; } )* };
    }
    take!(
        state_dir,
        mount,
        socket,
        allow_other,
        cache_size,
        index_cache,
        admin_group,
        socket_group,
        threads,
        readahead_kb,
        stop_when_unused,
        diff_area_warn,
        unmount_at_stop
    );
}

fn check_volume(v: &VolumeEntry) -> Result<(), String> {
    crate::service::check_volume_name(&v.name).map_err(|e| e.to_string())?;
    check_spec(&v.spec())?;
    for e in &v.expose {
        match (&e.at, e.device) {
            (Some(_), true) | (None, false) => {
                return Err(format!("an expose of `{}` needs either `at = \"/dir\"` or `device = true`", e.copy))
            }
            (Some(at), false) if !at.is_absolute() => return Err(format!("expose at {}: must be an absolute path", at.display())),
            _ => {}
        }
    }
    Ok(())
}

/// What an attachment must look like, wherever it comes from.
pub fn check_spec(spec: &AttachSpec) -> Result<(), String> {
    if let Some(m) = &spec.mount {
        if !Path::new(m).is_absolute() {
            return Err(format!("mount = \"{m}\": must be an absolute path"));
        }
    }
    if spec.mount.is_none() && (spec.fs_type.is_some() || spec.fs_options.is_some()) {
        return Err("fs_type and fs_options need a mount point (`mount = \"/srv/data\"`)".into());
    }
    for (key, v) in [("fs_type", &spec.fs_type), ("fs_options", &spec.fs_options)] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.contains(char::is_whitespace)) {
            return Err(format!("{key} must be one word without spaces (options are separated by commas)"));
        }
    }
    if spec.fs_options.as_ref().is_some_and(|o| o.split(',').any(|o| o == "loop" || o.starts_with("loop="))) {
        return Err("fs_options must not name `loop`: the daemon attaches the loop device itself".into());
    }
    Ok(())
}

/// Problems writing the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigWriteError {
    /// It does not parse: the admin must fix it first.
    #[error("{path}: {message}; fix it first, nothing was changed")]
    Unparsable {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file system refused.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Sets the attachment of volume `name` in the file at `path` (created if missing), keeping
/// everything else in it as it was (comments included); its exposures stay.
pub fn set_attachment(path: &Path, name: &str, spec: &AttachSpec) -> Result<(), ConfigWriteError> {
    edit(path, |doc| {
        let volumes = volumes_of(doc);
        let index = volumes.iter().position(|t| t.get("name").and_then(|n| n.as_str()) == Some(name));
        let table = match index {
            Some(i) => volumes.get_mut(i).expect("found above"),
            None => {
                let mut t = toml_edit::Table::new();
                t.insert("name", toml_edit::value(name));
                volumes.push(t);
                volumes.get_mut(volumes.len() - 1).expect("pushed above")
            }
        };
        for (key, v) in [("mount", &spec.mount), ("fs_type", &spec.fs_type), ("fs_options", &spec.fs_options)] {
            match v {
                Some(v) => {
                    table.insert(key, toml_edit::value(v.as_str()));
                }
                None => {
                    table.remove(key);
                }
            }
        }
    })
}

/// Takes volume `name`'s entries out of the file at `path`; `false` if it had none.
pub fn remove_attachment(path: &Path, name: &str) -> Result<bool, ConfigWriteError> {
    if !path.exists() {
        return Ok(false);
    }
    let mut removed = false;
    edit(path, |doc| {
        let volumes = volumes_of(doc);
        let before = volumes.len();
        volumes.retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name));
        removed = volumes.len() != before;
    })?;
    Ok(removed)
}

fn volumes_of(doc: &mut toml_edit::DocumentMut) -> &mut toml_edit::ArrayOfTables {
    let item = doc.entry("volume").or_insert_with(|| toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
    if !item.is_array_of_tables() {
        *item = toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new());
    }
    item.as_array_of_tables_mut().expect("made an array of tables above")
}

const NEW_FILE_HEADER: &str = "\
# shadowcopyd's configuration (man shadowcopyd, docs/systemd.md). Flags on its command line win.
# [daemon] takes the daemon's long options without dashes (state_dir, mount, socket, threads, ...).
# Each [[volume]] says what to attach for a registered volume at start: a loop device over its
# live file and, with `mount`, the filesystem on it. `shadowcopy volume attach` edits this file.

";

/// Reads, edits and atomically replaces the file (write, fsync, rename, fsync the directory).
fn edit(path: &Path, change: impl FnOnce(&mut toml_edit::DocumentMut)) -> Result<(), ConfigWriteError> {
    let io = |source| ConfigWriteError::Io { path: path.display().to_string(), source };
    let (text, header) = match std::fs::read_to_string(path) {
        Ok(t) => (t, ""),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), NEW_FILE_HEADER),
        Err(e) => return Err(io(e)),
    };
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| ConfigWriteError::Unparsable {
        path: path.display().to_string(),
        message: e.message().trim().to_string(),
    })?;
    change(&mut doc);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{}.new", path.file_name().and_then(|n| n.to_str()).unwrap_or("shadowcopy.toml")));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{header}{doc}").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        let mut c = Config { path: "/etc/shadowcopy/shadowcopy.toml".into(), found: true, ..Config::default() };
        c.parse(text);
        c
    }

    #[test]
    fn a_bad_volume_entry_is_reported_with_its_line_and_the_others_are_kept() {
        let c = parse(
            "# mine\n[daemon]\nthreads = 4\n\n[[volume]]\nname = \"a\"\nmount = \"/srv/a\"\n\n[[volume]]\nname = \"b\"\nmonut = \"/srv/b\"\n\n[[volume]]\nname = \"c\"\n",
        );
        assert_eq!(c.daemon.threads, Some(4));
        assert_eq!(c.volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(c.volumes[0].line, 5);
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(c.errors[0].starts_with("/etc/shadowcopy/shadowcopy.toml:11: "), "{}", c.errors[0]);
        assert!(c.errors[0].contains("monut"), "{}", c.errors[0]);
    }

    #[test]
    fn a_bad_daemon_setting_keeps_its_default_and_the_good_ones_apply() {
        let c = parse("[daemon]\nthreads = \"many\"\nstop_when_unused = true\ncache_size = \"12 parsecs\"\n");
        assert_eq!(c.daemon.threads, None);
        assert_eq!(c.daemon.stop_when_unused, Some(true));
        assert_eq!(c.daemon.cache_size, None);
        assert_eq!(c.errors.len(), 2, "{:?}", c.errors);
        assert!(c.errors.iter().any(|e| e.contains(":2: [daemon] threads")), "{:?}", c.errors);
        assert!(c.errors.iter().any(|e| e.contains(":4: [daemon] cache_size")), "{:?}", c.errors);
    }

    #[test]
    fn every_unusable_daemon_value_is_reported_on_its_own_line() {
        let c = parse("[daemon]\nthreads = 0\nmount = \"relative\"\nallow_other = true\n");
        assert_eq!((c.daemon.threads, c.daemon.mount.clone(), c.daemon.allow_other), (None, None, Some(true)));
        assert_eq!(c.errors.len(), 2, "{:?}", c.errors);
        assert!(c.errors[0].contains(":2: [daemon] threads") && c.errors[1].contains(":3: [daemon] mount"), "{:?}", c.errors);
    }

    #[test]
    fn a_syntax_error_uses_nothing_and_says_where() {
        let c = parse("[daemon]\nthreads = = 3\n[[volume]]\nname = \"a\"\n");
        assert!(c.volumes.is_empty());
        assert_eq!(c.errors.len(), 1);
        assert!(c.errors[0].contains(":2: "), "{}", c.errors[0]);
    }

    #[test]
    fn entries_that_cannot_work_are_refused() {
        let c = parse(concat!(
            "[[volume]]\nname = \"a\"\nmount = \"srv/a\"\n",
            "[[volume]]\nname = \"b\"\nfs_type = \"ext4\"\n",
            "[[volume]]\nname = \"c\"\nmount = \"/c\"\nfs_options = \"loop,noatime\"\n",
            "[[volume]]\nname = \"d\"\n[[volume.expose]]\ncopy = \"newest\"\n",
            "[[volume]]\nname = \"e\"\n[[volume]]\nname = \"e\"\n",
            "[other]\nx = 1\n",
        ));
        assert_eq!(c.volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["e"]);
        assert_eq!(c.errors.len(), 6, "{:#?}", c.errors);
    }

    #[test]
    fn attaching_keeps_comments_and_other_entries_and_detaching_removes_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shadowcopy.toml");
        std::fs::write(&path, "# keep me\n[daemon]\nthreads = 2 # and me\n\n[[volume]]\nname = \"other\"\n").unwrap();
        let spec = AttachSpec { mount: Some("/srv/data".into()), fs_type: Some("ext4".into()), fs_options: Some("noatime".into()) };
        set_attachment(&path, "data", &spec).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# keep me") && text.contains("threads = 2 # and me"), "{text}");
        let c = Config::load(&path);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(c.volumes.len(), 2);
        assert_eq!(c.volumes[1].spec(), spec);
        // Replacing drops what the new attachment does not have.
        set_attachment(&path, "data", &AttachSpec::default()).unwrap();
        assert_eq!(Config::load(&path).volumes[1].spec(), AttachSpec::default());
        assert!(remove_attachment(&path, "data").unwrap());
        assert!(!remove_attachment(&path, "data").unwrap());
        let c = Config::load(&path);
        assert_eq!(c.volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["other"]);
        assert!(std::fs::read_to_string(&path).unwrap().contains("# keep me"));
    }

    #[test]
    fn a_missing_file_is_an_empty_configuration_and_a_new_one_gets_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/shadowcopy.toml");
        let c = Config::load(&path);
        assert!(!c.found && c.errors.is_empty() && c.volumes.is_empty());
        set_attachment(&path, "data", &AttachSpec::default()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# shadowcopyd's configuration"), "{text}");
        assert_eq!(Config::load(&path).volumes[0].name, "data");
    }
}
