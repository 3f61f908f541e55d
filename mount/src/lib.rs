//! `shadowcopyd`, the mount daemon: hosts the engine for every registered volume, serves the
//! control socket, and presents volumes and their shadow copies through FUSE.
//!
//! | module | owns | never |
//! |---|---|---|
//! | [`service`] | the model (volumes, copies, exposed names) and every protocol operation | parses wire bytes or answers FUSE |
//! | [`state`] | `volumes.json` and the state-directory lock | holds copy data |
//! | [`writers`] | registered writers, their states, the requester sequence and its timeouts | touches volume bytes |
//! | [`control`] | the socket: framing, peer credentials, dispatch | decides what an operation does |
//! | [`fuse`] | node ids, attributes, cache policy, errno table | decides anything about copies |
//! | [`failpoints`] | fault injection for tests (off unless enabled by the environment) | is active in normal use |
//!
//! It never reaches into the diff-area format: it talks to the library's engine API only.

pub mod control;
pub mod failpoints;
pub mod fuse;
pub mod service;
pub mod state;
pub mod writers;
