//! The one table from our errors to the errno a FUSE request gets. Explicit, because converting
//! an `io::Error` generically turns most kinds into EIO.

use fuser::Errno;
use shadowcopy::fsread::FsError;

pub(super) fn of_fs(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::Invalid(_) => Errno::EINVAL,
        FsError::Unsupported(_) | FsError::Corrupt(_) | FsError::Io(_) => Errno::EIO,
        // A kind added to the library later: an error all the same.
        _ => Errno::EIO,
    }
}

pub(super) fn of_engine(e: &shadowcopy::Error) -> Errno {
    use shadowcopy::Error as E;
    match e {
        E::NoSuchCopy(_) | E::CopyDeleted(_) => Errno::ESTALE,
        E::OutOfRange { .. } => Errno::EINVAL,
        E::VolumeIo { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => Errno::ENOSPC,
        _ => Errno::EIO,
    }
}
