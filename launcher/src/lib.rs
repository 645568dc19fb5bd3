//! dsmexec and dsmwrap.
