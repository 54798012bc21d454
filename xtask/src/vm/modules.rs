//! Kernel modules the tests need that Debian's cloud kernels build as modules (veth for the
//! network namespaces, loop for the file tests' volumes, …). They come from the same kernel
//! package, with their dependencies (read from each module's `.modinfo`), decompressed on the
//! host, in a small per-kernel cpio appended to the shared initramfs; `/init` loads them in
//! order with `insmod` before the first step.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::rootfs::Tree;

/// Modules loaded in every guest when the kernel does not build them in.
pub const GUEST_MODULES: &[&str] = &["veth", "loop", "overlay", "dummy", "tun"];
/// Where `/init` finds them: `<DIR>/<uname -r>/load` lists names in load order.
pub const DIR: &str = "/var/guard-vm/modules";

/// Add the modules for the kernel whose `lib/modules/<release>` tree is `tree_root` to `t`;
/// returns the names in load order (dependencies first).
pub fn add(t: &mut Tree, tree_root: &Path) -> Result<Vec<String>> {
    let release = tree_root
        .file_name()
        .and_then(|n| n.to_str())
        .context("a modules tree is named after its kernel release")?;
    let builtin: BTreeSet<String> = fs::read_to_string(tree_root.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let files = index(&tree_root.join("kernel"))?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in GUEST_MODULES {
        let name = name.replace('-', "_");
        if !builtin.contains(&name) {
            visit(&name, &files, &builtin, &mut seen, &mut order)?;
        }
    }
    let dir = Path::new(DIR).join(release);
    for (name, bytes) in &order {
        t.data(dir.join(format!("{name}.ko")), bytes.clone(), 0o644);
    }
    let names: Vec<String> = order.into_iter().map(|(n, _)| n).collect();
    let list: String = names.iter().map(|n| format!("{n}\n")).collect();
    t.data(dir.join("load"), list, 0o644);
    Ok(names)
}

/// Depth-first: every dependency before the module that needs it.
fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
) -> Result<()> {
    if builtin.contains(name) || !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let file = files
        .get(name)
        .with_context(|| format!("kernel module {name} is neither built in nor shipped"))?;
    let bytes = read_module(file)?;
    for dep in depends(&bytes) {
        visit(&dep, files, builtin, seen, order)?;
    }
    order.push((name.to_owned(), bytes));
    Ok(())
}

/// Every module file under `dir`, by module name (`-` written `_`, as the kernel does).
fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = module_name(&path) {
                out.insert(name, path);
            }
        }
    }
    Ok(out)
}

/// `…/veth.ko` or `…/veth.ko.xz` → `veth`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))?;
    Some(stem.replace('-', "_"))
}

/// The module's ELF bytes, decompressed with `xz`/`zstd` when the package compressed it
/// (busybox insmod hands the file to the kernel as it is).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return fs::read(path).with_context(|| format!("cannot read {name}"));
    };
    let out = Command::new(tool)
        .args(["-d", "-c"])
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} to decompress {name} (install {tool})"))?;
    if !out.status.success() {
        bail!(
            "{tool} -d {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section.
fn depends(elf: &[u8]) -> Vec<String> {
    modinfo(elf)
        .and_then(|info| {
            info.split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"depends="))
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .filter(|d| !d.is_empty())
                        .map(|d| d.replace('-', "_"))
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// The bytes of the `.modinfo` section of a 64-bit little-endian ELF file.
fn modinfo(b: &[u8]) -> Option<&[u8]> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| {
        let v = u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?);
        usize::try_from(v).ok()
    };
    if b.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (shoff, shentsize) = (u64_at(0x28)?, usize::from(u16_at(0x3a)?));
    let (shnum, shstrndx) = (usize::from(u16_at(0x3c)?), usize::from(u16_at(0x3e)?));
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        Some((u32_at(h)? as usize, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let names = b.get(stroff..stroff + strsize)?;
    (0..shnum).find_map(|i| {
        let (name, off, size) = section(i)?;
        let name = names.get(name..)?.split(|c| *c == 0).next()?;
        (name == b".modinfo")
            .then(|| b.get(off..off + size))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_the_kernel() {
        let p = Path::new("/m/kernel/drivers/net/veth.ko.xz");
        assert_eq!(module_name(p).as_deref(), Some("veth"));
        let p = Path::new("/m/kernel/net/nf-nat.ko");
        assert_eq!(module_name(p).as_deref(), Some("nf_nat"));
        assert_eq!(module_name(Path::new("/m/modules.order")), None);
    }

    #[test]
    fn depends_are_read_from_modinfo() {
        // A minimal ELF64 with a section-name table and a .modinfo section.
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let info = b"license=GPL\0depends=tun,nf-nat\0name=x\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let info_off = elf.len();
        elf.extend_from_slice(info);
        let shoff = elf.len();
        let mut header = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        header(0, 0, 0);
        header(1, shstr_off, shstr.len());
        header(11, info_off, info.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(depends(&elf), ["tun", "nf_nat"]);
        assert!(depends(b"not an elf").is_empty());
    }
}
