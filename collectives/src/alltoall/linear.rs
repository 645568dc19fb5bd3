//! Linear all-to-all: every receive and every send is posted at once (non-blocking),
//! then all are waited for. The transport overlaps them as it can; partners are
//! visited in the order rank + 1, rank + 2, … so that not every rank targets rank 0
//! first. When the transport buffers every block at once (small blocks), the sends
//! go out one after another with blocking sends and the blocks come in with
//! blocking receives: no requests, the transport's fast paths.

use dsmpi_runtime::{scope, wait_all, Communicator};

use crate::error::Result;
use crate::tags::ALLTOALL;
use crate::util::{disjoint_mut, expect_bytes};

/// Linear alltoallv (counts and displacements in bytes).
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
    let mut pieces: Vec<Option<&mut [u8]>> = disjoint_mut("alltoallv", recv, &ranges)?
        .into_iter()
        .map(Some)
        .collect();
    let own = &send[sdispls[me]..sdispls[me] + scounts[me]];
    match pieces[me].take() {
        Some(p) if p.len() == own.len() => p.copy_from_slice(own),
        _ => {
            return Err(crate::Error::CountMismatch {
                op: "alltoallv",
                sender: me,
                expected: rcounts[me],
                got: scounts[me],
            })
        }
    }
    if (0..n).all(|r| r == me || comm.send_is_buffered(scounts[r])) {
        // Every send is buffered at once: send them all, then receive each block
        // with a blocking receive; both take the transport's fast paths, and no
        // rank can wait on another's sends.
        for k in 1..n {
            let r = (me + k) % n;
            comm.send(&send[sdispls[r]..sdispls[r] + scounts[r]], r, ALLTOALL)?;
        }
        for k in 1..n {
            let r = (me + n - k) % n;
            if let Some(p) = pieces[r].take() {
                let want = p.len();
                let st = comm.recv_into(p, r, ALLTOALL)?;
                expect_bytes("alltoall", st.bytes(), want, r)?;
            }
        }
        return Ok(());
    }
    scope(|s| {
        let mut recvs = Vec::with_capacity(n);
        let mut from = Vec::with_capacity(n);
        for k in 1..n {
            let r = (me + n - k) % n;
            if let Some(p) = pieces[r].take() {
                recvs.push(comm.irecv_into(s, p, r, ALLTOALL)?);
                from.push(r);
            }
        }
        let mut sends = Vec::with_capacity(n);
        for k in 1..n {
            let r = (me + k) % n;
            sends.push(comm.isend(s, &send[sdispls[r]..sdispls[r] + scounts[r]], r, ALLTOALL)?);
        }
        for (st, r) in wait_all(recvs)?.into_iter().zip(from) {
            expect_bytes("alltoall", st.bytes(), rcounts[r], r)?;
        }
        wait_all(sends)?;
        Ok(())
    })
}
