//! The `Native` choice of each algorithm enum: the backend's own collective (MPI's,
//! on the `mpi` backend) instead of one of dsmpi's algorithms.
//!
//! It exists so that one program can compare dsmpi's algorithms with the MPI
//! library's on the same network. It is never picked by a decision function (those
//! choose among dsmpi's algorithms, whose costs `docs/COLLECTIVES.md` measures), and
//! on a backend without native collectives it fails with
//! [`Error::NativeUnavailable`] before any message is sent, on every rank alike (all
//! ranks of a job run the same backend), so no rank is left waiting.

use dsmpi_runtime::transport::{NativeCollectives, NativeKind, NativeOp, NativeScope};
use dsmpi_runtime::Communicator;

use crate::error::{Error, Result};
use crate::op::Operation;

/// The backend's native collectives for `lib` and the scope naming `lib` to them.
pub(crate) fn of(lib: &Communicator) -> Result<(&dyn NativeCollectives, NativeScope<'_>)> {
    let native = lib
        .transport()
        .native()
        .ok_or(Error::NativeUnavailable(lib.transport().name()))?;
    Ok((
        native,
        NativeScope {
            ctx: lib.context(),
            members: lib.world_ranks(),
        },
    ))
}

/// The backend's names for `op` on elements of `T`, for the native reductions
/// (`what` names the choice in the error). Both are known alike on every rank (same
/// op, same `T`), so a refusal happens everywhere and leaves no rank waiting.
pub(crate) fn reduction<T: 'static>(
    what: &str,
    op: &dyn Operation<T>,
) -> Result<(NativeOp, NativeKind)> {
    match (op.native_op(), NativeKind::of::<T>()) {
        (Some(nop), Some(kind)) => Ok((nop, kind)),
        _ => Err(Error::InvalidArgument(format!(
            "{what} runs built-in operations (SystemOp) on u8..i64, f32 and f64 only, \
             not this operation on {}",
            std::any::type_name::<T>()
        ))),
    }
}
