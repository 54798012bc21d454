//! Programs grouped by concern.
pub mod process;
