//! The control protocol's operations, grouped by what they act on. Each is a method of
//! [`super::Service`]; each failure is a [`super::ServiceError`] variant.
//!
//! | file | operations |
//! |---|---|
//! | [`volume`] | status, volume add/list/remove |
//! | `create` | create (a set, with writers, flush and hold), backup-complete, auto-release |
//! | `copies` | list, delete |
//! | `storage` | storage list, resize |
//! | `image` | export, revert, diff, expose, unexpose |
//! | [`daemon`] | daemon stop, and who uses each `live` file |

mod copies;
mod create;
pub(super) mod daemon;
mod image;
mod storage;
pub(super) mod volume;
