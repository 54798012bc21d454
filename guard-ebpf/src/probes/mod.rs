//! Programs grouped by concern.
pub mod file;
pub mod net;
pub mod process;
