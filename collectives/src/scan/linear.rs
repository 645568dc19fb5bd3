//! Linear (chain) scan: rank r waits for the prefix of ranks 0..r from r − 1, combines
//! and passes its own prefix to r + 1.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;
use crate::tags::{EXSCAN, SCAN};
use crate::util::recv_exact;

/// Chain scan of `send` into `recv`.
pub(crate) fn scan<T: Pod>(
    comm: &Communicator,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
    exclusive: bool,
) -> Result<()> {
    let me = comm.rank();
    let tag = if exclusive { EXSCAN } else { SCAN };
    // The prefix through this rank, to pass on.
    let mut upto = send.to_vec();
    if me > 0 {
        let mut before = vec![T::zeroed(); send.len()];
        recv_exact(comm, "scan", &mut before, me - 1, tag)?;
        op.apply(&before, &mut upto);
        if exclusive {
            recv.copy_from_slice(&before);
        }
    }
    if !exclusive {
        recv.copy_from_slice(&upto);
    }
    if me + 1 < comm.size() {
        comm.send(&upto, me + 1, tag)?;
    }
    Ok(())
}
