//! shadowcopy patch: what a server needs to keep a FUSE connection across the death or the
//! replacement of the process that answers it.
//!
//! The kernel keeps a connection while any process holds a descriptor of it. A small holder
//! process mounts ([`mount_device`]), makes one clone per serving thread ([`clone_device`]) and
//! keeps them all; the process that answers requests gets copies of them, runs the handshake
//! once ([`Session::from_fd`]) or resumes an initialized connection
//! ([`Session::from_fd_initialized`]), asks the kernel to queue again what a dead predecessor
//! had read but not answered ([`notify_resend`], Linux 6.9 and later), and serves the clones
//! until asked to stop between two requests ([`Session::serve_devices`], [`ServeStop`]).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use nix::fcntl::FcntlArg;
use nix::fcntl::OFlag;
use nix::poll::PollFd;
use nix::poll::PollFlags;
use nix::poll::PollTimeout;

use crate::Filesystem;
use crate::MountOption;
use crate::channel::Channel;
use crate::dev_fuse::DevFuse;
use crate::ll::Operation;
use crate::mnt::Mount;
use crate::mnt::mount_options::Config;
use crate::mnt::mount_options::check_option_conflicts;
use crate::reply::ReplyEmpty;
use crate::request::RequestWithSender;
use crate::read_buf::FuseReadBuf;
use crate::session::FilesystemHolder;
use crate::session::Session;
use crate::session::SessionEventLoop;
use crate::session::UmountOnDrop;

/// `FUSE_NOTIFY_RESEND` (include/uapi/linux/fuse.h, protocol 7.40).
const FUSE_NOTIFY_RESEND: i32 = 7;

/// A mount made by [`mount_device`]; dropping it unmounts.
#[derive(Debug)]
pub struct MountHandle(Mount);

impl MountHandle {
    /// Unmounts.
    /// # Errors
    /// The unmount's error (EBUSY while something on the mount is in use).
    pub fn umount(self) -> io::Result<()> {
        self.0.umount()
    }
}

/// Mounts a FUSE filesystem at `mountpoint` without talking to the kernel over it yet: the
/// descriptor returned is a copy of the connection's original `/dev/fuse` descriptor, and the
/// handshake is left to whoever serves it.
/// # Errors
/// Bad options, or the mount failing.
pub fn mount_device(mountpoint: &Path, options: &Config) -> io::Result<(OwnedFd, MountHandle)> {
    check_option_conflicts(options)?;
    if options.mount_options.contains(&MountOption::AutoUnmount) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "auto_unmount would end the mount with the process that made it",
        ));
    }
    let (dev, mount) = Mount::new(mountpoint, &options.mount_options, options.acl)?;
    let fd = dev.0.try_clone()?;
    Ok((OwnedFd::from(fd), MountHandle(mount)))
}

/// A new descriptor of the connection `fd` belongs to (`FUSE_DEV_IOC_CLONE`): requests read
/// from it are answered on it, and closing it ends those still unanswered with ECONNABORTED.
/// # Errors
/// Opening `/dev/fuse` or the ioctl failing.
pub fn clone_device(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new_dev = DevFuse::open()?;
    let mut source = fd.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE is a valid ioctl on a /dev/fuse descriptor, reading a u32.
    unsafe {
        crate::ll::ioctl::fuse_dev_ioc_clone(new_dev.as_raw_fd(), &mut source)?;
    }
    Ok(OwnedFd::from(new_dev.0))
}

/// Asks the kernel to queue again every request that was read from this connection's
/// descriptors but not answered. Call it before any live server reads, or requests it is
/// answering come again.
/// # Errors
/// `EINVAL` on a kernel without resend (before 6.9); `ENOTCONN` if the connection ended.
pub fn notify_resend(fd: BorrowedFd<'_>) -> io::Result<()> {
    // struct fuse_out_header { u32 len; i32 error (the notify code); u64 unique (0) }
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&16u32.to_ne_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    let n = nix::unistd::write(fd, &header)?;
    if n != header.len() {
        return Err(io::Error::other("short write of the resend notification"));
    }
    Ok(())
}

/// Stops [`Session::serve_devices`] between two requests: every serving thread finishes the
/// request it is dispatching and reads no other.
#[derive(Debug, Clone)]
pub struct ServeStop(Arc<(OwnedFd, OwnedFd)>);

impl ServeStop {
    /// A new, untriggered stop.
    /// # Errors
    /// Creating the pipe failing.
    pub fn new() -> io::Result<ServeStop> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        Ok(ServeStop(Arc::new((r, w))))
    }

    /// Triggers the stop (idempotent).
    pub fn stop(&self) {
        let _ = nix::unistd::write(&self.0.1, &[1u8]);
    }

    fn readable(&self) -> BorrowedFd<'_> {
        self.0.0.as_fd()
    }
}

impl<FS: Filesystem> Session<FS> {
    /// Wraps a descriptor of a connection whose handshake another process already did (a
    /// server that replaces a dead one). `filesystem.init` is not called.
    pub fn from_fd_initialized(
        filesystem: FS,
        fd: OwnedFd,
        acl: crate::SessionACL,
        config: Config,
    ) -> Session<FS> {
        Session {
            filesystem: FilesystemHolder {
                fs: Some(filesystem),
            },
            ch: Channel::new(Arc::new(DevFuse(File::from(fd)))),
            mount: UmountOnDrop {
                mount: Arc::new(parking_lot::Mutex::new(None)),
            },
            allowed: acl,
            session_owner: nix::unistd::geteuid(),
            proto_version: None,
            config,
        }
    }

    /// Serves requests on `devices` (clones of this session's connection), one thread each,
    /// until `stop` is triggered or the connection ends. Never reads from the session's own
    /// descriptor. Returns once every thread ended; `destroy` is called only when the
    /// connection ended (not on a stop: the next server carries on).
    /// # Errors
    /// Starting a thread failing, or a thread's read failing for another reason than the end
    /// of the connection.
    pub fn serve_devices(self, devices: Vec<OwnedFd>, stop: &ServeStop) -> io::Result<()> {
        let Session {
            filesystem,
            ch: _original,
            mount: _mount,
            allowed,
            session_owner,
            proto_version: _,
            config: _,
        } = self;
        let filesystem = Arc::new(filesystem);
        let mut threads = Vec::with_capacity(devices.len());
        for (i, fd) in devices.into_iter().enumerate() {
            let flags = OFlag::from_bits_retain(nix::fcntl::fcntl(&fd, FcntlArg::F_GETFL)?);
            nix::fcntl::fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
            let event_loop = SessionEventLoop {
                thread_name: format!("fuser-{i}"),
                filesystem: filesystem.clone(),
                ch: Channel::new(Arc::new(DevFuse(File::from(fd)))),
                allowed,
                session_owner,
            };
            let stop = stop.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("fuser-{i}"))
                    .spawn(move || event_loop.stoppable_loop(&stop))?,
            );
        }
        let mut result = Ok(false);
        for t in threads {
            let r = t
                .join()
                .map_err(|_| io::Error::other("event loop thread panicked"))?;
            match (&result, r) {
                (Ok(_), Err(e)) => result = Err(e),
                (Ok(ended), Ok(e)) => result = Ok(*ended || e),
                _ => {}
            }
        }
        let ended = result?;
        // Every thread ended: this is the last reference. Not ended means the next server
        // answers: the filesystem is dropped without `destroy`.
        if let Ok(mut holder) = Arc::try_unwrap(filesystem) {
            if let Some(mut fs) = holder.fs.take() {
                if ended {
                    fs.destroy();
                }
            }
        }
        Ok(())
    }
}

impl<FS: Filesystem> SessionEventLoop<FS> {
    /// Like `event_loop`, on a non-blocking descriptor: waits for a request or the stop, and
    /// checks the stop first. `Ok(true)` when the connection ended.
    ///
    /// Every clone shares the connection's one input queue, so `poll` wakes every idle serving
    /// thread for each request and all but one find nothing (`EAGAIN`). That herd is kept on
    /// purpose: waiting `EPOLLEXCLUSIVE` instead wakes one thread, but the longest idle one,
    /// whose CPU is asleep, and cut single-stream 4 KiB direct writes to `live` from 36k to
    /// 10k IOPS on a 2-vCPU VM (2026-12-03); the herd's cost is bounded by `--threads`.
    fn stoppable_loop(&self, stop: &ServeStop) -> io::Result<bool> {
        let mut buf = FuseReadBuf::new();
        let buf = buf.as_mut();
        loop {
            let mut fds = [
                PollFd::new(stop.readable(), PollFlags::POLLIN),
                PollFd::new(self.ch.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return Ok(false);
            }
            let size = match nix::unistd::read(&self.ch, buf) {
                Ok(size) => size,
                // Another thread took it, or it was interrupted: wait again.
                Err(
                    nix::errno::Errno::EAGAIN | nix::errno::Errno::ENOENT | nix::errno::Errno::EINTR,
                ) => continue,
                Err(nix::errno::Errno::ENODEV) => return Ok(true),
                Err(e) => return Err(e.into()),
            };
            match RequestWithSender::new(self.ch.sender(), &buf[..size]) {
                Some(req) => {
                    if let Ok(Operation::Destroy(_)) = req.request.operation() {
                        req.reply::<ReplyEmpty>().ok();
                        return Ok(true);
                    }
                    req.dispatch(self);
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "Invalid request",
                    ));
                }
            }
        }
    }
}
