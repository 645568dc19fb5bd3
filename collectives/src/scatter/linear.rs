//! Linear scatter: the root posts one non-blocking send per rank (a blocking one for
//! a block the transport buffers at once), straight from the user's buffer, and
//! waits for all. p−1 messages leave one rank, but no data is
//! copied or relayed: the large-block choice.

use dsmpi_runtime::{scope, wait_all, Communicator};

use crate::error::Result;
use crate::tags::SCATTER;
use crate::util::recv_exact;

/// Linear scatter of `send` (at the root) into `recv`.
pub(crate) fn scatter(
    comm: &Communicator,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
) -> Result<()> {
    let m = recv.len();
    let counts = vec![m; comm.size()];
    let displs: Vec<usize> = (0..comm.size()).map(|r| r * m).collect();
    scatterv(comm, root, send, &counts, &displs, recv)
}

/// Linear scatterv: block r is `send[displs[r]..][..counts[r]]` (bytes, root only).
pub(crate) fn scatterv(
    comm: &Communicator,
    root: usize,
    send: &[u8],
    counts: &[usize],
    displs: &[usize],
    recv: &mut [u8],
) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    if me != root {
        return recv_exact(comm, "scatter", recv, root, SCATTER);
    }
    scope(|s| {
        let mut sends = Vec::with_capacity(n);
        // Start with the rank after the root, so that consecutive scatters from
        // different roots do not all hit rank 0 first.
        for r in (1..n).map(|k| (root + k) % n) {
            let block = &send[displs[r]..displs[r] + counts[r]];
            if comm.send_is_buffered(block.len()) {
                // Buffered at once: no request needed, and no wait on rank r.
                comm.send(block, r, SCATTER)?;
            } else {
                sends.push(comm.isend(s, block, r, SCATTER)?);
            }
        }
        recv.copy_from_slice(&send[displs[me]..displs[me] + counts[me]]);
        wait_all(sends)?;
        Ok(())
    })
}
