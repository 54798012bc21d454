//! Build tooling for guard; the library part is shared with guard-userspace's build.rs.
pub mod toolchain;
