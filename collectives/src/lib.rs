//! dsmpi's collectives: every classic algorithm of each collective operation, a
//! decision function per operation, reduction operations, and derived datatypes — all
//! written only on the runtime's point-to-point, on a communicator's private library
//! plane ([`Communicator::library`]).
//!
//! Layout (after MPICH's `src/mpi/coll`): one module per operation (`bcast`,
//! `scatter`, `gather`, `alltoall`, `allgather`, `reduce`, `allreduce`,
//! `reduce_scatter`, `scan`, `barrier`), each with one file per algorithm and, in its
//! `mod.rs`, the algorithm enum and its `choose` decision function. The rooted trees
//! share one engine (`tree.rs`), which segments large messages so trees pipeline.
//! [`op`] holds the reduction operations, [`datatype`] the derived datatypes and typed
//! transfers.
//!
//! Programs use the [`Collectives`] extension trait on [`Communicator`]; each
//! operation has a form that lets the decision function choose and a `_with` form
//! that forces an algorithm:
//!
//! ```
//! use dsmpi_collectives::prelude::*;
//!
//! let out = dsmpi_runtime::run_local(5, |world| {
//!     let mut buf = if world.rank() == 2 { [7u32, 8, 9] } else { [0; 3] };
//!     world.broadcast_with(Bcast::Binomial, 2, &mut buf)?;
//!     let mut max = [0u32];
//!     world.all_reduce_into(&[world.rank() as u32], &mut max, SystemOp::Max)?;
//!     Ok::<_, dsmpi_collectives::Error>((buf, max[0]))
//! })
//! .unwrap();
//! assert!(out.into_iter().all(|r| r.unwrap() == ([7, 8, 9], 4)));
//! ```
//!
//! Every algorithm works for any root, any number of ranks and any [`bytemuck::Pod`]
//! element type. As in MPI, all ranks must call the same collectives in the same
//! order with matching arguments; a length mismatch that shows in a message is
//! reported as an [`Error`] rather than leaving stale data.
//!
//! [`Communicator`]: dsmpi_runtime::Communicator
//! [`Communicator::library`]: dsmpi_runtime::Communicator::library

pub mod allgather;
pub mod allreduce;
pub mod alltoall;
mod api;
pub mod barrier;
pub mod bcast;
pub mod datatype;
mod error;
pub mod gather;
mod native;
pub mod op;
pub mod reduce;
pub mod reduce_scatter;
pub mod scan;
pub mod scatter;
mod tags;
mod tree;
mod util;

pub use api::Collectives;
pub use error::{Error, Result};

/// What a program using collectives usually needs: the [`Collectives`] and
/// [`TypedCommunication`](datatype::TypedCommunication) traits, the algorithm enums,
/// the reduction operations and the datatype constructors.
pub mod prelude {
    pub use crate::allgather::{Allgather, Allgatherv};
    pub use crate::allreduce::Allreduce;
    pub use crate::alltoall::{Alltoall, Alltoallv};
    pub use crate::api::Collectives;
    pub use crate::barrier::Barrier;
    pub use crate::bcast::Bcast;
    pub use crate::datatype::{Datatype, Order, Primitive, TypedCommunication, TypedData};
    pub use crate::gather::Gather;
    pub use crate::op::{MaxLoc, MinLoc, Operation, SystemOp, UserOp, ValueIndex};
    pub use crate::reduce::Reduce;
    pub use crate::reduce_scatter::ReduceScatter;
    pub use crate::scan::Scan;
    pub use crate::scatter::Scatter;
}
