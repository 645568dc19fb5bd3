//! Pairwise-exchange all-to-all: p−1 steps; in step k rank r sends to r + k and
//! receives from r − k. One message each way in flight per rank, so no link is
//! flooded: the large-block choice (MPICH's long-message algorithm).

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::ALLTOALL;
use crate::util::{disjoint_mut, exchange, expect_bytes};

/// Pairwise alltoallv (counts and displacements in bytes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn alltoallv(
    comm: &Communicator,
    send: &[u8],
    scounts: &[usize],
    sdispls: &[usize],
    recv: &mut [u8],
    rcounts: &[usize],
    rdispls: &[usize],
) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let ranges: Vec<(usize, usize)> = rdispls
        .iter()
        .copied()
        .zip(rcounts.iter().copied())
        .collect();
    let mut pieces = disjoint_mut("alltoallv", recv, &ranges)?;
    expect_bytes("alltoallv", scounts[me], rcounts[me], me)?;
    pieces[me].copy_from_slice(&send[sdispls[me]..sdispls[me] + scounts[me]]);
    for k in 1..n {
        let to = (me + k) % n;
        let from = (me + n - k) % n;
        let out = &send[sdispls[to]..sdispls[to] + scounts[to]];
        exchange(
            comm,
            "alltoall",
            out,
            to,
            &mut *pieces[from],
            from,
            ALLTOALL,
        )?;
    }
    Ok(())
}
