//! dsmpi's runtime: ranks, communicators, tags, point-to-point messaging, and the
//! transports underneath.
//!
//! It owns everything between a program and the wire:
//! - start-up and shutdown ([`init`], [`Universe`], [`run_local`]), and the contract
//!   with the launcher ([`bootstrap`]);
//! - [`Communicator`]s with private contexts (`dup`, `split`, a library plane for
//!   collectives and windows);
//! - blocking and non-blocking point-to-point on [`bytemuck::Pod`] slices, with MPI's
//!   matching and ordering rules ([`request`]);
//! - the [`transport`] layer: one matching/rendezvous engine over byte-stream links
//!   (a TCP mesh between processes, Unix socket pairs between threads), with
//!   shared-memory rings carrying the frames between ranks on one host.
//!
//! ```
//! use dsmpi_runtime::{run_local, ANY_SOURCE, ANY_TAG};
//!
//! let out = run_local(4, |world| {
//!     if world.rank() == 0 {
//!         let mut total = 0u64;
//!         for _ in 1..world.size() {
//!             let mut x = [0u64];
//!             world.recv_into(&mut x, ANY_SOURCE, ANY_TAG).unwrap();
//!             total += x[0];
//!         }
//!         total
//!     } else {
//!         world.send(&[world.rank() as u64], 0, 5).unwrap();
//!         0
//!     }
//! })
//! .unwrap();
//! assert_eq!(out[0], 1 + 2 + 3);
//! ```

pub mod bootstrap;
pub mod comm;
pub mod error;
pub mod request;
pub mod transport;
pub mod universe;

pub use comm::{Communicator, Process, Status};
pub use error::{Error, Result};
pub use request::{scope, wait_all, wait_any, OwnedRequest, Request, Scope};
pub use universe::{hostname, init, run_local, run_local_with, LocalBackend, Universe};

/// A message tag. User tags are `0..=TAG_UB`; negative tags are the runtime's own.
pub type Tag = i32;

/// Receive from whichever rank sends first.
pub const ANY_SOURCE: usize = usize::MAX;

/// Receive a message with any tag.
pub const ANY_TAG: Tag = -1;

/// Largest user tag.
pub const TAG_UB: Tag = i32::MAX;
