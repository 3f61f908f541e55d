//! `shadowcopy writer run`: a hook writer. Each event runs `PATH EVENT` (the convention of
//! qemu-guest-agent's fsfreeze hooks, so existing hook scripts adapt easily), built on the
//! library's writer SDK.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use shadowcopy::protocol::{default_socket_path, Component, EventMessage, WriterRegistration};
use shadowcopy::writer::{self, Failure, Writer};
use uuid::Uuid;

struct Hook {
    exec: PathBuf,
}

impl Writer for Hook {
    fn handle(&mut self, e: &EventMessage) -> Result<(), Failure> {
        let ids: Vec<String> = e.copy_ids.iter().map(|i| i.to_string()).collect();
        let out = Command::new(&self.exec)
            .arg(e.event.as_str())
            .env("SHADOWCOPY_EVENT", e.event.as_str())
            .env("SHADOWCOPY_SET_ID", e.set_id.map(|s| s.to_string()).unwrap_or_default())
            .env("SHADOWCOPY_COPY_IDS", ids.join(" "))
            .env("SHADOWCOPY_VOLUMES", e.volumes.join(" "))
            .env("SHADOWCOPY_COMPONENTS", e.components.join(" "))
            .output()
            .map_err(|err| Failure::new(format!("cannot run {}: {err}", self.exec.display())))?;
        if out.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(if out.stderr.is_empty() { &out.stdout } else { &out.stderr }).into_owned();
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        Err(Failure::new(format!(
            "{} {} exited with {}{}",
            self.exec.display(),
            e.event.as_str(),
            out.status,
            if last.is_empty() { String::new() } else { format!(": {last}") }
        )))
    }
}

pub(crate) fn run(socket: Option<PathBuf>, name: String, exec: PathBuf, volumes: Vec<String>) -> Result<()> {
    let exec = exec.canonicalize().with_context(|| format!("the hook {} cannot be found", exec.display()))?;
    let socket = socket.unwrap_or_else(default_socket_path);
    let registration = WriterRegistration {
        name: name.clone(),
        // Stable for a name: a restarted hook writer is the same writer class.
        class_id: Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("shadowcopy-hook:{name}").as_bytes()),
        instance_id: Uuid::new_v4(),
        components: vec![Component { name, paths: vec![exec.display().to_string()], volumes, restore_method: None }],
    };
    let stop = Arc::new(AtomicBool::new(false));
    writer::run(&socket, &registration, &mut Hook { exec }, &stop).context("serving as a writer")
}
