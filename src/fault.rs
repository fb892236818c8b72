//! Fault injection for the crash and disk-full tests (`tests/api/faults.rs`); inert unless
//! `MODELPRESS_FAULT` is set.
//!
//! - `MODELPRESS_FAULT=<point>` aborts the process (like `kill -9`: no destructors, no
//!   flushing, no graceful shutdown) the first time the code passes [`point`]`("<point>")`.
//!   Points along a job's life: `queued` (row committed, dispatcher not yet woken), `claimed`,
//!   `reading` (a worker has the job, inputs not yet read), `computing` (first check point
//!   inside the computation), `spool_written` (output complete under `tmp/`), `renamed` (output
//!   under its final name, row not committed), `committing` (inside the success transaction,
//!   before `COMMIT`), `reporting` (committed, not yet published).
//! - `MODELPRESS_FAULT=enospc` makes every [`write_check`] fail with `ENOSPC` ("No space left
//!   on device"), as a full disk would: uploads, dataset conversion and job outputs.
//!
//! Any thread may call these; the variable is read once. The hooks are one-liners so code that
//! moves keeps its points.

use std::sync::OnceLock;

fn configured() -> Option<&'static str> {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT.get_or_init(|| std::env::var("MODELPRESS_FAULT").ok().filter(|s| !s.is_empty())).as_deref()
}

/// Every point name, in the order a job passes them (the tests iterate over this).
pub const POINTS: &[&str] =
    &["queued", "claimed", "reading", "computing", "spool_written", "renamed", "committing", "reporting"];

/// Aborts the process here if `MODELPRESS_FAULT` names this point.
pub fn point(name: &str) {
    if configured() == Some(name) {
        eprintln!("modelpress: MODELPRESS_FAULT={name}: aborting at fault point '{name}'");
        std::process::abort();
    }
}

/// `Err(ENOSPC)` when `MODELPRESS_FAULT=enospc`; call before writing artifact bytes.
pub fn write_check() -> std::io::Result<()> {
    if configured() == Some("enospc") {
        return Err(enospc());
    }
    Ok(())
}

/// The error a full disk gives.
pub fn enospc() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

/// Whether an I/O error means the disk (or quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) || e.kind() == std::io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    #[test]
    fn disk_full_is_recognised() {
        assert!(super::is_disk_full(&super::enospc()));
        assert!(!super::is_disk_full(&std::io::Error::from(std::io::ErrorKind::NotFound)));
        // Unset in the test process: no point fires, writes pass.
        super::point("claimed");
        assert!(super::write_check().is_ok());
    }
}
