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

mod copies;
mod create;
mod image;
mod storage;
pub(super) mod volume;
