//! Struct field offsets of the running kernel, read from its BTF so that one build of the
//! kernel programs runs on kernels with different layouts (Rust eBPF has no CO-RE).

use std::path::Path;

use btf_rs::{Btf, Type};
use guard_common::{
    offsets::{FileOffsets, KernelOffsets, LsmOffsets, UNIX_CTX_READ, UnixOffsets},
    selfprot::SelfOffsets,
};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember {
        strukt: &'static str,
        member: &'static str,
    },
    #[error("kernel BTF: {strukt}.{member} is a bitfield")]
    Bitfield {
        strukt: &'static str,
        member: &'static str,
    },
    #[error("kernel BTF: {0}")]
    Layout(&'static str),
}

/// The running kernel's BTF, parsed once for everything loading needs (offsets, hooks), and
/// dropped when loading is done.
pub struct Vmlinux(Btf);

impl Vmlinux {
    pub fn read() -> Result<Self, BtfError> {
        Self::read_from(Path::new(VMLINUX_BTF))
    }

    pub fn read_from(path: &Path) -> Result<Self, BtfError> {
        let read = |source| BtfError::Read {
            path: path.display().to_string(),
            source,
        };
        // Read whole, then parsed: btf-rs parsing the file itself seeks for every type (a
        // tenth of a start's CPU went to lseek).
        let bytes = std::fs::read(path).map_err(|e| read(btf_rs::Error::from(e)))?;
        Btf::from_bytes(&bytes).map(Self).map_err(read)
    }

    pub fn btf(&self) -> &Btf {
        &self.0
    }

    /// Whether the kernel has LSM hook `hook`.
    pub fn has_lsm_hook(&self, hook: &str) -> bool {
        func_params_in(&self.0, &format!("bpf_lsm_{hook}")).is_some()
    }
}

/// Every offset struct the kernel programs take, from one parse of the kernel's BTF. Only the
/// trackers' offsets are required; the others are unset (their programs then do nothing, and
/// status says why) when the BTF lacks a field.
#[derive(Clone, Debug, Default)]
pub struct Offsets {
    pub kernel: KernelOffsets,
    pub unix: UnixOffsets,
    pub file: FileOffsets,
    pub file_error: Option<String>,
    pub lsm: LsmOffsets,
    pub selfp: SelfOffsets,
    pub self_error: Option<String>,
    /// Parameters of `btf_trace_sched_process_exit` (3 from Linux 6.16: `group_dead`).
    pub exit_params: Option<usize>,
}

impl Offsets {
    pub fn read(v: &Vmlinux) -> Result<Self, BtfError> {
        let btf = v.btf();
        let (file, file_error) = match file_offsets(btf) {
            Ok(o) => (o, None),
            Err(e) => (FileOffsets::default(), Some(e.to_string())),
        };
        let (selfp, self_error) = match self_offsets(btf) {
            Ok(o) => (o, None),
            Err(e) => (SelfOffsets::default(), Some(e.to_string())),
        };
        Ok(Self {
            kernel: kernel_offsets(btf)?,
            unix: unix_offsets(btf),
            file,
            file_error,
            lsm: lsm_offsets(btf).unwrap_or_default(),
            selfp,
            self_error,
            exit_params: func_params_in(btf, "btf_trace_sched_process_exit"),
        })
    }
}

/// Offsets the unix programs need; `valid == 0` when the kernel has no unix sock_addr hooks
/// (no `bpf_sock_addr_kern.uaddrlen`, Linux < 6.7).
pub fn unix_offsets(btf: &Btf) -> UnixOffsets {
    let off = |s, m| member_offset(btf, s, m).ok();
    match (
        off("bpf_sock_addr_kern", "uaddr"),
        off("bpf_sock_addr_kern", "uaddrlen"),
        off("sockaddr_un", "sun_path"),
    ) {
        (Some(ctx_uaddr), Some(ctx_uaddrlen), Some(sun_path))
            if ctx_uaddr + 8 <= UNIX_CTX_READ && ctx_uaddrlen + 4 <= UNIX_CTX_READ =>
        {
            UnixOffsets {
                ctx_uaddr,
                ctx_uaddrlen,
                sun_path,
                valid: 1,
            }
        }
        _ => UnixOffsets::default(),
    }
}

/// Offsets of the fields guard's programs read.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let off = |strukt, member| member_offset(btf, strukt, member);
    let mm_env_start = off("mm_struct", "env_start")?;
    if off("mm_struct", "env_end")? != mm_env_start + 8 {
        // The programs read env_end right after env_start, as every kernel lays them out.
        return Err(BtfError::Layout(
            "mm_struct.env_end does not follow env_start",
        ));
    }
    Ok(KernelOffsets {
        task_pid: off("task_struct", "pid")?,
        task_tgid: off("task_struct", "tgid")?,
        task_start_boottime: off("task_struct", "start_boottime")?,
        task_mm: off("task_struct", "mm")?,
        task_real_parent: off("task_struct", "real_parent")?,
        mm_arg_start: off("mm_struct", "arg_start")?,
        mm_arg_end: off("mm_struct", "arg_end")?,
        task_exit_code: off("task_struct", "exit_code")?,
        task_signal: off("task_struct", "signal")?,
        signal_live: off("signal_struct", "live")?,
        valid: 1,
        mm_env_start,
        bprm_file: off("linux_binprm", "file")?,
        file_dentry: off("file", "f_path")? + off("path", "dentry")?,
        task_cgroups: off("task_struct", "cgroups")?,
        css_set_dfl_cgrp: off("css_set", "dfl_cgrp")?,
        cgroup_kn: off("cgroup", "kn")?,
        kernfs_node_id: off("kernfs_node", "id")?,
        cgroup_parent: off("cgroup", "self")? + off("cgroup_subsys_state", "parent")?,
        task_comm: off("task_struct", "comm")?,
    })
}

/// Byte offset of `member` in `struct strukt`, looking through anonymous structs and unions.
pub fn member_offset(
    btf: &Btf,
    strukt: &'static str,
    member: &'static str,
) -> Result<u32, BtfError> {
    let s = find_struct(btf, strukt)?;
    let bits = find_member(btf, &s, member)
        .ok_or(BtfError::NoMember { strukt, member })?
        .map_err(|()| BtfError::Bitfield { strukt, member })?;
    Ok(bits / 8)
}

/// The definition (not a forward declaration) of `struct strukt`.
fn find_struct(btf: &Btf, strukt: &'static str) -> Result<btf_rs::Struct, BtfError> {
    btf.resolve_types_by_name(strukt)
        .map_err(|_| BtfError::NoStruct(strukt))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or(BtfError::NoStruct(strukt))
}

/// Bit offset of `name` in `s`; `Err(())` if it is a bitfield.
fn find_member(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Option<Result<u32, ()>> {
    for m in &s.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            if m.bitfield_size().is_some_and(|b| b != 0) || m.bit_offset() % 8 != 0 {
                return Some(Err(()));
            }
            return Some(Ok(m.bit_offset()));
        }
        if mname.is_empty() {
            let mut ty = btf.resolve_chained_type(m).ok()?;
            // Skip qualifiers and typedefs down to the anonymous aggregate.
            for _ in 0..8 {
                match ty {
                    Type::Const(_) | Type::Volatile(_) | Type::Typedef(_) => {
                        let Some(inner) = ty.as_btf_type() else { break };
                        ty = btf.resolve_chained_type(inner).ok()?;
                    }
                    _ => break,
                }
            }
            if let Type::Struct(inner) | Type::Union(inner) = &ty
                && let Some(found) = find_member(btf, inner, name)
            {
                return Some(found.map(|off| off + m.bit_offset()));
            }
        }
    }
    None
}

/// Offsets of the fields the BPF LSM programs read (see [`LsmOffsets`]).
pub fn lsm_offsets(btf: &Btf) -> Result<LsmOffsets, BtfError> {
    let off = |strukt, member| member_offset(btf, strukt, member);
    Ok(LsmOffsets {
        socket_type: off("socket", "type")?,
        socket_sk: off("socket", "sk")?,
        sock_protocol: off("sock", "sk_protocol")?,
        msghdr_name: off("msghdr", "msg_name")?,
        msghdr_namelen: off("msghdr", "msg_namelen")?,
        file_inode: off("file", "f_inode")?,
        file_mode: off("file", "f_mode")?,
        file_flags: off("file", "f_flags")?,
        // `f_path` sits in an anonymous union on recent kernels.
        file_dentry: off("file", "f_path")? + off("path", "dentry")?,
        path_dentry: off("path", "dentry")?,
        valid: 1,
        unix_sock_dentry: off("unix_sock", "path")? + off("path", "dentry")?,
        unix_sock_addr: off("unix_sock", "addr")?,
        unix_address_len: off("unix_address", "len")?,
        unix_address_name: off("unix_address", "name")?,
        _pad: 0,
    })
}

/// Number of parameters of the function or function-pointer typedef `name`
/// (`bpf_lsm_file_open`, `btf_trace_sched_process_exit`, …); `None` when the BTF has no such
/// name. Tracepoint typedefs count their leading `void *` context too.
pub fn func_params_in(btf: &Btf, name: &str) -> Option<usize> {
    for ty in btf.resolve_types_by_name(name).ok()? {
        let mut ty = ty;
        // typedef -> ptr -> func_proto, or func -> func_proto.
        for _ in 0..4 {
            match &ty {
                Type::FuncProto(fp) => return Some(fp.parameters.len()),
                Type::Typedef(_) | Type::Ptr(_) | Type::Func(_) | Type::Const(_) => {
                    let Some(b) = ty.as_btf_type() else { break };
                    let Ok(next) = btf.resolve_chained_type(b) else {
                        break;
                    };
                    ty = next;
                }
                _ => break,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_the_running_kernel() {
        let path = Path::new(VMLINUX_BTF);
        assert!(
            path.exists(),
            "this machine has kernel BTF at {VMLINUX_BTF}"
        );
        let v = Vmlinux::read_from(path).unwrap();
        let o = kernel_offsets(v.btf()).unwrap();
        assert_eq!(o.valid, 1);
        assert!(o.task_tgid > o.task_pid.saturating_sub(8));
        assert!(o.task_pid > 0 && o.task_tgid > 0 && o.task_start_boottime > 0);
        assert!(o.mm_arg_end > o.mm_arg_start);
        assert_eq!(o.mm_env_start, o.mm_arg_end + 8);
    }

    #[test]
    fn function_arity_comes_from_btf() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        // (void *, struct task_struct *, bool group_dead) on 6.16 and later.
        let exit = func_params_in(&btf, "btf_trace_sched_process_exit").unwrap();
        assert!(exit == 2 || exit == 3, "{exit}");
        assert_eq!(
            func_params_in(&btf, "btf_trace_sched_process_fork"),
            Some(3)
        );
        assert_eq!(func_params_in(&btf, "no_such_function_anywhere"), None);
    }

    #[test]
    fn lsm_offsets_of_the_running_kernel() {
        let o = lsm_offsets(Vmlinux::read().unwrap().btf()).unwrap();
        assert_eq!(o.valid, 1);
        // `struct path` is { vfsmount *mnt; dentry *dentry; }.
        assert_eq!(o.path_dentry, 8);
        assert_eq!(o.msghdr_name, 0);
        assert!(o.file_dentry > 0 && o.file_inode > 0 && o.socket_sk > o.socket_type);
    }

    #[test]
    fn unknown_member_is_named() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let err = member_offset(&btf, "task_struct", "no_such_field").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF: struct task_struct has no member no_such_field"
        );
    }

    #[test]
    fn one_parse_gives_every_offset_struct() {
        let o = Offsets::read(&Vmlinux::read().unwrap()).unwrap();
        assert_eq!(o.kernel.valid, 1);
        assert_eq!((o.file.valid, o.lsm.valid, o.selfp.valid), (1, 1, 1));
        assert_eq!(
            o.unix.valid, 1,
            "this kernel (6.7 or later) has unix sock_addr hooks"
        );
        assert!((o.file_error.clone(), o.self_error.clone()) == (None, None));
        assert!(matches!(o.exit_params, Some(2 | 3)));
    }

    #[test]
    fn siginfo_code_offset_of_the_running_kernel() {
        // si_signo, si_errno, si_code: the ABI fixes it at 8 on every Linux architecture.
        let o = self_offsets(Vmlinux::read().unwrap().btf()).unwrap();
        assert_eq!(o.siginfo_code, 8);
        assert_eq!(o.valid, 1);
    }
}

/// Offsets of the fields the file programs read (see [`FileOffsets`]). The system call
/// registers are x86-64's; where `pt_regs` has no `orig_ax` they are marked unknown and every
/// change of a protected object counts as both a write and a delete.
pub fn file_offsets(btf: &Btf) -> Result<FileOffsets, BtfError> {
    let off = |strukt, member| member_offset(btf, strukt, member);
    let regs = |member| member_offset(btf, "pt_regs", member).ok();
    let (regs_syscall, regs_arg0, regs_arg1) = match (regs("orig_ax"), regs("di"), regs("si")) {
        (Some(nr), Some(a0), Some(a1)) => (nr, a0, a1),
        _ => (u32::MAX, 0, 0),
    };
    let (inode_ctime_sec, inode_ctime_nsec) = ctime_offsets(btf)?;
    Ok(FileOffsets {
        inode_ino: off("inode", "i_ino")?,
        inode_sb: off("inode", "i_sb")?,
        inode_dentry: off("inode", "i_dentry")?,
        sb_dev: off("super_block", "s_dev")?,
        dentry_parent: off("dentry", "d_parent")?,
        dentry_inode: off("dentry", "d_inode")?,
        dentry_name: off("dentry", "d_name")? + off("qstr", "name")?,
        dentry_alias: nested_offset(btf, "dentry", "d_u", "d_alias")?,
        task_flags: off("task_struct", "flags")?,
        regs_syscall,
        regs_arg0,
        regs_arg1,
        valid: 1,
        inode_mode: off("inode", "i_mode")?,
        inode_generation: off("inode", "i_generation")?,
        sb_magic: off("super_block", "s_magic")?,
        inode_size: off("inode", "i_size")?,
        inode_ctime_sec,
        inode_ctime_nsec,
        mapping_host: off("address_space", "host")?,
        ctime_detectors: u32::from(
            guard_common::maps::file_programs::TRACEPOINTS
                .iter()
                .all(|(_, tp)| func_params_in(btf, &format!("btf_trace_{tp}")).is_some()),
        ),
    })
}

/// Where the inode's ctime is: `i_ctime_sec`/`i_ctime_nsec` (Linux ≥ 6.11), else the
/// `timespec64` `__i_ctime` (6.6–6.10) or `i_ctime` (before), seconds first.
fn ctime_offsets(btf: &Btf) -> Result<(u32, u32), BtfError> {
    let off = |member| member_offset(btf, "inode", member);
    if let (Ok(sec), Ok(nsec)) = (off("i_ctime_sec"), off("i_ctime_nsec")) {
        return Ok((sec, nsec));
    }
    let ts = off("__i_ctime").or_else(|_| off("i_ctime"))?;
    Ok((ts, ts + 8))
}

/// Offsets for the self-protection programs.
pub fn self_offsets(btf: &Btf) -> Result<SelfOffsets, BtfError> {
    Ok(SelfOffsets {
        siginfo_code: member_offset(btf, "kernel_siginfo", "si_code")?,
        valid: 1,
        task_flags: member_offset(btf, "task_struct", "flags")?,
        regs_syscall: member_offset(btf, "pt_regs", "orig_ax").unwrap_or(u32::MAX),
        userns_level: member_offset(btf, "user_namespace", "level")?,
        _pad: 0,
    })
}

/// Byte offset of `inner` inside the struct or union member `outer` of `struct strukt`.
fn nested_offset(
    btf: &Btf,
    strukt: &'static str,
    outer: &'static str,
    inner: &'static str,
) -> Result<u32, BtfError> {
    let base = member_offset(btf, strukt, outer)?;
    let s = find_struct(btf, strukt)?;
    let missing = BtfError::NoMember {
        strukt,
        member: inner,
    };
    let member = s
        .members
        .iter()
        .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == outer))
        .ok_or(BtfError::NoMember {
            strukt,
            member: outer,
        })?;
    match btf.resolve_chained_type(member) {
        Ok(Type::Struct(agg) | Type::Union(agg)) => match find_member(btf, &agg, inner) {
            Some(Ok(bits)) => Ok(base + bits / 8),
            Some(Err(())) => Err(BtfError::Bitfield {
                strukt,
                member: inner,
            }),
            None => Err(missing),
        },
        _ => Err(missing),
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn file_offsets_of_the_running_kernel() {
        let o = file_offsets(Vmlinux::read().unwrap().btf()).unwrap();
        assert_eq!(o.valid, 1);
        assert!(o.inode_ino > 0 && o.inode_sb > 0 && o.dentry_parent > 0);
        assert!(o.dentry_name > 0 && o.dentry_alias > 0 && o.inode_dentry > 0);
        assert_ne!(o.regs_syscall, u32::MAX, "x86-64 pt_regs has orig_ax");
    }
}
