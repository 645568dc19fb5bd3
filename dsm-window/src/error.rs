//! The window's error type.

use std::sync::Arc;

/// What can go wrong with a window.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WinError {
    /// The runtime underneath failed (a lost peer, a closed link, ...).
    #[error(transparent)]
    Runtime(#[from] dsmpi_runtime::Error),
    /// A target rank outside the window's group.
    #[error("rank {rank} is out of range for a window of {size} ranks")]
    RankOutOfRange {
        /// The rank given.
        rank: usize,
        /// Ranks in the window.
        size: usize,
    },
    /// An access that does not fit in the target's region (or the segment).
    #[error(
        "access of {len} bytes at byte {offset} is outside rank {target}'s {size}-byte region"
    )]
    OutOfRange {
        /// Target rank (for view accesses: the rank whose view was used).
        target: usize,
        /// Byte offset of the access.
        offset: usize,
        /// Length of the access in bytes.
        len: usize,
        /// Size of the region in bytes.
        size: usize,
    },
    /// A typed access at an offset that is not a multiple of the type's alignment.
    #[error("byte offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// Byte offset given.
        offset: usize,
        /// Alignment required.
        align: usize,
    },
    /// An operation that does not apply to the element type (bitwise ops on floats).
    #[error("operation {op:?} does not apply to {kind:?} elements")]
    InvalidOp {
        /// The operation.
        op: crate::Op,
        /// The element kind.
        kind: crate::ElemKind,
    },
    /// Arguments that are invalid or disagree across ranks.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A synchronization call out of order (e.g. `complete` without `start`).
    #[error("synchronization error: {0}")]
    Sync(String),
    /// The target rank refused or could not execute a request.
    #[error("rank {rank} rejected the request: {reason}")]
    Remote {
        /// The rank that answered.
        rank: usize,
        /// Its reason.
        reason: String,
    },
    /// A malformed message on the window's private context.
    #[error("window protocol error: {0}")]
    Protocol(String),
    /// An operating-system call failed (mmap, mprotect, memfd, pipe, thread spawn).
    #[error("{what}: {source}")]
    Os {
        /// What the window was doing.
        what: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The process-wide table of windows served by the fault handler is full.
    #[error("too many windows alive in this process (at most {0})")]
    TooManyWindows(usize),
}

impl WinError {
    /// Wraps the current OS error (`errno`) with what the window was doing.
    pub(crate) fn last_os(what: impl Into<String>) -> WinError {
        WinError::Os {
            what: what.into(),
            source: Arc::new(std::io::Error::last_os_error()),
        }
    }
}

/// The window's result type.
pub type Result<T, E = WinError> = std::result::Result<T, E>;
