//! dsmpi's runtime: ranks, communicators, tags, point-to-point messaging, and the
//! transports underneath (a TCP rank mesh, and threads in one process).
pub mod bootstrap;
