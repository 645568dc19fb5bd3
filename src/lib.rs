//! **dsmpi**: an MPI-style runtime for Rust programs.
//!
//! This facade re-exports the workspace's crates under one name:
//! - the runtime ([`init`], [`Universe`], [`Communicator`], point-to-point,
//!   [`run_local`]) from `dsmpi-runtime`;
//! - [`collectives`] (algorithms, decision functions, derived datatypes) from
//!   `dsmpi-collectives`;
//! - [`window`] (one-sided DSM windows) from `dsmpi-window`.
//!
//! `use dsmpi::prelude::*;` brings what a program usually needs.
//!
//! ```
//! use dsmpi::prelude::*;
//!
//! let greetings = dsmpi::run_local(3, |world| {
//!     format!("I am process {} of {} on {}", world.rank(), world.size(), world.processor_name())
//! })
//! .unwrap();
//! assert_eq!(greetings.len(), 3);
//! ```

pub use dsmpi_runtime::*;

/// Collective operations and derived datatypes (`dsmpi-collectives`).
pub mod collectives {
    pub use dsmpi_collectives::*;
}

/// One-sided DSM windows (`dsmpi-window`).
pub mod window {
    pub use dsmpi_window::*;
}

/// What a dsmpi program usually needs, in one `use`.
pub mod prelude {
    pub use dsmpi_collectives::prelude::*;
    pub use dsmpi_runtime::{
        init, run_local, scope, wait_all, wait_any, Communicator, Error, Request, Status, Tag,
        Universe, ANY_SOURCE, ANY_TAG,
    };
    pub use dsmpi_window::prelude::*;
}
