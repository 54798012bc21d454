//! Kernel function (kfunc) calls, which aya 0.14 cannot relocate.
//!
//! The eBPF code calls a kfunc as if it were a helper whose id is a marker no helper has
//! ([`KFUNC_SIGNAL_TASK`]). Before the object is loaded, every such call in its code sections
//! is rewritten into a kfunc call: `src_reg` = `BPF_PSEUDO_KFUNC_CALL`, `imm` = the function's
//! id in the running kernel's BTF (`off` 0: vmlinux). aya relocates only `BPF_PSEUDO_CALL`
//! calls and leaves these alone. Each call sits behind a frozen global the loader sets only
//! when the rewrite happened; on a kernel without the function the call stays a marker in
//! code the verifier never walks.

use aya_obj::btf::{Btf, BtfKind};
use guard_common::maps::KFUNC_SIGNAL_TASK;
use object::{Object, ObjectSection, SectionKind};

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `src_reg` of a kfunc call, in the high nibble of the register byte.
const PSEUDO_KFUNC_CALL: u8 = 2 << 4;
const INSN: usize = 8;

/// The object with its kfunc placeholders rewritten for this kernel.
pub struct Patched {
    pub bytes: Vec<u8>,
    /// `bpf_send_signal_task` is called (the kernel has it: Linux ≥ 6.13).
    pub signal_task: bool,
}

/// Rewrite the placeholder calls of `object` for the kernel described by `btf`.
pub fn patch(object: &[u8], btf: &Btf) -> Result<Patched, String> {
    let mut bytes = object.to_vec();
    let Ok(id) = btf.id_by_type_name_kind("bpf_send_signal_task", BtfKind::Func) else {
        return Ok(Patched {
            bytes,
            signal_task: false,
        });
    };
    let rewritten = rewrite_calls(&mut bytes, KFUNC_SIGNAL_TASK, id)?;
    Ok(Patched {
        bytes,
        signal_task: rewritten > 0,
    })
}

/// Rewrite every `call marker` in the code sections of the ELF `bytes` into a kfunc call of
/// BTF id `id`; the number rewritten.
fn rewrite_calls(bytes: &mut [u8], marker: u32, id: u32) -> Result<usize, String> {
    let ranges: Vec<(usize, usize)> = {
        let file = object::File::parse(&*bytes).map_err(|e| format!("eBPF object: {e}"))?;
        file.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .filter_map(|s| s.file_range())
            .map(|(at, len)| (at as usize, len as usize))
            .collect()
    };
    let mut want = [0u8; INSN];
    want[0] = CALL;
    want[4..].copy_from_slice(&marker.to_le_bytes());
    let mut count = 0;
    for (at, len) in ranges {
        let code = bytes
            .get_mut(at..at + len)
            .ok_or("eBPF object: a code section lies outside the file")?;
        for insn in code.chunks_exact_mut(INSN) {
            if insn == want {
                insn[1] = PSEUDO_KFUNC_CALL;
                insn[4..].copy_from_slice(&id.to_le_bytes());
                count += 1;
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::OBJECT;

    #[test]
    fn the_object_calls_the_placeholder_and_every_call_is_rewritten() {
        let mut bytes = OBJECT.to_vec();
        let n = rewrite_calls(&mut bytes, KFUNC_SIGNAL_TASK, 12345).unwrap();
        assert!(n >= 1, "the fork tracker calls bpf_send_signal_task");
        assert_eq!(rewrite_calls(&mut bytes, KFUNC_SIGNAL_TASK, 1).unwrap(), 0);
        let mut kfunc = [0u8; INSN];
        kfunc[0] = CALL;
        kfunc[1] = PSEUDO_KFUNC_CALL;
        kfunc[4..].copy_from_slice(&12345u32.to_le_bytes());
        assert_eq!(
            bytes.chunks_exact(INSN).filter(|i| *i == kfunc).count(),
            n,
            "rewritten in place, where the code sections are aligned"
        );
    }
}
