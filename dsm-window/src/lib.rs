//! dsmpi's one-sided DSM windows (placeholder docs; see below).

mod element;
mod error;
mod fault;
mod proto;
mod segment;
mod shared;
mod window;

pub use element::{ElemKind, Element, Op};
pub use error::{Result, WinError};
pub use window::{Layout, LockType, RangeGuard, View, Window, WindowStats};

/// What a program using windows usually needs.
pub mod prelude {
    pub use crate::{Element, LockType, Op, WinError, Window};
}
