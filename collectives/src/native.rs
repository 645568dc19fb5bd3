//! The `Native` choice of each algorithm enum: the backend's own collective (MPI's,
//! on the `mpi` backend) instead of one of dsmpi's algorithms.
//!
//! It exists so that one program can compare dsmpi's algorithms with the MPI
//! library's on the same network. It is never picked by a decision function (those
//! choose among dsmpi's algorithms, whose costs `docs/COLLECTIVES.md` measures), and
//! on a backend without native collectives it fails with
//! [`Error::NativeUnavailable`] before any message is sent, on every rank alike (all
//! ranks of a job run the same backend), so no rank is left waiting.

use dsmpi_runtime::transport::{NativeCollectives, NativeScope};
use dsmpi_runtime::Communicator;

use crate::error::{Error, Result};

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
