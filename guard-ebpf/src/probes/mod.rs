//! Programs grouped by concern.
pub mod deputy;
pub mod egress;
pub mod file;
pub mod guard_self;
pub mod lsm;
pub mod modify_return;
pub mod net;
pub mod process;
pub mod recognise;
pub mod secret;
pub mod taint;
