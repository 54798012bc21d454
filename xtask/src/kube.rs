//! The Kubernetes manifests' validator: `kubernetes-validate` from PyPI, which carries the
//! Kubernetes OpenAPI schemas and works offline once installed, in a virtual environment of
//! ours under the target directory (nothing of the machine's Python changes).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::util;

/// Pinned, so that a run validates against the same schemas as the last.
const PACKAGE: &str = "kubernetes-validate==1.37.0";

/// The `kubernetes-validate` program, installed when missing.
pub fn ensure_validator() -> Result<PathBuf> {
    let venv = util::target_dir().join("tools/kubernetes-validate");
    let program = venv.join("bin/kubernetes-validate");
    if program.is_file() {
        return Ok(program);
    }
    let hint = "check that python3 with venv and pip works and that PyPI is reachable";
    util::run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        hint,
    )
    .context("creating a virtual environment for kubernetes-validate")?;
    util::run(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", PACKAGE]),
        hint,
    )
    .with_context(|| format!("installing {PACKAGE}"))?;
    Ok(program)
}
