//! A blocking client of the control socket: connect, send one request, read progress and the
//! final reply.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{Answer, ErrorReply, EventView, Op, Reply, Request, MAX_MESSAGE, VERSION};

/// Failures of a client call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No daemon listens at the path.
    #[error("cannot reach shadowcopyd at {path}: {source} (is the daemon running? start it with `shadowcopyd`, or pass --socket / set SHADOWCOPY_SOCKET)")]
    Connect {
        /// The socket's path.
        path: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The connection broke or a line was malformed.
    #[error("talking to shadowcopyd failed: {0}")]
    Io(#[from] io::Error),
    /// The daemon answered something this client cannot read.
    #[error("shadowcopyd sent a reply this client does not understand ({0}); are the CLI and the daemon the same version?")]
    BadReply(String),
    /// The daemon refused or failed the request.
    #[error("{}", .0.message)]
    Daemon(ErrorReply),
}

/// The default socket: `$SHADOWCOPY_SOCKET`, else `/run/shadowcopy/control.sock` for root, else
/// `$XDG_RUNTIME_DIR/shadowcopy/control.sock` (or `/tmp/shadowcopy-$UID/control.sock`).
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SHADOWCOPY_SOCKET") {
        return PathBuf::from(p);
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return PathBuf::from("/run/shadowcopy/control.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => Path::new(&d).join("shadowcopy/control.sock"),
        None => PathBuf::from(format!("/tmp/shadowcopy-{}/control.sock", uid.as_raw())),
    }
}

/// One connection to the daemon, over any byte stream (a Unix socket from [`Client::connect`];
/// another transport through [`Client::over`]).
pub struct Client {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    notices: Vec<String>,
    /// The socket, when connected by path: a request refused because the daemon is replacing
    /// its worker is sent again on a new connection.
    path: Option<PathBuf>,
}

/// How long a call waits for a daemon that is replacing its worker (`restarting`).
const RESTART_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether a failed call may be sent again on a new connection: the daemon said it did nothing
/// (`restarting`), or the request never reached it, or it changes nothing.
fn worth_retrying(e: &ClientError, changes_state: bool, sent: bool) -> bool {
    match e {
        ClientError::Daemon(reply) => reply.kind == super::ErrorKind::Restarting,
        ClientError::Io(io) => {
            !sent && matches!(io.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
                || !changes_state && io.kind() == io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the daemon's control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        let mut client = Client::over(stream.try_clone()?, stream);
        client.path = Some(path.to_path_buf());
        Ok(client)
    }

    /// A client on an established connection: replies are read from `reader`, requests written
    /// to `writer` (the two halves of one stream).
    pub fn over(reader: impl Read + Send + 'static, writer: impl Write + Send + 'static) -> Client {
        Client { reader: BufReader::new(Box::new(reader)), writer: Box::new(writer), notices: Vec::new(), path: None }
    }

    /// The notices the daemon sent with the answers so far (a copy deleted because its diff
    /// area was full), once each.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// Sends an [`Op::Events`] request with `follow` and hands each event to `each` until it
    /// returns false or the daemon closes the connection (`Ok` then).
    pub fn follow(&mut self, op: Op, each: &mut dyn FnMut(EventView) -> bool) -> Result<(), ClientError> {
        self.send(op)?;
        while let Some(reply) = self.next_reply()? {
            match reply {
                Reply::Record(e) => {
                    if !each(e) {
                        return Ok(());
                    }
                }
                Reply::Notice { message } => self.notices.push(message),
                Reply::Error(e) => return Err(ClientError::Daemon(e)),
                other => return Err(ClientError::BadReply(format!("{other:?} in a stream of events"))),
            }
        }
        Ok(())
    }

    /// Sends one request line without waiting (a writer's answer to an event).
    pub fn send(&mut self, op: Op) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(&Request { v: VERSION, op }).map_err(|e| ClientError::BadReply(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// Reads the next reply line (a writer's next event); `None` when the daemon closed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let mut buf = Vec::new();
        let n = Read::take(&mut self.reader, MAX_MESSAGE as u64).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice::<Reply>(&buf).map(Some).map_err(|e| ClientError::BadReply(e.to_string()))
    }

    /// Sends `op` and waits for its answer; `progress` sees every progress line.
    pub fn call(&mut self, op: Op, progress: &mut dyn FnMut(u64, u64)) -> Result<Answer, ClientError> {
        self.call_with_stages(op, progress, &mut |_| {})
    }

    /// Like [`Client::call`]; `stage` also sees what the daemon is doing now. While the daemon
    /// replaces its worker (`shadowcopy daemon restart`), a request it did not act on is sent
    /// again on a new connection, for up to a minute.
    pub fn call_with_stages(
        &mut self,
        op: Op,
        progress: &mut dyn FnMut(u64, u64),
        stage: &mut dyn FnMut(&str),
    ) -> Result<Answer, ClientError> {
        let started = std::time::Instant::now();
        let changes_state = op.changes_state();
        loop {
            let mut sent = false;
            let e = match self.call_once(op.clone(), progress, stage, &mut sent) {
                Ok(a) => return Ok(a),
                Err(e) => e,
            };
            let Some(path) = self.path.clone() else { return Err(e) };
            if !worth_retrying(&e, changes_state, sent) || started.elapsed() > RESTART_PATIENCE {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            match Client::connect(&path) {
                Ok(fresh) => {
                    let notices = std::mem::take(&mut self.notices);
                    *self = fresh;
                    self.notices = notices;
                }
                Err(_) => return Err(e),
            }
        }
    }

    /// One attempt of [`Client::call_with_stages`]; `sent` says whether the request was
    /// written.
    fn call_once(
        &mut self,
        op: Op,
        progress: &mut dyn FnMut(u64, u64),
        stage: &mut dyn FnMut(&str),
        sent: &mut bool,
    ) -> Result<Answer, ClientError> {
        let mut line = serde_json::to_vec(&Request { v: VERSION, op }).map_err(|e| ClientError::BadReply(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = self.writer.write_all(&line) {
            // A daemon that refused the connection (busy) said why before closing it: report
            // that, not the broken pipe.
            if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
                if let Ok(Some(Reply::Error(reply))) = self.next_reply() {
                    return Err(ClientError::Daemon(reply));
                }
            }
            return Err(e.into());
        }
        *sent = true;
        loop {
            let mut buf = Vec::new();
            let n = Read::take(&mut self.reader, MAX_MESSAGE as u64).read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Err(ClientError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed the connection")));
            }
            match serde_json::from_slice::<Reply>(&buf).map_err(|e| ClientError::BadReply(e.to_string()))? {
                Reply::Progress { done, total } => progress(done, total),
                Reply::Stage { message } => stage(&message),
                Reply::Notice { message } => self.notices.push(message),
                Reply::Record(e) => return Err(ClientError::BadReply(format!("event {} outside a stream of events", e.seq))),
                Reply::Event(e) => {
                    return Err(ClientError::BadReply(format!("an event ({:?}) on a connection that is not a writer's", e.event)))
                }
                Reply::Ok(answer) => return Ok(answer),
                Reply::Error(e) => return Err(ClientError::Daemon(e)),
            }
        }
    }
}
