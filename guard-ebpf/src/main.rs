//! guard's kernel programs. Built for `bpfel-unknown-none` by guard-userspace's build.rs.
#![no_std]
#![no_main]
// The bpfel target has no `AtomicU64::fetch_add` (no CAS), but the BPF instruction set has an
// atomic add: the intrinsic lowers to it (see probes/net.rs, the pending-kill count).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on bpfel"
)]

mod ctx;
mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
