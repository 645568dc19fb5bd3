//! Ring allgather: in step k rank r passes block r − k to its right neighbour and
//! receives block r − k − 1 from its left one. Only neighbours talk, every link is
//! busy every step: the large-message choice. The same routine finishes the ring
//! allreduce and the scatter-allgather broadcast, on uneven blocks.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::ALLGATHER;
use crate::util::{exchange, split_ro_rw};

/// Ring allgather of `send` into `recv`.
pub(crate) fn allgather(comm: &Communicator, send: &[u8], recv: &mut [u8]) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let m = send.len();
    recv[me * m..(me + 1) * m].copy_from_slice(send);
    let offs: Vec<usize> = (0..=n).map(|i| i * m).collect();
    ring_blocks(comm, recv, &offs, me, |v| v, ALLGATHER)
}

/// The ring on a buffer already holding block `me` (bytes `offs[me]..offs[me + 1]`):
/// afterwards it holds all p blocks. Ranks are "virtual": position `v` on the ring is
/// rank `rank_of(v)`, so the broadcast can run it relative to its root.
pub(crate) fn ring_blocks(
    comm: &Communicator,
    buf: &mut [u8],
    offs: &[usize],
    me: usize,
    rank_of: impl Fn(usize) -> usize,
    tag: dsmpi_runtime::Tag,
) -> Result<()> {
    let n = comm.size();
    let right = rank_of((me + 1) % n);
    let left = rank_of((me + n - 1) % n);
    for k in 0..n.saturating_sub(1) {
        let sb = (me + n - k) % n;
        let rb = (me + 2 * n - k - 1) % n;
        let (out, inb) = split_ro_rw(buf, offs[sb]..offs[sb + 1], offs[rb]..offs[rb + 1]);
        exchange(comm, "allgather", out, right, inb, left, tag)?;
    }
    Ok(())
}
