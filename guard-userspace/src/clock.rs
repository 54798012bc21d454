//! The kernel's event clock, read from userspace.

/// Now, on the boot-time clock (`CLOCK_BOOTTIME`) the kernel's records carry
/// (`bpf_ktime_get_boot_ns`), in ns.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
