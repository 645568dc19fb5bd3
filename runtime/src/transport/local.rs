//! Ranks as threads of one process: a full mesh of Unix socket pairs.
//!
//! The links are real sockets, so the same [`Engine`](super::engine::Engine) runs here
//! as over TCP: tests on this backend exercise the real matching, rendezvous and
//! teardown code without a launcher or the network.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use crate::error::{Error, Result};

/// One row of links per rank: `mesh[i][j]` is rank `i`'s end of the `i`–`j` pair.
pub fn socketpair_mesh(n: usize) -> Result<Vec<Vec<Option<OwnedFd>>>> {
    let mut mesh: Vec<Vec<Option<OwnedFd>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for (i, j) in (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))) {
        let (a, b) = UnixStream::pair().map_err(|e| Error::io("creating a socket pair", e))?;
        mesh[i][j] = Some(OwnedFd::from(a));
        mesh[j][i] = Some(OwnedFd::from(b));
    }
    Ok(mesh)
}
