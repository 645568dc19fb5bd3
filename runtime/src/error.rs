//! The runtime's error type.

use std::sync::Arc;

/// What can go wrong in the runtime. Cloneable because one failure (a lost peer) can
/// fail many outstanding requests at once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A rank argument outside `0..size` of the communicator.
    #[error("rank {rank} is out of range for a communicator of size {size}")]
    RankOutOfRange {
        /// The rank given.
        rank: usize,
        /// The communicator's size.
        size: usize,
    },
    /// A tag outside the user range (negative tags other than `ANY_TAG` are reserved).
    #[error("invalid tag {0}: user tags are 0..={max}", max = crate::TAG_UB)]
    InvalidTag(i32),
    /// The matched message is longer than the receive buffer (MPI_ERR_TRUNCATE).
    #[error("message truncated: {len} bytes from rank {sender} with tag {tag} do not fit a {capacity}-byte receive buffer")]
    Truncated {
        /// Sender's rank in the receiving communicator.
        sender: usize,
        /// Message tag.
        tag: i32,
        /// Message length in bytes.
        len: usize,
        /// Receive buffer capacity in bytes.
        capacity: usize,
    },
    /// A message's byte length is not a whole number of the receive element type.
    #[error("a {bytes}-byte message is not a whole number of {elem}-byte elements")]
    ElementSize {
        /// Message length.
        bytes: usize,
        /// Element size.
        elem: usize,
    },
    /// A peer closed its connection or died; operations involving it fail.
    #[error("rank {rank} on {host} left the job: {reason}")]
    PeerLost {
        /// World rank of the lost peer.
        rank: usize,
        /// Its host.
        host: String,
        /// What was seen.
        reason: String,
    },
    /// Start-up failed: the launcher environment, the PMI link or the mesh.
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What the runtime was doing.
        what: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// `init()` was called twice in one process.
    #[error("dsmpi is already initialized in this process")]
    AlreadyInitialized,
    /// The runtime was finalized (or aborted) and cannot be used any more.
    #[error("the runtime was finalized")]
    Finalized,
    /// A collective was called with arguments that disagree across ranks or are invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Wraps an OS error with what the runtime was doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
