//! The TCP rank mesh: one connection per pair of ranks, checked with the job token.
//!
//! Document 000's design, made to work: every rank listens on an ephemeral port, the
//! launcher hands out the table of addresses, rank `i` connects to every rank `j < i`
//! and accepts every rank `j > i`. Each connection opens with a 32-byte handshake
//! (`DSMPImsh`, the 128-bit job token, sender's rank, job size) answered by the same
//! from the other side. A connection whose handshake is wrong (another job, a port
//! scanner, a forger) is dropped with a log line and the mesh build goes on; a peer
//! that cannot be reached fails the build within the connect timeout, with an error
//! naming the rank and its address.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::bootstrap::JobToken;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"DSMPImsh";
/// Handshake length: magic, token, rank, size.
pub const HANDSHAKE: usize = 32;

fn handshake(token: &JobToken, rank: usize, size: usize) -> [u8; HANDSHAKE] {
    let mut h = [0u8; HANDSHAKE];
    h[..8].copy_from_slice(MAGIC);
    h[8..24].copy_from_slice(&token.0);
    h[24..28].copy_from_slice(&(rank as u32).to_be_bytes());
    h[28..32].copy_from_slice(&(size as u32).to_be_bytes());
    h
}

/// Checks a handshake; returns the sender's rank or why it is refused.
fn check(
    h: &[u8; HANDSHAKE],
    token: &JobToken,
    size: usize,
) -> std::result::Result<usize, &'static str> {
    if &h[..8] != MAGIC {
        return Err("not a dsmpi handshake");
    }
    if !token.matches(&h[8..24]) {
        return Err("wrong job token");
    }
    let rank = u32::from_be_bytes([h[24], h[25], h[26], h[27]]) as usize;
    let n = u32::from_be_bytes([h[28], h[29], h[30], h[31]]) as usize;
    if n != size {
        return Err("job size differs");
    }
    Ok(rank)
}

/// Socket buffer size (bytes asked of `SO_SNDBUF`/`SO_RCVBUF`; the kernel doubles it)
/// for mesh links between ranks of one host: by default none (`0`, the kernel's
/// autotuning), `DSMPI_TCP_BUF` to set one. A small fixed buffer on loopback makes the
/// kernel hand a large message over in pieces, so the receiver copies one out while
/// the sender copies the next in; measured with `dsmpi_bench --ops
/// latency,bw,bcast,alltoall` under `dsmexec --transport tcp -n 2`, 64 KiB gave 1 MiB
/// one-way 138–166 µs and 4.9–5.1 GB/s (autotuned: 183–406 µs, 3.3 GB/s) but made a
/// 256 KiB all-to-all 1.6× slower (both sides writing at once into small buffers),
/// so it stays a knob. Links to other hosts always keep autotuning: a fixed window
/// would cap a long fat network path.
pub const LOCAL_TCP_BUF: usize = 0;

/// Applies [`LOCAL_TCP_BUF`] (or `DSMPI_TCP_BUF`) to the links whose `same_host` is
/// true. Best effort: a refused `setsockopt` leaves the kernel's default.
pub fn size_local_buffers(links: &[Option<OwnedFd>], same_host: &[bool]) {
    let size = std::env::var("DSMPI_TCP_BUF")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(LOCAL_TCP_BUF);
    let Ok(b) = libc::c_int::try_from(size) else {
        return;
    };
    if b == 0 {
        return;
    }
    for (l, _) in links.iter().zip(same_host).filter(|(_, &s)| s) {
        let Some(fd) = l else { continue };
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: setsockopt with a pointer to a live c_int and its size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&b as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
    }
}

/// Formats a socket address from `accept(2)` for log lines.
pub fn describe_sockaddr(addr: &libc::sockaddr_storage) -> String {
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(addr as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            format!("{ip}:{}", u16::from_be(a.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            format!("[{ip}]:{}", u16::from_be(a.sin6_port))
        }
        libc::AF_UNIX => "a local socket".to_string(),
        f => format!("an address of family {f}"),
    }
}

/// A connection whose handshake has not fully arrived.
struct Pending {
    stream: TcpStream,
    peer: String,
    buf: [u8; HANDSHAKE],
    got: usize,
    /// For outgoing connections: the rank we dialled.
    dialled: Option<usize>,
}

/// Builds rank `me`'s links to every other rank of the mesh.
///
/// `listener` is this rank's bound listener (its address is `addrs[me]`). Returns one
/// connected stream per peer (`None` at `me`). Fails after `timeout` naming the ranks
/// not reached.
pub fn build_mesh(
    me: usize,
    token: &JobToken,
    listener: &TcpListener,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<Option<OwnedFd>>> {
    let n = addrs.len();
    let deadline = Instant::now() + timeout;
    let mut links: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut pending: Vec<Pending> = Vec::new();
    let hello = handshake(token, me, n);

    // Dial every lower rank. A listener's backlog completes the connection without
    // the peer's help, so dialling before accepting cannot deadlock.
    for (j, addr) in addrs.iter().enumerate().take(me) {
        let stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(addr, left.max(Duration::from_millis(1))) {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && e.kind() == io::ErrorKind::ConnectionRefused =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Error::Bootstrap(format!(
                        "rank {me} could not connect to rank {j} at {addr} within {:.1} s: {e}",
                        timeout.as_secs_f64()
                    )))
                }
            }
        };
        let mut stream = stream;
        stream
            .set_nodelay(true)
            .and_then(|_| stream.write_all(&hello))
            .and_then(|_| stream.set_nonblocking(true))
            .map_err(|e| {
                Error::Bootstrap(format!(
                    "rank {me}: handshake with rank {j} at {addr} failed: {e}"
                ))
            })?;
        pending.push(Pending {
            stream,
            peer: addr.to_string(),
            buf: [0; HANDSHAKE],
            got: 0,
            dialled: Some(j),
        });
    }

    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("listener", e))?;
    let have = |links: &[Option<TcpStream>]| {
        links
            .iter()
            .enumerate()
            .all(|(i, l)| i == me || l.is_some())
    };
    while !have(&links) {
        let now = Instant::now();
        if now >= deadline {
            let missing: Vec<String> = (0..n)
                .filter(|&i| i != me && links[i].is_none())
                .map(|i| format!("rank {i} at {}", addrs[i]))
                .collect();
            return Err(Error::Bootstrap(format!(
                "rank {me} could not link to {} within {:.1} s",
                missing.join(", "),
                timeout.as_secs_f64()
            )));
        }
        // Wait for the listener or any pending handshake.
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for p in &pending {
            fds.push(libc::pollfd {
                fd: p.stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let wait_ms = (deadline - now).as_millis().min(100) as i32;
        // SAFETY: `fds` is a live array of `fds.len()` pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };

        loop {
            match listener.accept() {
                Ok((s, addr)) => {
                    if s.set_nonblocking(true).is_ok() {
                        pending.push(Pending {
                            stream: s,
                            peer: addr.to_string(),
                            buf: [0; HANDSHAKE],
                            got: 0,
                            dialled: None,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("rank {me}: accepting mesh connections"),
                        e,
                    ))
                }
            }
        }

        let mut i = 0;
        while i < pending.len() {
            let p = &mut pending[i];
            let read = p.stream.read(&mut p.buf[p.got..]);
            let outcome: Option<std::result::Result<(), String>> = match read {
                Ok(0) => Some(Err("closed before its handshake".to_string())),
                Ok(k) => {
                    p.got += k;
                    (p.got == HANDSHAKE).then_some(Ok(()))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    None
                }
                Err(e) => Some(Err(e.to_string())),
            };
            let Some(outcome) = outcome else {
                i += 1;
                continue;
            };
            let p = pending.swap_remove(i);
            let verdict = outcome.and_then(|_| check(&p.buf, token, n).map_err(str::to_string));
            match (p.dialled, verdict) {
                (Some(j), Ok(r)) if r == j => links[j] = Some(p.stream),
                (Some(j), Ok(r)) => {
                    return Err(Error::Bootstrap(format!(
                        "rank {me}: the address {} given for rank {j} answered as rank {r}",
                        p.peer
                    )))
                }
                (Some(j), Err(why)) => {
                    return Err(Error::Bootstrap(format!(
                        "rank {me}: rank {j} at {} refused the mesh handshake: {why}",
                        p.peer
                    )))
                }
                (None, Ok(r)) if r > me && r < n && links[r].is_none() => {
                    let mut s = p.stream;
                    let ok = s
                        .set_nonblocking(false)
                        .and_then(|_| s.write_all(&hello))
                        .and_then(|_| s.set_nodelay(true));
                    match ok {
                        Ok(()) => links[r] = Some(s),
                        Err(e) => {
                            eprintln!("dsmpi: rank {me}: dropped connection from {}: {e}", p.peer)
                        }
                    }
                }
                (None, Ok(r)) => {
                    eprintln!(
                        "dsmpi: rank {me}: dropped connection from {}: it claims rank {r}, which is not expected here",
                        p.peer
                    );
                }
                (None, Err(why)) => {
                    eprintln!(
                        "dsmpi: rank {me}: dropped connection from {}: {why}",
                        p.peer
                    );
                }
            }
        }
    }
    Ok(links.into_iter().map(|l| l.map(OwnedFd::from)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_checks() {
        let t = JobToken([1; 16]);
        let h = handshake(&t, 3, 8);
        assert_eq!(check(&h, &t, 8), Ok(3));
        assert_eq!(check(&h, &t, 9), Err("job size differs"));
        assert_eq!(check(&h, &JobToken([2; 16]), 8), Err("wrong job token"));
        let mut bad = h;
        bad[0] = b'x';
        assert_eq!(check(&bad, &t, 8), Err("not a dsmpi handshake"));
    }

    #[test]
    fn forged_connections_during_startup_are_dropped() {
        let n = 3;
        let token = JobToken::random().unwrap();
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        // Forgers reach rank 0 first: garbage, a wrong token, a silent connection, and
        // a valid-looking handshake that claims to be rank 0 itself.
        let mut keep = Vec::new();
        let mut garbage = TcpStream::connect(addrs[0]).unwrap();
        garbage.write_all(&[0xAB; HANDSHAKE]).unwrap();
        keep.push(garbage);
        let mut wrong = TcpStream::connect(addrs[0]).unwrap();
        wrong
            .write_all(&handshake(&JobToken([9; 16]), 1, n))
            .unwrap();
        keep.push(wrong);
        keep.push(TcpStream::connect(addrs[0]).unwrap());
        let mut selfish = TcpStream::connect(addrs[0]).unwrap();
        selfish.write_all(&handshake(&token, 0, n)).unwrap();
        keep.push(selfish);
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(me, l)| {
                let addrs = addrs.clone();
                std::thread::spawn(move || {
                    build_mesh(me, &token, &l, &addrs, Duration::from_secs(30))
                })
            })
            .collect();
        for h in handles {
            let links = h.join().unwrap().unwrap();
            assert_eq!(links.iter().filter(|l| l.is_some()).count(), n - 1);
        }
        drop(keep);
    }

    #[test]
    fn unreachable_peer_fails_in_bounded_time_naming_it() {
        // A bound but never-accepting listener for rank 1 would still complete the
        // TCP connect; use a port nobody listens on instead.
        let l0 = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let addrs = vec![dead_addr, l0.local_addr().unwrap()];
        let token = JobToken::random().unwrap();
        let err = build_mesh(1, &token, &l0, &addrs, Duration::from_millis(300)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("rank 0") && msg.contains(&dead_addr.to_string()),
            "{msg}"
        );
    }
}
