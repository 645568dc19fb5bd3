//! The link between `dsmexec` and a per-host daemon (`dsmwrap --daemon`).
//!
//! The link is the launch agent's channel (ssh's stdin and stdout, or `srun`'s), so
//! everything secret travels inside it and nothing on a command line: the job token
//! is only ever in a [`Down::Spec`] frame. Frames are a `u32` big-endian length (of
//! what follows), a one-byte opcode, then fields: integers big-endian, byte strings a
//! `u32` length and the bytes (document 000's network-order rule, as the PMI link).
//!
//! Both ends are non-blocking: [`FramedLink`] queues what the pipe cannot take yet,
//! so a slow reader never stalls the event loop that must also notice heartbeats.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

/// Protocol version a daemon announces in its hello; dsmexec refuses any other, so
/// mismatched installs fail with a clear message instead of garbled frames.
/// Version 2 added the launch tree (relayed frames, the subtree in the spec);
/// version 3, `bind_cores` in the spec.
pub const VERSION: u32 = 3;

/// Largest frame accepted (a shipped program comes in chunks well below this).
pub const MAX_FRAME: usize = 16 << 20;

/// Size of the pieces a shipped program is sent in.
pub const SHIP_CHUNK: usize = 1 << 20;

/// One host of a daemon's launch subtree.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TreeNode {
    /// The host's index in dsmexec's list of remote hosts: the address relayed
    /// frames carry.
    pub index: u32,
    /// The name to reach it by (through the launch agent).
    pub name: String,
    /// The index of the host that starts it: the daemon's own index for its
    /// children.
    pub parent: u32,
}

/// What a daemon must know to start its host's ranks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JobSpec {
    /// The job token as 32 hex digits.
    pub token_hex: String,
    /// The port of dsmexec's PMI listener.
    pub pmi_port: u16,
    /// The IP of dsmexec's host to use when the daemon cannot tell it from its link
    /// (no `SSH_CONNECTION`, e.g. under `srun`).
    pub pmi_ip: String,
    /// Number of ranks in the job.
    pub world_size: u32,
    /// The host name the ranks see in `DSMPI_HOSTNAME` (the hostfile's name).
    pub host: String,
    /// World ranks this host runs, in local-rank order.
    pub ranks: Vec<u32>,
    /// `argv[0]` as the user wrote it.
    pub argv0: Vec<u8>,
    /// The program to resolve on this host (a path, or a name looked up on `PATH`).
    pub program: Vec<u8>,
    /// Program arguments.
    pub args: Vec<Vec<u8>>,
    /// Extra environment (`-x`), name and value.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory for the ranks (`--wdir`); empty for the daemon's own.
    pub wdir: Vec<u8>,
    /// SHA-256 (hex) of the program if `--ship` may send it; empty otherwise.
    pub ship_hash: String,
    /// Milliseconds between heartbeats.
    pub heartbeat_ms: u32,
    /// Milliseconds of silence after which the other end counts as gone.
    pub dead_after_ms: u32,
    /// This host's index in dsmexec's list of remote hosts.
    pub host_index: u32,
    /// Whether this daemon was started by another daemon: its `SSH_CONNECTION`
    /// then names that daemon's host, not dsmexec's, so `pmi_ip` is to be used.
    pub via_daemon: bool,
    /// The hosts this daemon starts and relays for (its whole launch subtree; its
    /// children are the nodes whose parent is `host_index`). Empty for a leaf.
    pub subtree: Vec<TreeNode>,
    /// The launch agent's words, for starting the children (same as dsmexec's).
    pub agent: Vec<String>,
    /// `dsmwrap`'s path on the children.
    pub wrap: String,
    /// Milliseconds a child may take to answer (`--connect-timeout`).
    pub connect_timeout_ms: u32,
    /// `--bind-to core`: pin each rank to a CPU of its own.
    pub bind_cores: bool,
}

/// dsmexec → daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Down {
    /// The job; the first frame.
    Spec(Box<JobSpec>),
    /// A piece of the shipped program (after [`Up::NeedProgram`]).
    ProgramChunk(Vec<u8>),
    /// The whole program has been sent.
    ProgramEnd,
    /// Bytes for rank 0's stdin.
    Stdin(Vec<u8>),
    /// End of rank 0's stdin.
    StdinEof,
    /// Send a signal to every live rank: to its process group if `group`, else to
    /// the rank's process only.
    Signal {
        /// Signal number.
        signo: i32,
        /// Whole process group or the process alone.
        group: bool,
    },
    /// I am alive.
    Heartbeat,
    /// The job is over: SIGKILL what is left, clean up, exit. A daemon passes it
    /// on to its children first, so one frame ends a whole subtree.
    Shutdown,
    /// A frame (body: opcode and fields, no length) for host `host` further down
    /// the launch tree; each daemon on the way passes it to the child whose subtree
    /// holds `host`, and the last one unwraps it.
    Relay {
        /// Destination host index.
        host: u32,
        /// The frame body meant for it.
        frame: Vec<u8>,
    },
}

/// Daemon → dsmexec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Up {
    /// The first frame, before the spec is read.
    Hello {
        /// [`VERSION`].
        version: u32,
        /// The daemon's pid.
        pid: u32,
        /// The IP the launcher's host has as seen from this host (ssh's client
        /// address), empty if unknown.
        launcher_ip: String,
    },
    /// The program is not on this host: send it.
    NeedProgram,
    /// The ranks run; their pids in local-rank order.
    Started {
        /// `(world rank, pid)`.
        pids: Vec<(u32, u32)>,
    },
    /// Output of a rank: `stream` 1 for stdout, 2 for stderr.
    Output {
        /// World rank.
        rank: u32,
        /// 1 stdout, 2 stderr.
        stream: u8,
        /// The bytes, not necessarily whole lines.
        data: Vec<u8>,
    },
    /// A rank's output stream ended.
    OutputEnd {
        /// World rank.
        rank: u32,
        /// 1 stdout, 2 stderr.
        stream: u8,
    },
    /// A rank ended.
    RankExit {
        /// World rank.
        rank: u32,
        /// Its pid.
        pid: u32,
        /// 0 exit code, 1 signal, 2 vanished.
        kind: u8,
        /// The code or signal number.
        value: i32,
    },
    /// I am alive.
    Heartbeat,
    /// The ranks could not be started; `code` is the exit code it calls for
    /// (127 not found, 126 not executable, 1 otherwise).
    Failed {
        /// Suggested exit code.
        code: i32,
        /// One line.
        msg: String,
    },
    /// A frame (body) from host `host` of this daemon's subtree, wrapped once by the
    /// daemon it reached first and passed up unchanged by the others.
    Relay {
        /// Source host index.
        host: u32,
        /// The frame body it sent.
        frame: Vec<u8>,
    },
    /// Sent by a parent daemon in its child's name (inside a [`Up::Relay`]): the link
    /// to the child ended or fell silent after its ranks started, so the child and
    /// everything below it is gone.
    Lost {
        /// One line saying how it was noticed.
        why: String,
    },
    /// A line the launch agent of a child printed on its stderr (ssh warnings,
    /// dsmwrap errors), sent in the child's name.
    Diag {
        /// The line.
        line: String,
    },
}

/// A frame that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct FrameError(pub String);

/// Appends frame fields.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn new(op: u8) -> Enc {
        let mut e = Enc(vec![0, 0, 0, 0]);
        e.0.push(op);
        e
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(self, v: i32) -> Self {
        self.u32(v as u32)
    }
    fn bytes(self, b: &[u8]) -> Self {
        let mut s = self.u32(b.len() as u32);
        s.0.extend_from_slice(b);
        s
    }
    fn list(self, l: &[Vec<u8>]) -> Self {
        let mut s = self.u32(l.len() as u32);
        for b in l {
            s = s.bytes(b);
        }
        s
    }
    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// Reads frame fields, failing on truncation.
struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError("truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, FrameError> {
        Ok(self.u32()? as i32)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, FrameError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, FrameError> {
        String::from_utf8(self.bytes()?).map_err(|_| FrameError("string not UTF-8".into()))
    }
    fn list(&mut self) -> Result<Vec<Vec<u8>>, FrameError> {
        let n = self.u32()? as usize;
        // Each entry takes at least 4 bytes: bounds the allocation by the frame.
        if n > self.0.len() / 4 {
            return Err(FrameError("list longer than its frame".into()));
        }
        (0..n).map(|_| self.bytes()).collect()
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FrameError("trailing bytes".into()))
        }
    }
}

impl Down {
    /// The frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Down::Spec(s) => {
                let ranks: Vec<Vec<u8>> =
                    s.ranks.iter().map(|r| r.to_be_bytes().to_vec()).collect();
                let env: Vec<Vec<u8>> = s
                    .env
                    .iter()
                    .flat_map(|(k, v)| [k.clone(), v.clone()])
                    .collect();
                // Each node as one entry: index, parent, then the name's bytes.
                let tree: Vec<Vec<u8>> = s
                    .subtree
                    .iter()
                    .map(|n| {
                        let mut b = n.index.to_be_bytes().to_vec();
                        b.extend_from_slice(&n.parent.to_be_bytes());
                        b.extend_from_slice(n.name.as_bytes());
                        b
                    })
                    .collect();
                let agent: Vec<Vec<u8>> = s.agent.iter().map(|w| w.as_bytes().to_vec()).collect();
                Enc::new(1)
                    .bytes(s.token_hex.as_bytes())
                    .u32(u32::from(s.pmi_port))
                    .bytes(s.pmi_ip.as_bytes())
                    .u32(s.world_size)
                    .bytes(s.host.as_bytes())
                    .list(&ranks)
                    .bytes(&s.argv0)
                    .bytes(&s.program)
                    .list(&s.args)
                    .list(&env)
                    .bytes(&s.wdir)
                    .bytes(s.ship_hash.as_bytes())
                    .u32(s.heartbeat_ms)
                    .u32(s.dead_after_ms)
                    .u32(s.host_index)
                    .u8(u8::from(s.via_daemon))
                    .list(&tree)
                    .list(&agent)
                    .bytes(s.wrap.as_bytes())
                    .u32(s.connect_timeout_ms)
                    .u8(u8::from(s.bind_cores))
                    .finish()
            }
            Down::ProgramChunk(b) => Enc::new(2).bytes(b).finish(),
            Down::ProgramEnd => Enc::new(3).finish(),
            Down::Stdin(b) => Enc::new(4).bytes(b).finish(),
            Down::StdinEof => Enc::new(5).finish(),
            Down::Signal { signo, group } => Enc::new(6).i32(*signo).u8(u8::from(*group)).finish(),
            Down::Heartbeat => Enc::new(7).finish(),
            Down::Shutdown => Enc::new(8).finish(),
            Down::Relay { host, frame } => Enc::new(9).u32(*host).bytes(frame).finish(),
        }
    }

    /// The frame body (opcode and fields, without the length): what a
    /// [`Down::Relay`] carries.
    pub fn body(&self) -> Vec<u8> {
        let mut f = self.encode();
        f.drain(..4);
        f
    }

    /// Decodes a frame body (opcode and fields, without the length).
    pub fn decode(body: &[u8]) -> Result<Down, FrameError> {
        let mut d = Dec(body);
        let msg = match d.u8()? {
            1 => {
                let token_hex = d.string()?;
                let pmi_port =
                    u16::try_from(d.u32()?).map_err(|_| FrameError("port out of range".into()))?;
                let pmi_ip = d.string()?;
                let world_size = d.u32()?;
                let host = d.string()?;
                let ranks = d
                    .list()?
                    .into_iter()
                    .map(|b| {
                        <[u8; 4]>::try_from(b.as_slice())
                            .map(u32::from_be_bytes)
                            .map_err(|_| FrameError("bad rank".into()))
                    })
                    .collect::<Result<_, _>>()?;
                let argv0 = d.bytes()?;
                let program = d.bytes()?;
                let args = d.list()?;
                let flat = d.list()?;
                if flat.len() % 2 != 0 {
                    return Err(FrameError("odd environment list".into()));
                }
                let env = flat
                    .chunks(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect();
                Down::Spec(Box::new(JobSpec {
                    token_hex,
                    pmi_port,
                    pmi_ip,
                    world_size,
                    host,
                    ranks,
                    argv0,
                    program,
                    args,
                    env,
                    wdir: d.bytes()?,
                    ship_hash: d.string()?,
                    heartbeat_ms: d.u32()?,
                    dead_after_ms: d.u32()?,
                    host_index: d.u32()?,
                    via_daemon: d.u8()? != 0,
                    subtree: d
                        .list()?
                        .into_iter()
                        .map(|b| {
                            if b.len() < 8 {
                                return Err(FrameError("bad tree node".into()));
                            }
                            let index = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                            let parent = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                            let name = String::from_utf8(b[8..].to_vec())
                                .map_err(|_| FrameError("host name not UTF-8".into()))?;
                            Ok(TreeNode {
                                index,
                                name,
                                parent,
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    agent: d
                        .list()?
                        .into_iter()
                        .map(|w| {
                            String::from_utf8(w)
                                .map_err(|_| FrameError("agent word not UTF-8".into()))
                        })
                        .collect::<Result<_, _>>()?,
                    wrap: d.string()?,
                    connect_timeout_ms: d.u32()?,
                    bind_cores: d.u8()? != 0,
                }))
            }
            2 => Down::ProgramChunk(d.bytes()?),
            3 => Down::ProgramEnd,
            4 => Down::Stdin(d.bytes()?),
            5 => Down::StdinEof,
            6 => Down::Signal {
                signo: d.i32()?,
                group: d.u8()? != 0,
            },
            7 => Down::Heartbeat,
            8 => Down::Shutdown,
            9 => Down::Relay {
                host: d.u32()?,
                frame: d.bytes()?,
            },
            op => return Err(FrameError(format!("unknown opcode {op}"))),
        };
        d.end()?;
        Ok(msg)
    }
}

impl Up {
    /// The frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Up::Hello {
                version,
                pid,
                launcher_ip,
            } => Enc::new(1)
                .u32(*version)
                .u32(*pid)
                .bytes(launcher_ip.as_bytes())
                .finish(),
            Up::NeedProgram => Enc::new(2).finish(),
            Up::Started { pids } => {
                let mut e = Enc::new(3).u32(pids.len() as u32);
                for (r, p) in pids {
                    e = e.u32(*r).u32(*p);
                }
                e.finish()
            }
            Up::Output { rank, stream, data } => {
                Enc::new(4).u32(*rank).u8(*stream).bytes(data).finish()
            }
            Up::OutputEnd { rank, stream } => Enc::new(5).u32(*rank).u8(*stream).finish(),
            Up::RankExit {
                rank,
                pid,
                kind,
                value,
            } => Enc::new(6)
                .u32(*rank)
                .u32(*pid)
                .u8(*kind)
                .i32(*value)
                .finish(),
            Up::Heartbeat => Enc::new(7).finish(),
            Up::Failed { code, msg } => Enc::new(8).i32(*code).bytes(msg.as_bytes()).finish(),
            Up::Relay { host, frame } => Enc::new(9).u32(*host).bytes(frame).finish(),
            Up::Lost { why } => Enc::new(10).bytes(why.as_bytes()).finish(),
            Up::Diag { line } => Enc::new(11).bytes(line.as_bytes()).finish(),
        }
    }

    /// The frame body (opcode and fields, without the length): what an
    /// [`Up::Relay`] carries.
    pub fn body(&self) -> Vec<u8> {
        let mut f = self.encode();
        f.drain(..4);
        f
    }

    /// Decodes a frame body (opcode and fields, without the length).
    pub fn decode(body: &[u8]) -> Result<Up, FrameError> {
        let mut d = Dec(body);
        let msg = match d.u8()? {
            1 => Up::Hello {
                version: d.u32()?,
                pid: d.u32()?,
                launcher_ip: d.string()?,
            },
            2 => Up::NeedProgram,
            3 => {
                let n = d.u32()? as usize;
                if n > body.len() / 8 {
                    return Err(FrameError("pid list longer than its frame".into()));
                }
                let mut pids = Vec::with_capacity(n);
                for _ in 0..n {
                    pids.push((d.u32()?, d.u32()?));
                }
                Up::Started { pids }
            }
            4 => Up::Output {
                rank: d.u32()?,
                stream: d.u8()?,
                data: d.bytes()?,
            },
            5 => Up::OutputEnd {
                rank: d.u32()?,
                stream: d.u8()?,
            },
            6 => Up::RankExit {
                rank: d.u32()?,
                pid: d.u32()?,
                kind: d.u8()?,
                value: d.i32()?,
            },
            7 => Up::Heartbeat,
            8 => Up::Failed {
                code: d.i32()?,
                msg: d.string()?,
            },
            9 => Up::Relay {
                host: d.u32()?,
                frame: d.bytes()?,
            },
            10 => Up::Lost { why: d.string()? },
            11 => Up::Diag { line: d.string()? },
            op => return Err(FrameError(format!("unknown opcode {op}"))),
        };
        d.end()?;
        Ok(msg)
    }
}

/// A frame body with its length prefix: what goes on a link when a daemon unwraps
/// a relayed frame for its child.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + body.len());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// What one [`FramedLink::read_frames`] call found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The link is open; these frame bodies arrived (maybe none).
    Frames(Vec<Vec<u8>>),
    /// End of file (or a read error, which ends the link the same way), after these
    /// frame bodies.
    Closed(Vec<Vec<u8>>),
    /// The peer sent a frame larger than [`MAX_FRAME`]: a broken or hostile peer.
    Oversized,
}

/// A non-blocking framed byte link over a pair of descriptors.
#[derive(Debug)]
pub struct FramedLink {
    rx: Option<OwnedFd>,
    tx: Option<OwnedFd>,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
}

impl FramedLink {
    /// Wraps `rx` (read end) and `tx` (write end), making both non-blocking.
    pub fn new(rx: OwnedFd, tx: OwnedFd) -> io::Result<FramedLink> {
        for fd in [&rx, &tx] {
            set_nonblocking(fd.as_fd())?;
        }
        Ok(FramedLink {
            rx: Some(rx),
            tx: Some(tx),
            inbox: Vec::new(),
            outbox: Vec::new(),
        })
    }

    /// The read end, while open.
    pub fn rx_fd(&self) -> Option<BorrowedFd<'_>> {
        self.rx.as_ref().map(|f| f.as_fd())
    }

    /// The write end, if open and something is waiting to be written.
    pub fn tx_fd_if_pending(&self) -> Option<BorrowedFd<'_>> {
        self.tx
            .as_ref()
            .filter(|_| !self.outbox.is_empty())
            .map(|f| f.as_fd())
    }

    /// Bytes queued but not yet written.
    pub fn pending(&self) -> usize {
        self.outbox.len()
    }

    /// Queues `frame` and writes what the pipe takes now.
    pub fn send(&mut self, frame: &[u8]) {
        if self.tx.is_none() {
            return;
        }
        self.outbox.extend_from_slice(frame);
        self.flush();
    }

    /// Writes queued bytes until the pipe is full. A write error (the peer is gone)
    /// closes the write end and drops the queue; the read side reports the loss.
    pub fn flush(&mut self) {
        while !self.outbox.is_empty() {
            let Some(tx) = &self.tx else { return };
            match nix::unistd::write(tx, &self.outbox) {
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    self.tx = None;
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    /// Blocks (up to `limit`) until the queue is written: for the last frames before
    /// an exit, which must not be lost to a full pipe.
    pub fn flush_blocking(&mut self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            self.flush();
            let Some(fd) = self.tx_fd_if_pending() else {
                return;
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
            if let Err(e) = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
                if e != Errno::EINTR {
                    return;
                }
            }
        }
    }

    /// Closes the write end (the peer reads end of file once the queue is gone).
    pub fn close_tx(&mut self) {
        self.tx = None;
        self.outbox.clear();
    }

    /// Reads what is available and splits off complete frames.
    pub fn read_frames(&mut self) -> ReadOutcome {
        let mut closed = false;
        if let Some(rx) = &self.rx {
            let mut buf = [0u8; 64 * 1024];
            loop {
                match nix::unistd::read(rx.as_raw_fd(), &mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        self.inbox.extend_from_slice(&buf[..n]);
                        // Bound the work per call so one busy link cannot starve
                        // the others.
                        if self.inbox.len() > 4 * MAX_FRAME {
                            break;
                        }
                    }
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
        } else {
            closed = true;
        }
        let mut frames = Vec::new();
        loop {
            if self.inbox.len() < 4 {
                break;
            }
            let len =
                u32::from_be_bytes([self.inbox[0], self.inbox[1], self.inbox[2], self.inbox[3]])
                    as usize;
            if len > MAX_FRAME || len == 0 {
                self.rx = None;
                return ReadOutcome::Oversized;
            }
            if self.inbox.len() < 4 + len {
                break;
            }
            frames.push(self.inbox[4..4 + len].to_vec());
            self.inbox.drain(..4 + len);
        }
        if closed {
            self.rx = None;
            ReadOutcome::Closed(frames)
        } else {
            ReadOutcome::Frames(frames)
        }
    }
}

/// Sets `O_NONBLOCK` on a descriptor this process owns alone (a pipe end it made or
/// was given for itself), never on a shared terminal.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            token_hex: "00".repeat(16),
            pmi_port: 4242,
            pmi_ip: "10.0.0.1".into(),
            world_size: 6,
            host: "node2".into(),
            ranks: vec![1, 4],
            argv0: b"prog".to_vec(),
            program: b"/bin/prog".to_vec(),
            args: vec![b"-v".to_vec(), vec![0xff, 0]],
            env: vec![(b"A".to_vec(), b"1".to_vec()), (b"B".to_vec(), Vec::new())],
            wdir: b"/tmp".to_vec(),
            ship_hash: "ab".into(),
            heartbeat_ms: 500,
            dead_after_ms: 3000,
            host_index: 1,
            via_daemon: true,
            subtree: vec![
                TreeNode {
                    index: 3,
                    name: "node4".into(),
                    parent: 1,
                },
                TreeNode {
                    index: 7,
                    name: "node8".into(),
                    parent: 3,
                },
            ],
            agent: vec!["ssh".into(), "-F".into(), "/etc/x y".into()],
            wrap: "/opt/dsmwrap".into(),
            connect_timeout_ms: 10_000,
            bind_cores: true,
        }
    }

    #[test]
    fn frames_round_trip() {
        let downs = [
            Down::Spec(Box::new(spec())),
            Down::ProgramChunk(vec![1, 2, 3]),
            Down::ProgramEnd,
            Down::Stdin(b"x\n".to_vec()),
            Down::StdinEof,
            Down::Signal {
                signo: 15,
                group: true,
            },
            Down::Heartbeat,
            Down::Shutdown,
            Down::Relay {
                host: 5,
                frame: Down::Stdin(b"y".to_vec()).body(),
            },
        ];
        for m in downs {
            let f = m.encode();
            assert_eq!(
                u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize,
                f.len() - 4
            );
            assert_eq!(Down::decode(&f[4..]), Ok(m));
        }
        let ups = [
            Up::Hello {
                version: VERSION,
                pid: 7,
                launcher_ip: "10.250.0.1".into(),
            },
            Up::NeedProgram,
            Up::Started {
                pids: vec![(1, 100), (4, 101)],
            },
            Up::Output {
                rank: 4,
                stream: 2,
                data: b"err".to_vec(),
            },
            Up::OutputEnd { rank: 4, stream: 1 },
            Up::RankExit {
                rank: 1,
                pid: 100,
                kind: 1,
                value: 9,
            },
            Up::Heartbeat,
            Up::Failed {
                code: 127,
                msg: "prog: command not found".into(),
            },
            Up::Relay {
                host: 2,
                frame: Up::Heartbeat.body(),
            },
            Up::Lost {
                why: "link closed".into(),
            },
            Up::Diag {
                line: "ssh: warning".into(),
            },
        ];
        for m in ups {
            let f = m.encode();
            assert_eq!(Up::decode(&f[4..]), Ok(m));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [&[][..], &[99], &[1, 0, 0], &[6, 0, 0, 0, 15], &[7, 0]] {
            assert!(Down::decode(body).is_err(), "{body:?}");
        }
        // A list claiming more entries than its frame could hold.
        assert!(Up::decode(&[3, 0xff, 0xff, 0xff, 0xff]).is_err());
        let spec = Down::Spec(Box::new(spec())).encode();
        for cut in 5..spec.len() {
            assert!(Down::decode(&spec[4..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn link_moves_frames_across_a_pipe() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let (r2, w2) = nix::unistd::pipe().expect("pipe");
        let mut a = FramedLink::new(r2, w).expect("link");
        let mut b = FramedLink::new(r, w2).expect("link");
        a.send(&Down::Heartbeat.encode());
        a.send(&Down::Stdin(vec![7; 100_000]).encode());
        let mut got = Vec::new();
        while got.len() < 2 {
            a.flush();
            match b.read_frames() {
                ReadOutcome::Frames(f) => got.extend(f),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(Down::decode(&got[0]), Ok(Down::Heartbeat));
        assert_eq!(Down::decode(&got[1]), Ok(Down::Stdin(vec![7; 100_000])));
        a.close_tx();
        drop(a);
        assert_eq!(b.read_frames(), ReadOutcome::Closed(Vec::new()));
    }
}
