//! Linear gather: the root posts one non-blocking receive per rank, straight into its
//! block of the user's buffer, and waits for all; no copies, no relaying.

use dsmpi_runtime::{scope, wait_all, Communicator};

use crate::error::Result;
use crate::tags::GATHER;
use crate::util::{disjoint_mut, expect_bytes};

/// Linear gather of every rank's `send` into the root's `recv`.
pub(crate) fn gather(comm: &Communicator, root: usize, send: &[u8], recv: &mut [u8]) -> Result<()> {
    let m = send.len();
    let counts = vec![m; comm.size()];
    let displs: Vec<usize> = (0..comm.size()).map(|r| r * m).collect();
    gatherv(comm, root, send, recv, &counts, &displs)
}

/// Linear gatherv: rank r's block lands at `recv[displs[r]..][..counts[r]]`.
pub(crate) fn gatherv(
    comm: &Communicator,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
    counts: &[usize],
    displs: &[usize],
) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    if me != root {
        return Ok(comm.send(send, root, GATHER)?);
    }
    let ranges: Vec<(usize, usize)> = displs.iter().copied().zip(counts.iter().copied()).collect();
    let mut pieces = disjoint_mut("gatherv", recv, &ranges)?;
    pieces[me].copy_from_slice(send);
    scope(|s| {
        let mut reqs = Vec::with_capacity(n);
        let mut from = Vec::with_capacity(n);
        for (r, piece) in pieces.into_iter().enumerate().filter(|(r, _)| *r != me) {
            reqs.push(comm.irecv_into(s, piece, r, GATHER)?);
            from.push(r);
        }
        for (st, r) in wait_all(reqs)?.into_iter().zip(from) {
            expect_bytes("gather", st.bytes(), counts[r], r)?;
        }
        Ok(())
    })
}
