//! The collectives' error type.
//!
//! It wraps the runtime's errors (a lost peer, a truncated message) and adds what
//! only this layer can detect: arguments that do not fit the operation, messages whose
//! length disagrees with what the algorithm expects, and datatype problems.

/// What can go wrong in a collective, a reduction or a typed transfer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// An error from the point-to-point layer underneath.
    #[error(transparent)]
    Runtime(#[from] dsmpi_runtime::Error),
    /// A root outside `0..size`.
    #[error("root {root} is out of range for a communicator of size {size}")]
    RootOutOfRange {
        /// The root given.
        root: usize,
        /// The communicator's size.
        size: usize,
    },
    /// A buffer whose length does not fit the operation on this rank.
    #[error("{op}: {what} has {got} elements, expected {expected}")]
    BufferLength {
        /// The operation.
        op: &'static str,
        /// Which argument.
        what: &'static str,
        /// Length required.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A message of the right tag and source but the wrong length arrived: the ranks
    /// called the collective with different counts.
    #[error("{op}: rank {sender} sent {got} bytes where {expected} were expected (do all ranks pass the same counts?)")]
    CountMismatch {
        /// The operation.
        op: &'static str,
        /// Sender, in the communicator.
        sender: usize,
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A reduction operation that is not defined for the element type (e.g. a bitwise
    /// AND of floats).
    #[error("reduction {op} is not defined for {ty}")]
    InvalidOp {
        /// The operation.
        op: &'static str,
        /// The element type.
        ty: &'static str,
    },
    /// A datatype that cannot be built or used as asked.
    #[error("invalid datatype: {0}")]
    InvalidDatatype(String),
    /// The send and receive type signatures differ.
    #[error("type signature mismatch: {0}")]
    SignatureMismatch(String),
    /// A `Native` algorithm was asked for on a backend without native collectives.
    #[error(
        "native collectives need the mpi backend; this communicator runs on the `{0}` backend"
    )]
    NativeUnavailable(&'static str),
    /// Other invalid arguments.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// The collectives' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
