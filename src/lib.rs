//! dsmpi facade.
