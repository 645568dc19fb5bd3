//! Allgather (MPI_Allgather): every rank's block ends up on every rank, in rank order.
//!
//! | algorithm | file | time (m bytes per rank, p ranks) |
//! |---|---|---|
//! | [`Allgather::Ring`] | `ring.rs` | (p−1)(α + mβ) |
//! | [`Allgather::RecursiveDoubling`] | `recursive_doubling.rs` | log p α + (p−1) mβ (+ a fold for p not a power of two) |
//! | [`Allgather::Bruck`] | `bruck.rs` | ⌈log p⌉ α + (p−1) mβ + a local rotation |

mod bruck;
mod recursive_doubling;
pub(crate) mod ring;

use dsmpi_runtime::Communicator;

use crate::error::Result;

/// Total bytes (p × block) from which the ring, whose neighbours-only traffic is the
/// friendliest to the links, replaces the logarithmic algorithms.
pub const RING_BYTES: usize = 256 * 1024;

/// An allgather algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Allgather {
    /// p−1 steps passing blocks to the right neighbour.
    Ring,
    /// Exchanges with partners 1, 2, 4, … apart, doubling the data each time.
    RecursiveDoubling,
    /// Bruck's algorithm: ⌈log2 p⌉ steps for any p.
    Bruck,
    /// The backend's own collective (MPI_Allgather, on the `mpi` backend), for
    /// comparisons. Never chosen by [`Allgather::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Allgather {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Allgather::Native`],
    /// which needs the `mpi` backend).
    pub const ALL: [Allgather; 3] = [
        Allgather::Ring,
        Allgather::RecursiveDoubling,
        Allgather::Bruck,
    ];

    /// The algorithm the decision function picks for a total of `bytes` on `ranks`.
    pub fn choose(bytes: usize, ranks: usize) -> Allgather {
        if bytes >= RING_BYTES {
            Allgather::Ring
        } else if ranks.is_power_of_two() {
            Allgather::RecursiveDoubling
        } else {
            Allgather::Bruck
        }
    }
}

/// Runs `alg` on the library plane: `recv` (p blocks) gets every rank's `send`.
pub(crate) fn run(lib: &Communicator, alg: Allgather, send: &[u8], recv: &mut [u8]) -> Result<()> {
    let n = lib.size();
    crate::util::check_len("allgather", "recv (bytes)", recv.len(), send.len() * n)?;
    match alg {
        Allgather::Ring => ring::allgather(lib, send, recv),
        Allgather::RecursiveDoubling => recursive_doubling::allgather(lib, send, recv),
        Allgather::Bruck => bruck::allgather(lib, send, recv),
        Allgather::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.allgather(scope, send, recv)?)
        }
    }
}

/// An allgatherv algorithm (blocks of different sizes; every rank knows them all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Allgatherv {
    /// The ring of [`Allgather::Ring`] on the uneven blocks, gathered contiguously and
    /// then placed at their displacements.
    Ring,
    /// The backend's own collective (MPI_Allgatherv, on the `mpi` backend), for
    /// comparisons. Never chosen by [`Allgatherv::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Allgatherv {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Allgatherv::Native`]).
    pub const ALL: [Allgatherv; 1] = [Allgatherv::Ring];

    /// The decision function: the ring, the one dsmpi algorithm for uneven blocks.
    pub fn choose(_bytes: usize, _ranks: usize) -> Allgatherv {
        Allgatherv::Ring
    }
}

/// Runs `alg` as an allgatherv: rank r's `send` lands at `recv[displs[r]..][..counts[r]]`
/// of every rank (bytes; every rank passes the same `counts` and `displs`).
pub(crate) fn run_v(
    lib: &Communicator,
    alg: Allgatherv,
    send: &[u8],
    recv: &mut [u8],
    counts: &[usize],
    displs: &[usize],
) -> Result<()> {
    let (n, me) = (lib.size(), lib.rank());
    crate::util::check_v("allgatherv", counts, displs, n, recv.len())?;
    crate::util::check_len("allgatherv", "send (bytes)", send.len(), counts[me])?;
    match alg {
        Allgatherv::Ring => {
            // Contiguous blocks in rank order, so the ring can run on offsets.
            let mut offs = vec![0usize; n + 1];
            for (r, c) in counts.iter().enumerate() {
                offs[r + 1] = offs[r] + c;
            }
            let mut all = vec![0u8; offs[n]];
            all[offs[me]..offs[me + 1]].copy_from_slice(send);
            ring::ring_blocks(lib, &mut all, &offs, me, |v| v, crate::tags::ALLGATHER)?;
            for r in 0..n {
                recv[displs[r]..displs[r] + counts[r]].copy_from_slice(&all[offs[r]..offs[r + 1]]);
            }
            Ok(())
        }
        Allgatherv::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.allgatherv(scope, send, recv, counts, displs)?)
        }
    }
}
