//! Recursive-doubling allgather: in step k rank r exchanges everything it has with
//! rank r XOR 2^k, doubling its data, so log2 p steps when p is a power of two.
//!
//! For other p, with q the largest power of two below p, rank q + i first hands its
//! block to rank i, the first q ranks run the doubling carrying blocks i and q + i
//! together (two contiguous ranges per exchange), and rank i finally sends the whole
//! result to rank q + i.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::ALLGATHER;
use crate::util::{exchange, recv_exact, split_ro_rw};

/// Recursive-doubling allgather of `send` into `recv`.
pub(crate) fn allgather(comm: &Communicator, send: &[u8], recv: &mut [u8]) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let m = send.len();
    let q = 1usize << (usize::BITS - 1 - n.leading_zeros());
    recv[me * m..(me + 1) * m].copy_from_slice(send);
    if me >= q {
        comm.send(send, me - q, ALLGATHER)?;
        return recv_exact(comm, "allgather", recv, me - q, ALLGATHER);
    }
    if me + q < n {
        recv_exact(
            comm,
            "allgather",
            &mut recv[(me + q) * m..(me + q + 1) * m],
            me + q,
            ALLGATHER,
        )?;
    }
    // Blocks of ranks [base, base + mask) and their partners [base + q, …) ∩ [0, p).
    let ranges = |base: usize, mask: usize| {
        let hi = (base + q).min(n)..(base + mask + q).min(n);
        [base * m..(base + mask) * m, hi.start * m..hi.end * m]
    };
    let mut mask = 1;
    while mask < q {
        let partner = me ^ mask;
        let mine = ranges(me & !(mask - 1), mask);
        let theirs = ranges(partner & !(mask - 1), mask);
        for (a, b) in mine.into_iter().zip(theirs) {
            let (out, inb) = split_ro_rw(recv, a, b);
            exchange(comm, "allgather", out, partner, inb, partner, ALLGATHER)?;
        }
        mask <<= 1;
    }
    if me + q < n {
        comm.send(recv, me + q, ALLGATHER)?;
    }
    Ok(())
}
