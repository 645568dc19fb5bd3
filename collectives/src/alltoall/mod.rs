//! All-to-all (MPI_Alltoall, MPI_Alltoallv): block j of rank i's send buffer becomes
//! block i of rank j's receive buffer (a distributed transpose).
//!
//! | algorithm | file | time (m bytes per block, p ranks) |
//! |---|---|---|
//! | [`Alltoall::Linear`] | `linear.rs` | all 2(p−1) messages in flight at once |
//! | [`Alltoall::Pairwise`] | `pairwise.rs` | (p−1)(α + mβ), one partner per step |
//! | [`Alltoall::Bruck`] | `bruck.rs` | ⌈log p⌉ α + (p/2) log p · mβ + local copies |

mod bruck;
mod linear;
mod pairwise;

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::util::{check_len, check_v};

/// Block size (bytes) up to which Bruck's log p steps beat the p−1 messages of the
/// others on [`BRUCK_MIN_RANKS`] ranks or more (measured on 8 ranks: Bruck leads up
/// to 2 KiB blocks, linear from 8 KiB).
pub const BRUCK_BYTES: usize = 2048;

/// Fewest ranks for which Bruck is chosen above [`BRUCK_TINY_BYTES`].
pub const BRUCK_MIN_RANKS: usize = 8;

/// Block size up to which Bruck also wins on 3–7 ranks (only 2-byte blocks on 4).
pub const BRUCK_TINY_BYTES: usize = 16;

/// Block size (bytes) from which pairwise exchange, one partner at a time, beats
/// flooding the links with every message at once (8 ranks, 512 KiB blocks: 5.9 ms
/// against 8.5 ms).
pub const PAIRWISE_BYTES: usize = 512 * 1024;

/// An all-to-all algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alltoall {
    /// Every send and receive posted at once, non-blocking (exercise 11.6).
    Linear,
    /// p−1 steps; in step k exchange with rank + k and rank − k.
    Pairwise,
    /// Bruck's index algorithm: ⌈log2 p⌉ steps of about half the data each.
    Bruck,
    /// The backend's own collective (MPI_Alltoall, on the `mpi` backend), for comparisons.
    /// Never chosen by [`Alltoall::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Alltoall {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Alltoall::Native`],
    /// which needs the `mpi` backend).
    pub const ALL: [Alltoall; 3] = [Alltoall::Linear, Alltoall::Pairwise, Alltoall::Bruck];

    /// The algorithm the decision function picks for blocks of `bytes` on `ranks`.
    pub fn choose(bytes: usize, ranks: usize) -> Alltoall {
        if (ranks >= BRUCK_MIN_RANKS && bytes <= BRUCK_BYTES)
            || (ranks > 2 && bytes <= BRUCK_TINY_BYTES)
        {
            Alltoall::Bruck
        } else if bytes >= PAIRWISE_BYTES && ranks >= BRUCK_MIN_RANKS {
            Alltoall::Pairwise
        } else {
            Alltoall::Linear
        }
    }
}

/// An all-to-all-v algorithm (Bruck needs equal blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alltoallv {
    /// Every send and receive posted at once.
    Linear,
    /// One partner per step.
    Pairwise,
    /// The backend's own collective (MPI_Alltoallv, on the `mpi` backend), for
    /// comparisons. Never chosen by [`Alltoallv::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Alltoallv {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Alltoallv::Native`],
    /// which needs the `mpi` backend).
    pub const ALL: [Alltoallv; 2] = [Alltoallv::Linear, Alltoallv::Pairwise];

    /// The decision function, by the average block size.
    pub fn choose(bytes: usize, _ranks: usize) -> Alltoallv {
        if bytes >= PAIRWISE_BYTES {
            Alltoallv::Pairwise
        } else {
            Alltoallv::Linear
        }
    }
}

/// Runs `alg` with blocks of `send.len() / p` bytes.
pub(crate) fn run(lib: &Communicator, alg: Alltoall, send: &[u8], recv: &mut [u8]) -> Result<()> {
    let n = lib.size();
    check_len("alltoall", "recv (bytes)", recv.len(), send.len())?;
    if send.len() / n * n != send.len() {
        return Err(crate::Error::InvalidArgument(format!(
            "alltoall: a send buffer of {} bytes is not {} equal blocks",
            send.len(),
            n
        )));
    }
    let m = send.len() / n;
    match alg {
        Alltoall::Linear | Alltoall::Pairwise => {
            let counts = vec![m; n];
            let displs: Vec<usize> = (0..n).map(|r| r * m).collect();
            let v = if alg == Alltoall::Linear {
                Alltoallv::Linear
            } else {
                Alltoallv::Pairwise
            };
            run_v(lib, v, send, &counts, &displs, recv, &counts, &displs)
        }
        Alltoall::Bruck => bruck::alltoall(lib, send, recv, m),
        Alltoall::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.alltoall(scope, send, recv)?)
        }
    }
}

/// Runs `alg` as an alltoallv (counts and displacements in bytes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_v(
    lib: &Communicator,
    alg: Alltoallv,
    send: &[u8],
    scounts: &[usize],
    sdispls: &[usize],
    recv: &mut [u8],
    rcounts: &[usize],
    rdispls: &[usize],
) -> Result<()> {
    let n = lib.size();
    check_v("alltoallv", scounts, sdispls, n, send.len())?;
    check_v("alltoallv", rcounts, rdispls, n, recv.len())?;
    match alg {
        Alltoallv::Linear => linear::alltoallv(lib, send, scounts, sdispls, recv, rcounts, rdispls),
        Alltoallv::Pairwise => {
            pairwise::alltoallv(lib, send, scounts, sdispls, recv, rcounts, rdispls)
        }
        Alltoallv::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.alltoallv(scope, send, scounts, sdispls, recv, rcounts, rdispls)?)
        }
    }
}
