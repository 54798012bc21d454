//! Programs grouped by concern.
pub mod file;
pub mod lsm;
pub mod net;
pub mod process;
