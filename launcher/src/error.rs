//! Errors that stop `dsmexec` before or outside the job's own exit policy.
//!
//! A job that runs and fails is not an error here: its exit code comes from
//! [`crate::job::ExitCause`]. These are the cases where the launcher itself cannot do
//! its work, each mapped to the exit code a shell user expects.

use std::io;
use std::path::PathBuf;

/// Exit code for a command line that cannot be parsed or makes no sense.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the program exists but cannot be executed (shell and `timeout(1)`).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit code when the program cannot be found (shell and `timeout(1)`).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the launcher fails for an operating-system reason.
pub const EXIT_LAUNCHER_FAILURE: i32 = 1;

/// Why the launcher could not run (or finish running) a job.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The command line is wrong; the message is one line and says what.
    #[error("{0}")]
    Usage(String),
    /// The program is neither an existing path nor found on `PATH`.
    #[error("{program}: command not found")]
    NotFound {
        /// The program as the user wrote it.
        program: String,
    },
    /// The program was found but cannot be executed.
    #[error("{}: {reason}", path.display())]
    NotExecutable {
        /// The path that was found.
        path: PathBuf,
        /// Why it cannot run (a directory, no execute permission, ...).
        reason: String,
    },
    /// An operating-system call failed; `context` says what the launcher was doing.
    #[error("cannot {context}: {source}")]
    Os {
        /// What the launcher was trying to do, e.g. "start rank 3".
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl LaunchError {
    /// Wraps an OS error with what the launcher was doing when it happened.
    pub fn os(context: impl Into<String>, source: impl Into<io::Error>) -> LaunchError {
        LaunchError::Os {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The process exit code this error ends `dsmexec` with.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Usage(_) => EXIT_USAGE,
            LaunchError::NotFound { .. } => EXIT_NOT_FOUND,
            LaunchError::NotExecutable { .. } => EXIT_NOT_EXECUTABLE,
            LaunchError::Os { .. } => EXIT_LAUNCHER_FAILURE,
        }
    }
}

/// Result alias for launcher operations.
pub type Result<T, E = LaunchError> = std::result::Result<T, E>;
