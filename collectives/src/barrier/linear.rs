//! Linear barrier: every rank signals rank 0, which releases everyone once all have
//! arrived. Two message rounds through one rank; simple and a reference for the
//! dissemination barrier.

use dsmpi_runtime::{scope, wait_all, Communicator};

use crate::error::Result;
use crate::tags::{BARRIER, BARRIER_RELEASE};
use crate::util::recv_exact;

/// Linear barrier through rank 0.
pub(crate) fn barrier(comm: &Communicator) -> Result<()> {
    let n = comm.size();
    if comm.rank() != 0 {
        comm.send::<u8>(&[], 0, BARRIER)?;
        return recv_exact::<u8>(comm, "barrier", &mut [], 0, BARRIER_RELEASE);
    }
    for r in 1..n {
        recv_exact::<u8>(comm, "barrier", &mut [], r, BARRIER)?;
    }
    scope(|s| {
        let mut reqs = Vec::with_capacity(n);
        for r in 1..n {
            reqs.push(comm.isend::<u8>(s, &[], r, BARRIER_RELEASE)?);
        }
        wait_all(reqs)?;
        Ok(())
    })
}
