//! Struct field offsets of the running kernel, read from its BTF so that one build of the
//! kernel programs runs on kernels with different layouts (Rust eBPF has no CO-RE).

use std::path::Path;

use btf_rs::{Btf, Type};
use guard_common::offsets::KernelOffsets;

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
}

/// Offsets of the fields guard's programs read, from the BTF at `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let off = |strukt, member| member_offset(&btf, strukt, member);
    Ok(KernelOffsets {
        task_pid: off("task_struct", "pid")?,
        task_tgid: off("task_struct", "tgid")?,
        task_start_boottime: off("task_struct", "start_boottime")?,
        task_mm: off("task_struct", "mm")?,
        task_real_parent: off("task_struct", "real_parent")?,
        mm_arg_start: off("mm_struct", "arg_start")?,
        mm_arg_end: off("mm_struct", "arg_end")?,
        task_exit_code: off("task_struct", "exit_code")?,
        valid: 1,
        _pad: 0,
    })
}

/// Byte offset of `member` in `struct strukt`, looking through anonymous structs and unions.
pub fn member_offset(
    btf: &Btf,
    strukt: &'static str,
    member: &'static str,
) -> Result<u32, BtfError> {
    let types = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| BtfError::NoStruct(strukt))?;
    let s = types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or(BtfError::NoStruct(strukt))?;
    let bits = find_member(btf, s, member)
        .ok_or(BtfError::NoMember { strukt, member })?
        .map_err(|()| BtfError::Bitfield { strukt, member })?;
    Ok(bits / 8)
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
        let o = kernel_offsets(path).unwrap();
        assert_eq!(o.valid, 1);
        assert!(o.task_tgid > o.task_pid.saturating_sub(8));
        assert!(o.task_pid > 0 && o.task_tgid > 0 && o.task_start_boottime > 0);
        assert!(o.mm_arg_end > o.mm_arg_start);
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
}
