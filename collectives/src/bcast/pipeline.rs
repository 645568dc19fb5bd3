//! Pipelined chain broadcast: the data flows root → root+1 → … → root−1 in segments.
//! Every rank receives and sends each byte once, so for a very large message the time
//! tends to m·β regardless of p; the p-deep chain makes it a poor choice for small
//! messages.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::BCAST;
use crate::tree;
use crate::util::Shape;

/// Chain broadcast of `buf` from `root`.
pub(crate) fn bcast(comm: &Communicator, root: usize, buf: &mut [u8]) -> Result<()> {
    tree::bcast(comm, Shape::Chain, root, buf, super::SEGMENT_BYTES, BCAST)
}
