//! Barrier (MPI_Barrier): no rank leaves before every rank has entered.
//!
//! [`Barrier::Dissemination`] takes ⌈log2 p⌉ rounds of one empty message each way for
//! any p; [`Barrier::Linear`] gathers empty messages at rank 0 and releases everyone,
//! 2(p−1) messages through one rank. Messages are empty, so only p matters.

mod dissemination;
mod linear;

use dsmpi_runtime::Communicator;

use crate::error::Result;

/// A barrier algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Barrier {
    /// In round k, rank r signals r + 2^k and waits for r − 2^k.
    Dissemination,
    /// Everyone signals rank 0, which then releases everyone.
    Linear,
    /// The backend's own collective (MPI_Barrier, on the `mpi` backend), for comparisons.
    /// Never chosen by [`Barrier::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Barrier {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Barrier::Native`],
    /// which needs the `mpi` backend).
    pub const ALL: [Barrier; 2] = [Barrier::Dissemination, Barrier::Linear];

    /// The algorithm the decision function picks on `ranks` ranks: dissemination has
    /// the shorter critical path from 3 ranks on, and is no worse at 2.
    pub fn choose(_ranks: usize) -> Barrier {
        Barrier::Dissemination
    }
}

/// Runs `alg` on the library plane `lib`.
pub(crate) fn run(lib: &Communicator, alg: Barrier) -> Result<()> {
    match alg {
        Barrier::Dissemination => dissemination::barrier(lib),
        Barrier::Linear => linear::barrier(lib),
        Barrier::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.barrier(scope)?)
        }
    }
}
