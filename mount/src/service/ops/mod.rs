//! The control protocol's operations, grouped by what they act on. Each is a method of
//! [`super::Service`]; each failure is a [`super::ServiceError`] variant.
//!
//! | file | operations |
//! |---|---|
//! | [`volume`] | status, volume add/list/remove |
//! | `attach` | volume attach/detach, and what the configuration attaches at start and detaches at stop |
//! | `create` | create (a set, with writers, flush and hold), backup-complete, auto-release |
//! | `copies` | list, delete |
//! | `storage` | storage list, resize |
//! | `image` | export, revert, diff, expose, unexpose |
//! | `policy` | policy set/list, cleanup, and the timer's tick (scheduled copies, retention) |
//! | [`daemon`] | daemon stop, and who uses each `live` file |

mod attach;
mod copies;
mod create;
pub(super) mod daemon;
mod image;
mod policy;
mod storage;
pub(super) mod volume;
