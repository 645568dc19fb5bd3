//! The contract between a launcher (`dsmexec`/`dsmwrap`) and the ranks it starts.
//!
//! A launcher hands each rank its identity in environment variables (never on the
//! command line, so `ps` does not show the job token) and runs a small rendezvous
//! service, the *PMI link*, at `DSMPI_PMI_ADDR`. A dsmpi rank connects to it, says
//! `Hello` (token, rank, pid, host, the address of its own mesh listener), and receives
//! the `Table` of every rank's address once all ranks have said hello. It keeps the
//! link open: `Finalize` tells the launcher the rank finished cleanly, `Abort` asks it
//! to end the whole job with a message, and `PeerLost` reports that another rank's
//! links closed without a goodbye — so that when one rank dies and its peers fail in
//! turn, the launcher blames the rank that died first, not the first to exit. A program that is not a dsmpi program never
//! connects; the launcher runs it all the same (`dsmexec hostname`).
//!
//! Frames are `u32` big-endian length, then a one-byte opcode, then fields; integers are
//! big-endian, strings are a `u32` length and UTF-8 bytes (document 000's rule: network
//! byte order, every read and write loops until the whole buffer has moved).

use std::io::{self, Read, Write};

/// Environment variable: this rank's index in the world, `0..size`.
pub const ENV_RANK: &str = "DSMPI_RANK";
/// Environment variable: number of ranks in the job.
pub const ENV_SIZE: &str = "DSMPI_SIZE";
/// Environment variable: this rank's index among the ranks on its host.
pub const ENV_LOCAL_RANK: &str = "DSMPI_LOCAL_RANK";
/// Environment variable: number of ranks on this rank's host.
pub const ENV_LOCAL_SIZE: &str = "DSMPI_LOCAL_SIZE";
/// Environment variable: how many CPUs this rank's host gives the job, set by the
/// launcher when it pins ranks to CPUs (`dsmexec --bind-to core`), since a pinned
/// rank's own affinity then says 1. See [`host_cpus`].
pub const ENV_HOST_CPUS: &str = "DSMPI_HOST_CPUS";

/// CPUs of this host the job's ranks share: `DSMPI_HOST_CPUS` if the launcher set
/// it, else what this process may run on. Sizes waiting (whether to yield while
/// polling, whether window threads poll): more ranks than CPUs means oversubscribed.
pub fn host_cpus() -> usize {
    std::env::var(ENV_HOST_CPUS)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Environment variable: `ip:port` of the launcher's PMI service.
pub const ENV_PMI_ADDR: &str = "DSMPI_PMI_ADDR";
/// Environment variable: the 128-bit job token, 32 lowercase hex digits.
pub const ENV_TOKEN: &str = "DSMPI_JOB_TOKEN";
/// Environment variable: the IP address this rank's mesh listener binds to and
/// advertises (default: the PMI address's IP, which reaches the launcher's network).
pub const ENV_BIND_ADDR: &str = "DSMPI_BIND_ADDR";
/// Environment variable: the host name the launcher placed this rank on.
pub const ENV_HOSTNAME: &str = "DSMPI_HOSTNAME";

/// Largest PMI frame accepted; a bigger length means a corrupt or hostile peer.
pub const MAX_FRAME: u32 = 64 << 20;

/// A 128-bit random secret shared by every process of one job.
///
/// Every mesh connection and every PMI hello carries it; a connection without it is
/// dropped. Comparison is constant-time so a forger learns nothing from timing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct JobToken(pub [u8; 16]);

impl std::fmt::Debug for JobToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret itself.
        f.write_str("JobToken(..)")
    }
}

impl JobToken {
    /// A fresh token from the kernel's random source (`getrandom(2)`).
    pub fn random() -> io::Result<JobToken> {
        let mut b = [0u8; 16];
        let mut filled = 0;
        while filled < b.len() {
            // SAFETY: the pointer and length describe the unfilled tail of `b`.
            let n =
                unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            filled += n as usize;
        }
        Ok(JobToken(b))
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex digits; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<JobToken> {
        let s = s.trim();
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(JobToken(b))
    }

    /// Constant-time equality with raw bytes.
    pub fn matches(&self, other: &[u8]) -> bool {
        if other.len() != 16 {
            return false;
        }
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

/// One rank's entry in the address table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankAddr {
    /// Host name the rank runs on (what `processor_name()` returns).
    pub host: String,
    /// `ip:port` of the rank's mesh listener.
    pub addr: String,
}

/// A message on the PMI link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PmiMsg {
    /// Rank → launcher, first frame: who I am and where I listen.
    Hello {
        /// The job token; the launcher drops the link if it does not match.
        token: [u8; 16],
        /// World rank.
        rank: u32,
        /// Process id.
        pid: u32,
        /// Host name.
        host: String,
        /// `ip:port` of the rank's mesh listener.
        addr: String,
    },
    /// Launcher → rank: every rank's address, indexed by rank.
    Table(Vec<RankAddr>),
    /// Rank → launcher: this rank reached finalize cleanly.
    Finalize {
        /// World rank.
        rank: u32,
    },
    /// Rank → launcher: end the whole job now.
    Abort {
        /// World rank.
        rank: u32,
        /// Exit code the job should end with.
        code: i32,
        /// Why, for the user.
        msg: String,
    },
    /// Rank → launcher: `peer` vanished (its links closed without finalize).
    PeerLost {
        /// World rank of the reporter.
        rank: u32,
        /// World rank that vanished.
        peer: u32,
    },
}

const OP_HELLO: u8 = 1;
const OP_TABLE: u8 = 2;
const OP_FINALIZE: u8 = 3;
const OP_ABORT: u8 = 4;
const OP_PEER_LOST: u8 = 5;

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    put_u32(v, s.len() as u32);
    v.extend_from_slice(s.as_bytes());
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(bad("truncated PMI frame"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("PMI string is not UTF-8"))
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl PmiMsg {
    /// Encodes the frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![0u8; 4];
        match self {
            PmiMsg::Hello {
                token,
                rank,
                pid,
                host,
                addr,
            } => {
                v.push(OP_HELLO);
                v.extend_from_slice(token);
                put_u32(&mut v, *rank);
                put_u32(&mut v, *pid);
                put_str(&mut v, host);
                put_str(&mut v, addr);
            }
            PmiMsg::Table(entries) => {
                v.push(OP_TABLE);
                put_u32(&mut v, entries.len() as u32);
                for e in entries {
                    put_str(&mut v, &e.host);
                    put_str(&mut v, &e.addr);
                }
            }
            PmiMsg::Finalize { rank } => {
                v.push(OP_FINALIZE);
                put_u32(&mut v, *rank);
            }
            PmiMsg::Abort { rank, code, msg } => {
                v.push(OP_ABORT);
                put_u32(&mut v, *rank);
                put_u32(&mut v, *code as u32);
                put_str(&mut v, msg);
            }
            PmiMsg::PeerLost { rank, peer } => {
                v.push(OP_PEER_LOST);
                put_u32(&mut v, *rank);
                put_u32(&mut v, *peer);
            }
        }
        let len = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&len.to_be_bytes());
        v
    }

    /// Decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> io::Result<PmiMsg> {
        let mut c = Cursor(body);
        let op = c.take(1)?[0];
        let msg = match op {
            OP_HELLO => {
                let mut token = [0u8; 16];
                token.copy_from_slice(c.take(16)?);
                PmiMsg::Hello {
                    token,
                    rank: c.u32()?,
                    pid: c.u32()?,
                    host: c.string()?,
                    addr: c.string()?,
                }
            }
            OP_TABLE => {
                let n = c.u32()? as usize;
                let mut entries = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    entries.push(RankAddr {
                        host: c.string()?,
                        addr: c.string()?,
                    });
                }
                PmiMsg::Table(entries)
            }
            OP_FINALIZE => PmiMsg::Finalize { rank: c.u32()? },
            OP_ABORT => PmiMsg::Abort {
                rank: c.u32()?,
                code: c.u32()? as i32,
                msg: c.string()?,
            },
            OP_PEER_LOST => PmiMsg::PeerLost {
                rank: c.u32()?,
                peer: c.u32()?,
            },
            other => return Err(bad(&format!("unknown PMI opcode {other}"))),
        };
        if !c.0.is_empty() {
            return Err(bad("trailing bytes in PMI frame"));
        }
        Ok(msg)
    }

    /// Writes the whole frame.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())?;
        w.flush()
    }

    /// Reads one whole frame (blocking). `Ok(None)` on a clean end-of-file before
    /// the first byte of a frame.
    pub fn read_from(r: &mut impl Read) -> io::Result<Option<PmiMsg>> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match r.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(bad("PMI link closed inside a frame")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u32::from_be_bytes(len);
        if len == 0 || len > MAX_FRAME {
            return Err(bad(&format!("PMI frame length {len} out of range")));
        }
        let mut body = vec![0u8; len as usize];
        r.read_exact(&mut body)?;
        PmiMsg::decode(&body).map(Some)
    }
}

/// Incremental frame splitter for a launcher that reads PMI links without blocking.
///
/// Feed it whatever bytes arrived; it returns every complete message.
#[derive(Default, Debug)]
pub struct PmiDecoder {
    buf: Vec<u8>,
}

impl PmiDecoder {
    /// Appends bytes and returns the messages they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> io::Result<Vec<PmiMsg>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 4 {
                break;
            }
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            if len == 0 || len > MAX_FRAME {
                return Err(bad(&format!("PMI frame length {len} out of range")));
            }
            let total = 4 + len as usize;
            if self.buf.len() < total {
                break;
            }
            out.push(PmiMsg::decode(&self.buf[4..total])?);
            self.buf.drain(..total);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hex_round_trip() {
        let t = JobToken::random().unwrap();
        let h = t.to_hex();
        assert_eq!(h.len(), 32);
        assert_eq!(JobToken::from_hex(&h), Some(t));
        assert!(JobToken::from_hex("xyz").is_none());
        assert!(t.matches(&t.0));
        let mut other = t.0;
        other[15] ^= 1;
        assert!(!t.matches(&other));
        assert_ne!(JobToken::random().unwrap(), t);
    }

    #[test]
    fn frames_round_trip_whole_and_split() {
        let msgs = vec![
            PmiMsg::Hello {
                token: [7; 16],
                rank: 3,
                pid: 1234,
                host: "node1".into(),
                addr: "127.0.0.1:4000".into(),
            },
            PmiMsg::Table(vec![
                RankAddr {
                    host: "a".into(),
                    addr: "1.2.3.4:5".into(),
                },
                RankAddr {
                    host: "b".into(),
                    addr: "1.2.3.4:6".into(),
                },
            ]),
            PmiMsg::Finalize { rank: 9 },
            PmiMsg::Abort {
                rank: 1,
                code: -3,
                msg: "boom".into(),
            },
            PmiMsg::PeerLost { rank: 4, peer: 2 },
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(m.encode());
        }
        let mut r = &bytes[..];
        for m in &msgs {
            assert_eq!(PmiMsg::read_from(&mut r).unwrap().as_ref(), Some(m));
        }
        assert_eq!(PmiMsg::read_from(&mut r).unwrap(), None);
        // Byte by byte through the incremental decoder.
        let mut d = PmiDecoder::default();
        let mut got = Vec::new();
        for b in &bytes {
            got.extend(d.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn corrupt_frames_are_errors() {
        assert!(PmiMsg::decode(&[99]).is_err());
        assert!(PmiMsg::decode(&[OP_FINALIZE, 0, 0]).is_err());
        let mut d = PmiDecoder::default();
        assert!(d.feed(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
