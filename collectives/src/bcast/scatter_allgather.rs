//! Scatter + allgather broadcast (van de Geijn): the root scatters p blocks of the
//! buffer down a binomial tree, then a ring allgather gives everyone every block.
//! Each rank moves about 2m bytes whatever p is, where a tree moves m per level on
//! its critical path: the choice for large messages.
//!
//! Blocks are indexed by relative rank (the root's is block 0), so each subtree's
//! blocks are one contiguous range of the buffer and the scatter needs no copies.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::{ALLGATHER, BCAST};
use crate::tree::{self, Area};
use crate::util::{abs, block_range, rel, Node, Shape};

/// Scatter + allgather broadcast of `buf` from `root`.
pub(crate) fn bcast(comm: &Communicator, root: usize, buf: &mut [u8]) -> Result<()> {
    let n = comm.size();
    if n == 1 || buf.is_empty() {
        return Ok(());
    }
    let me = rel(comm.rank(), root, n);
    let mut offs: Vec<usize> = (0..n).map(|i| block_range(buf.len(), n, i).start).collect();
    offs.push(buf.len());
    let area = if me == 0 {
        Area::Root(&buf[..])
    } else {
        let end = Node::of(Shape::Binomial, n, me).end;
        Area::Node(&mut buf[offs[me]..offs[end]])
    };
    tree::scatter(comm, Shape::Binomial, root, &offs, area, BCAST)?;
    crate::allgather::ring::ring_blocks(comm, buf, &offs, me, |v| abs(v, root, n), ALLGATHER)
}
