//! Struct field offsets of the running kernel, read from its BTF at load time and handed to
//! the programs as a global, so one build runs on kernels with different layouts.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.start_boottime`
    pub task_start_boottime: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `mm_struct.arg_start`
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`
    pub mm_arg_end: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `signal_struct.live` (the thread group's live threads, an `atomic_t`)
    pub signal_live: u32,
    /// Non-zero once filled in by the loader; programs do nothing with unset offsets.
    pub valid: u32,
    /// `mm_struct.env_start` (`env_end` follows it).
    pub mm_env_start: u32,
    /// `linux_binprm.file`: the executable of an exec.
    pub bprm_file: u32,
    /// `file.f_path.dentry`
    pub file_dentry: u32,
    /// `task_struct.cgroups` (a `css_set *`)
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`: the task's cgroup on the default (v2) hierarchy
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn` and `kernfs_node.id`: a cgroup's id
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `cgroup.self.parent`: the parent cgroup (its `self` is its first member)
    pub cgroup_parent: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 80);

/// Offsets for the unix socket programs, whose context is really a
/// `struct bpf_sock_addr_kern` (aya-ebpf has no binding for its `uaddr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixOffsets {
    /// `bpf_sock_addr_kern.uaddr` (a `struct sockaddr *`).
    pub ctx_uaddr: u32,
    /// `bpf_sock_addr_kern.uaddrlen` (kernels ≥ 6.7).
    pub ctx_uaddrlen: u32,
    /// `sockaddr_un.sun_path`.
    pub sun_path: u32,
    /// Non-zero once filled in by the loader.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<UnixOffsets>() == 16);

/// Bytes of the context the unix programs copy; every offset read from it must fit.
pub const UNIX_CTX_READ: u32 = 64;

/// Offsets for the file programs (probes/file.rs): from a changed inode to its device, its
/// dentries and their ancestors, and the system call in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOffsets {
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `inode.i_dentry` (an `hlist_head` of the inode's dentries)
    pub inode_dentry: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// `dentry.d_inode`
    pub dentry_inode: u32,
    /// `dentry.d_name.name`
    pub dentry_name: u32,
    /// `dentry.d_u.d_alias` (the `hlist_node` linking it into `i_dentry`)
    pub dentry_alias: u32,
    /// `task_struct.flags`
    pub task_flags: u32,
    /// `pt_regs.orig_ax` (x86-64); `u32::MAX` where unknown: every change then counts as a
    /// write and a delete.
    pub regs_syscall: u32,
    /// `pt_regs.di` and `pt_regs.si`: the first two system call arguments.
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    /// Non-zero once filled in by the loader; the programs do nothing with unset offsets.
    pub valid: u32,
    /// `inode.i_mode`
    pub inode_mode: u32,
    /// `inode.i_generation`
    pub inode_generation: u32,
    /// `super_block.s_magic`
    pub sb_magic: u32,
    /// `inode.i_size`
    pub inode_size: u32,
    /// The inode's ctime: seconds (a 64-bit field) and nanoseconds (read as 32 bits), at
    /// `i_ctime_sec`/`i_ctime_nsec` (Linux ≥ 6.11) or inside the `timespec64` `__i_ctime`
    /// (6.6–6.10) or `i_ctime` (before).
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    /// `address_space.host`: the inode a page-cache mapping belongs to.
    pub mapping_host: u32,
    /// Non-zero where the kernel has the ctime tracepoints the change detectors use (Linux
    /// ≥ 6.13): the fallback tier's `fmod_ret` path programs then leave audited changes to
    /// the detectors, which also see writes through descriptors opened earlier (one event
    /// per change, not two).
    pub ctime_detectors: u32,
}
const _: () = assert!(core::mem::size_of::<FileOffsets>() == 84);

/// Offsets for the BPF LSM programs (probes/lsm.rs): the hook arguments' structs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmOffsets {
    /// `socket.type` (a `short`)
    pub socket_type: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock.sk_protocol` (a `u16`)
    pub sock_protocol: u32,
    /// `msghdr.msg_name`
    pub msghdr_name: u32,
    /// `msghdr.msg_namelen`
    pub msghdr_namelen: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.f_mode`
    pub file_mode: u32,
    /// `file.f_flags`
    pub file_flags: u32,
    /// `file.f_path.dentry`
    pub file_dentry: u32,
    /// `path.dentry`
    pub path_dentry: u32,
    /// Non-zero once filled in by the loader; the programs allow everything with unset
    /// offsets (and count it).
    pub valid: u32,
    /// `unix_sock.path.dentry`: the socket file a bound unix socket was bound to.
    pub unix_sock_dentry: u32,
    /// `unix_sock.addr`, the bound address (`struct unix_address *`).
    pub unix_sock_addr: u32,
    /// `unix_address.len` and `unix_address.name` (a `sockaddr_un`).
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LsmOffsets>() == 64);
