//! Reads of kernel structs at offsets taken from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use guard_common::{ProcKey, offsets::KernelOffsets};

/// A `struct task_struct *`.
#[derive(Clone, Copy)]
pub struct Task(pub *const u8);

impl Task {
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: helper without preconditions.
        Self(unsafe { bpf_get_current_task() } as *const u8)
    }

    #[inline(always)]
    fn read<T>(self, off: u32) -> Result<T, i32> {
        // SAFETY: bpf_probe_read_kernel validates the address.
        unsafe { bpf_probe_read_kernel(self.0.add(off as usize) as *const T) }
    }

    #[inline(always)]
    pub fn tgid(self, o: &KernelOffsets) -> Result<u32, i32> {
        self.read::<i32>(o.task_tgid).map(|v| v as u32)
    }

    #[inline(always)]
    pub fn start_boottime(self, o: &KernelOffsets) -> Result<u64, i32> {
        self.read::<u64>(o.task_start_boottime)
    }

    #[inline(always)]
    pub fn key(self, o: &KernelOffsets) -> Result<ProcKey, i32> {
        Ok(ProcKey::new(self.tgid(o)?, self.start_boottime(o)?))
    }

    #[inline(always)]
    pub fn parent_tgid(self, o: &KernelOffsets) -> Result<u32, i32> {
        let parent: *const u8 = self.read(o.task_real_parent)?;
        Task(parent).tgid(o)
    }

    #[inline(always)]
    pub fn exit_code(self, o: &KernelOffsets) -> Result<i32, i32> {
        self.read::<i32>(o.task_exit_code)
    }

    /// Live threads of the task's thread group (`signal->live`).
    #[inline(always)]
    pub fn live_threads(self, o: &KernelOffsets) -> Result<i32, i32> {
        let signal: *const u8 = self.read(o.task_signal)?;
        if signal.is_null() {
            return Err(-1);
        }
        Task(signal).read::<i32>(o.signal_live)
    }

    /// `[arg_start, arg_end)` of the task's mm, in user memory.
    #[inline(always)]
    pub fn args(self, o: &KernelOffsets) -> Result<(u64, u64), i32> {
        let mm: *const u8 = self.read(o.task_mm)?;
        if mm.is_null() {
            return Err(-1);
        }
        let mm = Task(mm);
        Ok((mm.read(o.mm_arg_start)?, mm.read(o.mm_arg_end)?))
    }

    /// The task's cgroup on the default hierarchy (`cgroups->dfl_cgrp`).
    #[inline(always)]
    pub fn dfl_cgroup(self, o: &KernelOffsets) -> Result<*const u8, i32> {
        let css_set: *const u8 = self.read(o.task_cgroups)?;
        if css_set.is_null() {
            return Err(-1);
        }
        Task(css_set).read(o.css_set_dfl_cgrp)
    }

    /// `[env_start, env_end)` of the task's mm, in user memory.
    #[inline(always)]
    pub fn env(self, o: &KernelOffsets) -> Result<(u64, u64), i32> {
        let mm: *const u8 = self.read(o.task_mm)?;
        if mm.is_null() {
            return Err(-1);
        }
        let mm = Task(mm);
        Ok((mm.read(o.mm_env_start)?, mm.read(o.mm_env_start + 8)?))
    }
}
