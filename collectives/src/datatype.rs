//! Derived datatypes.
