//! Tags of the collectives' messages on a communicator's library plane.
//!
//! Every collective sends on `comm.library()`, so its tags never meet the user's. One
//! tag per operation (and per phase where an operation sends two kinds of message)
//! keeps a message of one collective from matching a receive of another even when a
//! rank runs ahead; consecutive calls of the *same* collective rely on MPI's
//! non-overtaking order between one sender and one receiver, as MPI libraries do.
//! The base keeps clear of small tags that other users of the library plane (windows)
//! are likely to pick.

use dsmpi_runtime::Tag;

const BASE: Tag = 0x4300_0000;

pub(crate) const BARRIER: Tag = BASE + 1;
pub(crate) const BARRIER_RELEASE: Tag = BASE + 2;
pub(crate) const BCAST: Tag = BASE + 3;
pub(crate) const SCATTER: Tag = BASE + 4;
pub(crate) const SCATTER_COUNTS: Tag = BASE + 5;
pub(crate) const GATHER: Tag = BASE + 6;
pub(crate) const GATHER_COUNTS: Tag = BASE + 7;
pub(crate) const ALLTOALL: Tag = BASE + 8;
pub(crate) const REDUCE: Tag = BASE + 9;
pub(crate) const ALLREDUCE: Tag = BASE + 10;
pub(crate) const ALLGATHER: Tag = BASE + 11;
pub(crate) const REDUCE_SCATTER: Tag = BASE + 12;
pub(crate) const SCAN: Tag = BASE + 13;
pub(crate) const EXSCAN: Tag = BASE + 14;
