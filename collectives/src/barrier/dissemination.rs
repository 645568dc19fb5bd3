//! Dissemination barrier (Hensgen, Finkel and Manber): in round k rank r sends an
//! empty message to r + 2^k and receives one from r − 2^k (mod p). After ⌈log2 p⌉
//! rounds every rank has heard, transitively, from every other — for any p, not only
//! powers of two.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::BARRIER;
use crate::util::exchange;

/// Dissemination barrier.
pub(crate) fn barrier(comm: &Communicator) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let mut dist = 1;
    while dist < n {
        let to = (me + dist) % n;
        let from = (me + n - dist) % n;
        exchange::<u8>(comm, "barrier", &[], to, &mut [], from, BARRIER)?;
        dist <<= 1;
    }
    Ok(())
}
