//! The launcher's side of the PMI link (see `dsmpi_runtime::bootstrap`): collect every
//! rank's `Hello`, answer with the address `Table`, then note `Finalize` and `Abort`.
//!
//! The server never blocks: the job's event loop polls its descriptors and calls
//! [`PmiServer::handle`] when one is ready. It decides nothing about the job; what
//! matters to the job comes back as [`PmiEvent`]s. A link that breaks the protocol is
//! closed and reported, and the job goes on: the processes' exits decide its fate, not
//! the links (a program that is not a dsmpi program never connects at all).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};

use dsmpi_runtime::bootstrap::{JobToken, PmiDecoder, PmiMsg, RankAddr};
use nix::poll::PollFlags;

/// Something the job loop should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PmiEvent {
    /// A link was closed for breaking the protocol; the job goes on.
    Dropped {
        /// The peer's address.
        peer: SocketAddr,
        /// What it did wrong, for the user.
        reason: String,
    },
    /// Every rank said hello and has been sent the table.
    TableSent,
    /// A rank reached finalize cleanly.
    Finalized {
        /// World rank.
        rank: u32,
    },
    /// A rank reports that `peer` vanished: its links closed without finalize.
    PeerLost {
        /// World rank of the reporter.
        rank: u32,
        /// World rank that vanished.
        peer: u32,
    },
    /// A rank asked to end the job.
    Abort {
        /// World rank.
        rank: u32,
        /// The pid it gave in its hello.
        pid: u32,
        /// The exit code it asked for.
        code: i32,
        /// Its message.
        msg: String,
    },
}

/// Which of the server's descriptors became ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmiSource {
    /// The listening socket: connections to accept.
    Listener,
    /// An accepted link, by slot.
    Link(usize),
}

/// What a rank said in its hello.
#[derive(Debug)]
struct Hello {
    pid: u32,
    entry: RankAddr,
    link: usize,
}

/// One accepted connection.
#[derive(Debug)]
struct Link {
    stream: TcpStream,
    peer: SocketAddr,
    decoder: PmiDecoder,
    /// Set once the link has said a valid hello.
    rank: Option<u32>,
    /// Bytes queued for the peer that the socket has not taken yet.
    outbox: Vec<u8>,
}

/// The rendezvous service for one job.
#[derive(Debug)]
pub struct PmiServer {
    listener: TcpListener,
    token: JobToken,
    hellos: Vec<Option<Hello>>,
    finalized: Vec<bool>,
    links: Vec<Option<Link>>,
    table_sent: bool,
}

impl PmiServer {
    /// Listens on an ephemeral port of `ip` for the `size` ranks of the job `token`.
    pub fn bind(ip: IpAddr, token: JobToken, size: u32) -> io::Result<PmiServer> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
        listener.set_nonblocking(true)?;
        Ok(PmiServer {
            listener,
            token,
            hellos: (0..size).map(|_| None).collect(),
            finalized: vec![false; size as usize],
            links: Vec::new(),
            table_sent: false,
        })
    }

    /// The `ip:port` ranks connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether `rank` has sent `Finalize`.
    pub fn is_finalized(&self, rank: u32) -> bool {
        self.finalized.get(rank as usize).copied().unwrap_or(false)
    }

    /// Whether the table has gone out (every rank said hello).
    pub fn table_sent(&self) -> bool {
        self.table_sent
    }

    /// The descriptors to poll and what to poll them for.
    pub fn poll_set(&self) -> Vec<(PmiSource, BorrowedFd<'_>, PollFlags)> {
        let mut out = vec![(
            PmiSource::Listener,
            self.listener.as_fd(),
            PollFlags::POLLIN,
        )];
        for (slot, link) in self.links.iter().enumerate() {
            if let Some(link) = link {
                let mut flags = PollFlags::POLLIN;
                if !link.outbox.is_empty() {
                    flags |= PollFlags::POLLOUT;
                }
                out.push((PmiSource::Link(slot), link.stream.as_fd(), flags));
            }
        }
        out
    }

    /// Services a descriptor `poll(2)` reported ready, appending what happened to
    /// `events`.
    pub fn handle(&mut self, src: PmiSource, ready: PollFlags, events: &mut Vec<PmiEvent>) {
        match src {
            PmiSource::Listener => self.accept_all(),
            PmiSource::Link(slot) => {
                if ready.intersects(PollFlags::POLLOUT) {
                    self.flush(slot);
                }
                if ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_link(slot, events);
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    // A link that cannot be made non-blocking would stall the whole
                    // launcher; refuse it (the rank's hello fails and it reports).
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    // Frames are small and latency-bound: the table goes out at once.
                    let _ = stream.set_nodelay(true);
                    let link = Link {
                        stream,
                        peer,
                        decoder: PmiDecoder::default(),
                        rank: None,
                        outbox: Vec::new(),
                    };
                    match self.links.iter().position(Option::is_none) {
                        Some(free) => self.links[free] = Some(link),
                        None => self.links.push(Some(link)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: all accepted. Anything else (EMFILE, a connection reset
                // while queued) leaves nothing to do now; poll will say when to retry.
                Err(_) => return,
            }
        }
    }

    fn read_link(&mut self, slot: usize, events: &mut Vec<PmiEvent>) {
        let Some(link) = self.links.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let n = match link.stream.read(&mut buf) {
            Ok(0) => return self.close(slot),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            // A reset link is a closed link: the process's exit will tell the story.
            Err(_) => return self.close(slot),
        };
        let msgs = match link.decoder.feed(&buf[..n]) {
            Ok(msgs) => msgs,
            Err(e) => return self.drop_link(slot, format!("bad frame: {e}"), events),
        };
        for msg in msgs {
            if let Err(reason) = self.on_message(slot, msg, events) {
                return self.drop_link(slot, reason, events);
            }
        }
    }

    /// Applies one message from the link in `slot`; `Err` is why the link must go.
    fn on_message(
        &mut self,
        slot: usize,
        msg: PmiMsg,
        events: &mut Vec<PmiEvent>,
    ) -> Result<(), String> {
        let size = self.hellos.len();
        let link_rank = self.links[slot].as_ref().and_then(|l| l.rank);
        match (link_rank, msg) {
            (
                None,
                PmiMsg::Hello {
                    token,
                    rank,
                    pid,
                    host,
                    addr,
                },
            ) => {
                if !self.token.matches(&token) {
                    return Err("wrong job token".into());
                }
                let Some(entry) = self.hellos.get_mut(rank as usize) else {
                    return Err(format!("rank {rank} out of range (job has {size} ranks)"));
                };
                if entry.is_some() {
                    return Err(format!("rank {rank} already said hello"));
                }
                *entry = Some(Hello {
                    pid,
                    entry: RankAddr { host, addr },
                    link: slot,
                });
                if let Some(link) = self.links[slot].as_mut() {
                    link.rank = Some(rank);
                }
                if self.hellos.iter().all(Option::is_some) {
                    self.send_table();
                    events.push(PmiEvent::TableSent);
                }
                Ok(())
            }
            (None, other) => Err(format!("expected Hello first, got {}", op_name(&other))),
            (Some(mine), PmiMsg::Finalize { rank }) if rank == mine => {
                self.finalized[mine as usize] = true;
                events.push(PmiEvent::Finalized { rank });
                Ok(())
            }
            (Some(mine), PmiMsg::Abort { rank, code, msg }) if rank == mine => {
                let pid = self.hellos[mine as usize].as_ref().map_or(0, |h| h.pid);
                events.push(PmiEvent::Abort {
                    rank,
                    pid,
                    code,
                    msg,
                });
                Ok(())
            }
            (Some(mine), PmiMsg::PeerLost { rank, peer }) if rank == mine => {
                if peer as usize >= self.hellos.len() {
                    return Err(format!("rank {mine} reported unknown rank {peer} lost"));
                }
                events.push(PmiEvent::PeerLost { rank, peer });
                Ok(())
            }
            (
                Some(mine),
                PmiMsg::Finalize { rank }
                | PmiMsg::Abort { rank, .. }
                | PmiMsg::PeerLost { rank, .. },
            ) => Err(format!("rank {mine}'s link spoke for rank {rank}")),
            (Some(_), other) => Err(format!("unexpected {} after Hello", op_name(&other))),
        }
    }

    fn send_table(&mut self) {
        let table: Vec<RankAddr> = self
            .hellos
            .iter()
            .flatten()
            .map(|h| h.entry.clone())
            .collect();
        let frame = PmiMsg::Table(table).encode();
        self.table_sent = true;
        let slots: Vec<usize> = self.hellos.iter().flatten().map(|h| h.link).collect();
        for slot in slots {
            // A rank whose link is already gone simply misses the table.
            if let Some(link) = self.links[slot].as_mut() {
                link.outbox.extend_from_slice(&frame);
                self.flush(slot);
            }
        }
    }

    /// Writes as much of the link's outbox as the socket takes now.
    fn flush(&mut self, slot: usize) {
        let Some(link) = self.links.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        while !link.outbox.is_empty() {
            match link.stream.write(&link.outbox) {
                Ok(0) => return self.close(slot),
                Ok(n) => {
                    link.outbox.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close(slot),
            }
        }
    }

    fn drop_link(&mut self, slot: usize, reason: String, events: &mut Vec<PmiEvent>) {
        if let Some(link) = self.links.get(slot).and_then(Option::as_ref) {
            events.push(PmiEvent::Dropped {
                peer: link.peer,
                reason,
            });
        }
        self.close(slot);
    }

    fn close(&mut self, slot: usize) {
        if let Some(link) = self.links.get_mut(slot) {
            *link = None;
        }
    }
}

fn op_name(msg: &PmiMsg) -> &'static str {
    match msg {
        PmiMsg::Hello { .. } => "Hello",
        PmiMsg::Table(_) => "Table",
        PmiMsg::Finalize { .. } => "Finalize",
        PmiMsg::Abort { .. } => "Abort",
        PmiMsg::PeerLost { .. } => "PeerLost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// Drives `server` until `done` says so, returning every event; panics after a
    /// generous deadline so a bug cannot hang the test run.
    fn serve(
        server: &mut PmiServer,
        events: &mut Vec<PmiEvent>,
        mut done: impl FnMut(&PmiServer, &[PmiEvent]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(server, events) {
            assert!(Instant::now() < deadline, "PMI test timed out: {events:?}");
            let ready: Vec<(PmiSource, PollFlags)> = {
                let set = server.poll_set();
                let mut fds: Vec<_> = set
                    .iter()
                    .map(|(_, fd, flags)| nix::poll::PollFd::new(*fd, *flags))
                    .collect();
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)).expect("poll");
                set.iter()
                    .zip(&fds)
                    .filter_map(|((src, _, _), fd)| {
                        fd.revents().filter(|r| !r.is_empty()).map(|r| (*src, r))
                    })
                    .collect()
            };
            for (src, flags) in ready {
                server.handle(src, flags, events);
            }
        }
    }

    fn hello(token: [u8; 16], rank: u32) -> PmiMsg {
        PmiMsg::Hello {
            token,
            rank,
            pid: 1000 + rank,
            host: format!("host{rank}"),
            addr: format!("127.0.0.1:{}", 5000 + rank),
        }
    }

    /// A fake rank: connects, says `msg`, and returns the link and the first reply.
    fn fake_rank(addr: SocketAddr, msg: PmiMsg) -> JoinHandle<(TcpStream, Option<PmiMsg>)> {
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("set timeout");
            msg.write_to(&mut s).expect("send");
            let reply = PmiMsg::read_from(&mut s).ok().flatten();
            (s, reply)
        })
    }

    fn expected_table(n: u32) -> PmiMsg {
        PmiMsg::Table(
            (0..n)
                .map(|r| RankAddr {
                    host: format!("host{r}"),
                    addr: format!("127.0.0.1:{}", 5000 + r),
                })
                .collect(),
        )
    }

    #[test]
    fn every_rank_gets_the_same_table_and_intruders_are_dropped() {
        let token = JobToken::random().expect("token");
        let mut server = PmiServer::bind(LOCALHOST, token, 3).expect("bind");
        let addr = server.local_addr().expect("addr");
        let mut events = Vec::new();

        // Intruders first, so they are in the way of the real ranks.
        let mut wrong = token.0;
        wrong[0] ^= 0xff;
        let intruders = vec![
            fake_rank(addr, hello(wrong, 0)),
            fake_rank(addr, hello(token.0, 7)),
            fake_rank(addr, PmiMsg::Finalize { rank: 0 }),
        ];
        serve(&mut server, &mut events, |_, ev| {
            ev.iter()
                .filter(|e| matches!(e, PmiEvent::Dropped { .. }))
                .count()
                == 3
        });
        let reasons: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                PmiEvent::Dropped { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert!(reasons.iter().any(|r| r.contains("token")), "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("out of range")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("expected Hello")),
            "{reasons:?}"
        );
        for t in intruders {
            // Dropped without an answer: the intruder sees end of file.
            let (_, reply) = t.join().expect("intruder thread");
            assert_eq!(reply, None);
        }

        let ranks: Vec<_> = (0..3).map(|r| fake_rank(addr, hello(token.0, r))).collect();
        // A second hello for a rank already taken must not disturb anything either.
        serve(&mut server, &mut events, |s, _| s.table_sent());
        let dup = fake_rank(addr, hello(token.0, 1));
        serve(&mut server, &mut events, |_, _| dup.is_finished());
        assert_eq!(dup.join().expect("dup thread").1, None);
        assert!(events
            .iter()
            .any(|e| matches!(e, PmiEvent::Dropped { reason, .. } if reason.contains("already"))));
        assert_eq!(
            events.iter().filter(|e| **e == PmiEvent::TableSent).count(),
            1
        );

        let mut links = Vec::new();
        for t in ranks {
            let (link, reply) = t.join().expect("rank thread");
            assert_eq!(reply, Some(expected_table(3)));
            links.push(link);
        }

        // Links stay open: finalize and abort come through them.
        PmiMsg::Finalize { rank: 1 }
            .write_to(&mut links[1])
            .expect("finalize");
        PmiMsg::Abort {
            rank: 2,
            code: 5,
            msg: "out of cheese".into(),
        }
        .write_to(&mut links[2])
        .expect("abort");
        serve(&mut server, &mut events, |_, ev| {
            ev.iter().any(|e| matches!(e, PmiEvent::Abort { .. }))
                && ev.contains(&PmiEvent::Finalized { rank: 1 })
        });
        assert!(server.is_finalized(1));
        assert!(!server.is_finalized(0));
        assert!(events.contains(&PmiEvent::Abort {
            rank: 2,
            pid: 1002,
            code: 5,
            msg: "out of cheese".into()
        }));

        // A rank may not speak for another; a closed link is not an event.
        PmiMsg::Finalize { rank: 2 }
            .write_to(&mut links[0])
            .expect("finalize");
        drop(links.pop());
        serve(&mut server, &mut events, |_, ev| {
            ev.iter().any(
                |e| matches!(e, PmiEvent::Dropped { reason, .. } if reason.contains("spoke for")),
            )
        });
        assert!(!server.is_finalized(2));
    }

    #[test]
    fn garbage_is_dropped() {
        let token = JobToken::random().expect("token");
        let mut server = PmiServer::bind(LOCALHOST, token, 1).expect("bind");
        let addr = server.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(&[0xff; 8]).expect("send");
            s
        });
        let mut events = Vec::new();
        serve(&mut server, &mut events, |_, ev| !ev.is_empty());
        assert!(
            matches!(&events[0], PmiEvent::Dropped { reason, .. } if reason.contains("bad frame"))
        );
        drop(t.join());
    }
}
