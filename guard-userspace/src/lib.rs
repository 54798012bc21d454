//! guard: kernel-enforced containment for AI coding agents.
//!
//! The daemon is a set of tasks (loader, policy, events, process tree, API) that talk over
//! channels; the `guard` binary is a thin CLI over this library.

pub mod agents;
pub mod api;
pub mod btf;
pub mod caps;
pub mod clock;
pub mod containers;
pub mod daemon;
pub mod deputies;
pub mod events;
pub mod export;
pub mod files;
pub mod fshandle;
pub mod hostview;
pub mod kernel;
pub mod killer;
pub mod loader;
pub mod lsm;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod paths;
pub mod pins;
pub mod policy;
pub mod probe;
pub mod proctree;
pub mod render;
pub mod requests;
pub mod respond;
pub mod seccomp;
pub mod secrets;
pub mod selfprot;
pub mod tagmap;
pub mod tags;
pub mod tiocsti;
pub mod ui;
pub mod watch;

#[cfg(test)]
mod architecture_tests;
