//! Bruck allgather: blocks are kept rotated so that this rank's own comes first; in
//! step k rank r sends its first min(2^k, p − 2^k) blocks to r − 2^k and appends the
//! same number received from r + 2^k. ⌈log2 p⌉ steps for any p, then one local
//! rotation puts the blocks in rank order. The small-message choice when p is not a
//! power of two.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::ALLGATHER;
use crate::util::{exchange, split_ro_rw};

/// Bruck allgather of `send` into `recv`.
pub(crate) fn allgather(comm: &Communicator, send: &[u8], recv: &mut [u8]) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let m = send.len();
    // tmp block j holds rank (me + j) mod p's block.
    let mut tmp = vec![0u8; n * m];
    tmp[..m].copy_from_slice(send);
    let mut pof = 1;
    while pof < n {
        let cnt = pof.min(n - pof);
        let (out, inb) = split_ro_rw(&mut tmp, 0..cnt * m, pof * m..(pof + cnt) * m);
        exchange(
            comm,
            "allgather",
            out,
            (me + n - pof) % n,
            inb,
            (me + pof) % n,
            ALLGATHER,
        )?;
        pof <<= 1;
    }
    for j in 0..n {
        let r = (me + j) % n;
        recv[r * m..(r + 1) * m].copy_from_slice(&tmp[j * m..(j + 1) * m]);
    }
    Ok(())
}
