//! dsmpi's one-sided DSM windows.

/// What a program using windows usually needs.
pub mod prelude {}
