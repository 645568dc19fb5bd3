//! dsmpi's collectives: one algorithm per file per operation, a decision function per
//! operation, and derived datatypes. Written only on the runtime's point-to-point.

/// What a program using collectives usually needs.
pub mod prelude {}
