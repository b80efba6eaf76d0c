//! `muster audit verify`: checks the hash chain of the audit log in a database file, read-only
//! (safe while a server writes to it), from the signed checkpoint that pruning left on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::output;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check that no entry was changed, removed or reordered; exits 1 naming the first that was.
    Verify {
        /// The database; defaults to DB_PATH or muster.db. Its checkpoint key is the file
        /// `<db>.audit-key` beside it.
        #[arg(long, env = "DB_PATH", default_value = "muster.db")]
        db: PathBuf,
    },
}

pub(crate) fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { db } => verify(&db),
    }
}

fn verify(db: &Path) -> anyhow::Result<ExitCode> {
    let chain = muster_server::store::sqlite::audit_chain(db)
        .with_context(|| format!("reading the audit log of {}", db.display()))?;
    match chain.verify() {
        Ok(ok) => {
            let checkpoint = match &ok.checkpoint {
                Some(cp) => format!("checkpoint at seq {}", cp.seq),
                None => "no checkpoint: nothing pruned yet".to_owned(),
            };
            output::emit(format!(
                "audit chain ok: {} entries ({checkpoint})",
                ok.entries
            ))?;
            // Removing the newest entries leaves a chain that still links; keeping this line
            // elsewhere is what shows that.
            output::emit(format!("head: seq {} hash {}", ok.head_seq, ok.head_hash))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            eprintln!("audit chain broken: {broken}");
            Ok(ExitCode::FAILURE)
        }
    }
}
