//! Linear (star) broadcast: the root sends the whole buffer to every other rank.
//!
//! One step deep, so the best latency for tiny messages on very few ranks, but the
//! root's link carries (p−1)·m bytes. Not segmented: every message leaves the root at
//! once (non-blocking), so there is nothing to pipeline.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::BCAST;
use crate::tree;
use crate::util::Shape;

/// Star broadcast of `buf` from `root`.
pub(crate) fn bcast(comm: &Communicator, root: usize, buf: &mut [u8]) -> Result<()> {
    tree::bcast(comm, Shape::Star, root, buf, usize::MAX, BCAST)
}
