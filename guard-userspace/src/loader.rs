//! What every program load shares, below the subsystems that load programs (kernel trackers,
//! LSM tier, file and network programs). The loader table grows here.

use aya::programs::ProgramError;

/// A program error with the verifier's log, if there is one.
pub fn verifier_text(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!("{io_error}\n{verifier_log}"),
        other => other.to_string(),
    }
}
