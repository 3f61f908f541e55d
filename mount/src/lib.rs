//! `shadowcopyd`, the mount daemon: hosts the engine for every registered volume, serves the
//! control socket, and presents volumes and their shadow copies through FUSE.
//!
//! | module | owns | never |
//! |---|---|---|
//! | [`service`] | the model (volumes, copies, exposed names) and every protocol operation | parses wire bytes or answers FUSE |
//! | [`events`] | the event log (`shadowcopy events`): numbering, `events.jsonl`, followers | decides what is an event |
//! | [`retention`] | schedules and retention as pure functions of a policy, the copies and the time | touches a copy or reads a clock |
//! | [`state`] | `volumes.json` and the state-directory lock | holds copy data |
//! | [`config`] | `shadowcopy.toml`: the daemon's settings and what to attach per volume; problems as `file:line` | attaches, mounts or registers anything |
//! | [`attach`] | loop devices over `live` and the filesystems mounted from them, made and undone with util-linux | decides what to attach, or holds a service lock |
//! | [`expose`] | exposures: copies bind-mounted on folders or on read-only loop devices | decides which copies exist |
//! | [`control`] | the socket: framing, peer credentials, dispatch | decides what an operation does |
//! | [`namespace`] | the mount layout in neutral types: node ids, lookups, listings, attributes, cache policy, write refusals | names a frontend's types |
//! | [`fuse`] | the FUSE frontend: the namespace in fuser's types, INIT capabilities, the errno table | decides anything about the layout |
//! | [`holder`] | the daemon's main process: the FUSE connection, the socket and the ledger kept across workers; restarts and upgrades | reads a request or opens a volume |
//! | [`handoff`] | what passes from holder to worker (descriptors, generation, crash route, why) | decides when workers start |
//! | [`ledger`] | the node ledger: serials, names and `live` opens the kernel knows on one FUSE connection, for the next worker | decides names, or talks to the kernel |
//! | [`keeper`] | the thaw keeper process: thaws a hold's filesystems if the daemon dies mid-hold | freezes, or reads volumes |
//! | [`lifecycle`] | when the daemon stops: signals, `daemon stop`, never under a user of `live` | unmounts or flushes |
//! | [`failpoints`] | fault injection for tests (off unless enabled by the environment) | is active in normal use |
//!
//! It never reaches into the diff-area format: it talks to the library's engine API only. Writers
//! and the requester sequence are the library's `coordinator`; the daemon hosts it.

#![warn(missing_docs)]

pub mod attach;
pub mod config;
pub mod control;
pub mod events;
pub mod expose;
pub mod failpoints;
pub mod fuse;
pub mod handoff;
pub mod holder;
pub mod keeper;
pub mod ledger;
pub mod lifecycle;
pub mod namespace;
pub mod retention;
pub mod service;
pub mod state;
