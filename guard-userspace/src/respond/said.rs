//! The reason lines written lately, by the process they were meant for: what the review page
//! shows as "what the agent saw". Bounded: the oldest processes are forgotten first.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, OnceLock},
};

use guard_common::ProcKey;

/// Processes remembered.
const KEPT: usize = 1024;
/// Lines kept per process.
const PER_PROCESS: usize = 8;

#[derive(Default)]
struct Said {
    lines: HashMap<(u32, u64), Vec<String>>,
    order: VecDeque<(u32, u64)>,
}

fn said() -> &'static Mutex<Said> {
    static SAID: OnceLock<Mutex<Said>> = OnceLock::new();
    SAID.get_or_init(Mutex::default)
}

fn key(p: ProcKey) -> (u32, u64) {
    (p.tgid, ProcKey::new(p.tgid, p.start_ns).start_ns)
}

/// `line` was written for `offender`.
pub fn record(offender: ProcKey, line: &str) {
    let mut s = said().lock().expect("said lock");
    let k = key(offender);
    if !s.lines.contains_key(&k) {
        if s.order.len() == KEPT
            && let Some(old) = s.order.pop_front()
        {
            s.lines.remove(&old);
        }
        s.order.push_back(k);
    }
    let lines = s.lines.entry(k).or_default();
    if lines.len() < PER_PROCESS && !lines.iter().any(|l| l == line) {
        lines.push(line.to_owned());
    }
}

/// The lines written for process `pid` that started at `start_ns`, oldest first.
pub fn lines_for(pid: u32, start_ns: u64) -> Vec<String> {
    let s = said().lock().expect("said lock");
    s.lines
        .get(&key(ProcKey::new(pid, start_ns)))
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_by_process_and_bounded() {
        let p = ProcKey::new(4_000_000, 123_000_000);
        record(p, "guard: denied");
        record(p, "guard: denied");
        assert_eq!(lines_for(p.tgid, p.start_ns), ["guard: denied"]);
        for i in 0..KEPT as u32 {
            record(ProcKey::new(5_000_000 + i, 1), "x");
        }
        assert!(lines_for(p.tgid, p.start_ns).is_empty(), "forgotten");
    }
}
