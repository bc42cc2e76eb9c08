//! `faultline wal verify` and `faultline wal dump`: read-only operator tools over
//! `faultline_pipeline::inspect`, printing to standard output.

use std::path::Path;
use std::process::ExitCode;

use faultline_pipeline::inspect::{self, DumpOptions};

/// `faultline wal verify DIR`: exit 1 when anything is corrupt.
pub fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let clean = inspect::verify(dir, &mut std::io::stdout().lock())?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `faultline wal dump DIR`.
pub fn dump(dir: &Path, opts: DumpOptions) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    inspect::dump(dir, opts, &mut out, &mut std::io::stderr().lock())?;
    Ok(ExitCode::SUCCESS)
}
