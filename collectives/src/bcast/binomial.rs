//! Binomial-tree broadcast: in round k every rank that has the data sends it to the
//! rank 2^k further (relative to the root), so p ranks are reached in ⌈log2 p⌉ rounds.
//! Segmented by [`SEGMENT_BYTES`](super::SEGMENT_BYTES) so that large messages flow
//! down the levels concurrently.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::BCAST;
use crate::tree;
use crate::util::Shape;

/// Binomial-tree broadcast of `buf` from `root`.
pub(crate) fn bcast(comm: &Communicator, root: usize, buf: &mut [u8]) -> Result<()> {
    tree::bcast(
        comm,
        Shape::Binomial,
        root,
        buf,
        super::SEGMENT_BYTES,
        BCAST,
    )
}
