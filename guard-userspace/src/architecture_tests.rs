//! Rootless checks of the shape of the code: the compiled kernel object agrees with the names
//! in guard-common, and dependencies between the modules of this crate run one way.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use guard_common::maps;

/// Maps the object holds besides ours (aya-log's ring buffer) and its data sections.
fn foreign_map(name: &str) -> bool {
    name.starts_with('.') || name == "AYA_LOGS" || name.starts_with("AYA_LOG")
}

#[test]
fn every_map_and_program_of_the_object_is_named_in_guard_common() {
    let obj = aya_obj::Object::parse(crate::loader::OBJECT).expect("the eBPF object parses");
    let in_object: BTreeSet<&str> = obj
        .maps
        .keys()
        .map(String::as_str)
        .filter(|n| !foreign_map(n))
        .collect();
    let declared: BTreeSet<&str> = maps::ALL.into_iter().collect();
    assert_eq!(
        in_object, declared,
        "maps of the object (left) and guard_common::maps::ALL (right) differ"
    );
    let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
    let declared: BTreeSet<&str> = maps::ALL_PROGRAMS.into_iter().collect();
    assert_eq!(
        programs, declared,
        "programs of the object (left) and guard_common::maps::ALL_PROGRAMS (right) differ"
    );
    // Globals are symbols of the data sections: their names are in the string table.
    for global in maps::GLOBALS {
        let needle = [global.as_bytes(), b"\0"].concat();
        assert!(
            crate::loader::OBJECT
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "global {global} is not in the object"
        );
    }
}

/// Floors of the crate's top-level modules: a module may use modules on its own floor or
/// below. CLI (main.rs) → API/daemon → subsystems → loader, policy, events → guard-common.
const FLOORS: &[(&str, u8)] = &[
    ("daemon", 4),
    ("api", 4),
    ("render", 4),
    ("export", 4),
    // The review page: served by the daemon, through a trait the daemon implements.
    ("ui", 3),
    ("tags", 2),
    ("tagmap", 2),
    ("net", 2),
    ("files", 2),
    ("selfprot", 2),
    ("kernel", 1),
    ("killer", 1),
    ("agents", 1),
    ("containers", 1),
    ("metrics", 1),
    ("proctree", 1),
    ("lsm", 1),
    ("loader", 1),
    ("pins", 1),
    ("btf", 1),
    ("probe", 1),
    ("policy", 1),
    ("deputies", 1),
    ("events", 1),
    ("respond", 1),
    ("requests", 1),
    ("notify", 1),
    ("watch", 1),
    ("seccomp", 1),
    ("caps", 1),
    ("tiocsti", 1),
    ("secrets", 0),
    ("fshandle", 0),
    ("clock", 0),
    ("hostview", 0),
    ("paths", 0),
];

/// Top-level modules each top-level module names through `crate::`, outside test modules.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = FLOORS.iter().map(|(m, _)| (*m).to_owned()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let rel = p.strip_prefix(src).unwrap().to_string_lossy().into_owned();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        if !modules.contains(top) || !rel.ends_with(".rs") || rel.ends_with("tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for used in crate_references(code) {
            if used != top && modules.contains(&used) {
                graph.entry(top.to_owned()).or_default().insert(used);
            }
        }
    }
    graph
}

/// Names right after `crate::`, and the first names of a `use crate::{a, b::c}` group.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                        out.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

#[test]
fn dependencies_run_one_way() {
    let floor: BTreeMap<&str, u8> = FLOORS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let module = name.trim_end_matches(".rs");
        if !["lib", "main", "architecture_tests"].contains(&module) {
            assert!(
                floor.contains_key(module),
                "module {module} has no floor in FLOORS: say where it belongs"
            );
        }
    }
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut upward = BTreeSet::new();
    for (from, tos) in &graph {
        for to in tos {
            if floor[to.as_str()] > floor[from.as_str()] {
                upward.insert((from.as_str(), to.as_str()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "these modules use a module on a higher floor (move the shared piece down): {upward:?}"
    );
    // Within a floor, no cycle either.
    for (from, tos) in &graph {
        for to in tos {
            if floor[from.as_str()] == floor[to.as_str()] && reaches(&graph, to, from, &floor) {
                panic!(
                    "{from} and {to} use each other on floor {}",
                    floor[from.as_str()]
                );
            }
        }
    }
}

/// Whether `from` reaches `to` through edges that stay on `from`'s floor.
fn reaches(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    floor: &BTreeMap<&str, u8>,
) -> bool {
    let level = floor[from];
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(m) = stack.pop() {
        if m == to {
            return true;
        }
        if !seen.insert(m.clone()) {
            continue;
        }
        for next in graph.get(&m).into_iter().flatten() {
            if floor[next.as_str()] == level {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn references_are_read_from_use_groups_and_paths() {
    let refs = crate_references(
        "use crate::{events::{self, Decoded}, policy::Action, tags};\nlet x = crate::net::y;",
    );
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    assert_eq!(refs, ["events", "net", "policy", "tags"]);
}
