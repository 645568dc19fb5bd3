//! `dsmwrap --daemon`: the per-host bootstrap of a multi-host job.
//!
//! dsmexec starts one daemon per remote host through the launch agent (ssh or srun)
//! and talks to it over the agent's stdin and stdout ([`crate::proto`]). The daemon
//! starts that host's ranks with the same [`Agent`] dsmexec uses locally, relays their
//! output, exits and rank 0's input, and forwards signals to them.
//!
//! In a launch tree (more remote hosts than `--launch-fanout`), the spec also names
//! the daemon's subtree: it starts its children through the same launch agent as soon
//! as the spec arrives, and relays between its parent and them. Frames from a child
//! go up wrapped once in [`Up::Relay`] with the child's host index (frames a child
//! already wrapped go up unchanged); [`Down::Relay`] frames from the parent go to the
//! child whose subtree holds the destination, unwrapped by the last daemon. Heartbeats
//! are per link and never relayed. A child link that ends or falls silent is reported
//! up as [`Up::Lost`] (or [`Up::Failed`] before the child's ranks started) in the
//! child's name; a [`Down::Shutdown`] is passed to every child before the daemon ends.
//! With `--ship`, a daemon that holds a verified copy of the program answers its
//! descendants' requests for it itself, so the bytes cross each link once.
//!
//! It never outlives its link: end of file on it, silence longer than the heartbeat
//! bound, or a terminating signal to the daemon all SIGKILL every rank's process group
//! before it exits; its children's launch agents die with it, so their links end and
//! they do the same. Killing the ssh client does not reliably reach the remote side, and
//! a cut cable gives no end of file at all, which is why both checks exist. The ranks
//! also die with the daemon itself (`PR_SET_PDEATHSIG`), so even a SIGKILLed daemon
//! leaves nothing behind.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ChildStdin;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::agent::{self, Agent, LaunchSpec, PipeId, RankExit, StdinMode};
use crate::error::LaunchError;
use crate::output::{diag, Stream};
use crate::proto::{self, Down, FramedLink, JobSpec, ReadOutcome, Up};
use crate::remote::{self, AgentProcess, LaunchAgent};
use crate::ship;

/// How long a daemon waits for its job spec before giving up on a silent dsmexec.
pub const SPEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Stop reading rank output while this much is queued for dsmexec: the ranks then
/// block on their pipes, which is the back-pressure a slow reader should cause.
const MAX_QUEUED: usize = 4 << 20;

/// Where the daemon is in its life.
enum Phase {
    /// Waiting for the job spec.
    Spec,
    /// Receiving the program's bytes for `--ship`.
    Program { spec: Box<JobSpec>, bytes: Vec<u8> },
    /// The ranks have been started.
    Running,
}

/// The signals the daemon reads from its signalfd.
const SIGNALS: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGPIPE,
];

/// Runs the daemon on this process's stdin and stdout until the job ends; returns
/// the process exit code.
pub fn run() -> i32 {
    match Daemon::start().and_then(|mut d| d.event_loop()) {
        Ok(code) => code,
        Err(e) => {
            diag("dsmwrap", &e);
            e.exit_code()
        }
    }
}

/// A child of this daemon in the launch tree: the launch agent running its daemon.
struct ChildHost {
    /// Its host index (what relayed frames carry).
    index: u32,
    proc: AgentProcess,
    /// Its daemon answered.
    hello: bool,
    /// Its ranks were started (from then on a closed link is a lost host).
    started: bool,
    /// A failure was already sent up in its name: say nothing more.
    reported: bool,
    last_rx: Instant,
    last_tx: Instant,
}

/// What a ready descriptor belongs to.
#[derive(Clone, Copy)]
enum Source {
    Parent,
    Signals,
    ParentOut,
    Stdin,
    Pipe(PipeId),
    Child(usize),
    ChildOut(usize),
    ChildErr(usize),
}

struct Daemon {
    link: FramedLink,
    signals: SignalFd,
    phase: Phase,
    agent: Option<Agent>,
    shipped: Option<ship::Shipped>,
    launcher_ip: Option<IpAddr>,
    /// Rank 0's stdin, with bytes not yet taken and whether end of input came.
    stdin: Option<ChildStdin>,
    stdin_queue: Vec<u8>,
    stdin_eof: bool,
    heartbeat: Duration,
    dead_after: Duration,
    last_rx: Instant,
    last_tx: Instant,
    /// When the loop last came round (a held-up loop cannot judge silence).
    last_turn: Instant,
    /// This host's index in dsmexec's list.
    me: u32,
    /// Parent index of every host of the subtree.
    parent_of: HashMap<u32, u32>,
    /// The children, `None` once gone.
    children: Vec<Option<ChildHost>>,
    connect_timeout: Duration,
    /// `--ship`'s hash, empty without it.
    ship_hash: String,
    /// A copy of the program checked against `ship_hash`, and its bytes once read,
    /// to answer descendants that need it.
    program_copy: Option<PathBuf>,
    program_bytes: Option<Vec<u8>>,
}

impl Daemon {
    fn start() -> Result<Daemon, LaunchError> {
        // Output must never reach the link except as frames: take fds 0 and 1 for the
        // link and leave /dev/null in their place for anything that writes there.
        let (rx, tx) = take_stdio().map_err(|e| LaunchError::os("take over stdin/stdout", e))?;
        let link = FramedLink::new(rx, tx).map_err(|e| LaunchError::os("set up the link", e))?;
        let mut mask = SigSet::empty();
        for s in SIGNALS {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| LaunchError::os("block signals", e))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| LaunchError::os("create a signalfd", e))?;
        let launcher_ip = ssh_client_ip(std::env::var("SSH_CONNECTION").ok().as_deref());
        let now = Instant::now();
        let mut d = Daemon {
            link,
            signals,
            phase: Phase::Spec,
            agent: None,
            shipped: None,
            launcher_ip,
            stdin: None,
            stdin_queue: Vec::new(),
            stdin_eof: false,
            heartbeat: Duration::from_millis(500),
            dead_after: SPEC_TIMEOUT,
            last_rx: now,
            last_tx: now,
            last_turn: now,
            me: 0,
            parent_of: HashMap::new(),
            children: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            ship_hash: String::new(),
            program_copy: None,
            program_bytes: None,
        };
        d.send(&Up::Hello {
            version: proto::VERSION,
            pid: std::process::id(),
            launcher_ip: launcher_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        });
        Ok(d)
    }

    fn send(&mut self, msg: &Up) {
        self.link.send(&msg.encode());
        self.last_tx = Instant::now();
    }

    /// Sends a launch failure, makes sure it leaves, and ends.
    fn fail(&mut self, code: i32, msg: String) -> Result<i32, LaunchError> {
        self.send(&Up::Failed { code, msg });
        self.link.flush_blocking(Duration::from_secs(5));
        Ok(code)
    }

    fn event_loop(&mut self) -> Result<i32, LaunchError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let now = Instant::now();
            if now.saturating_duration_since(self.last_turn) > self.heartbeat * 2 {
                // This loop was held up (a starved machine, a long store of a shipped
                // program): silence it could not hear proves nothing.
                self.last_rx = now;
                for c in self.children.iter_mut().flatten() {
                    c.last_rx = now;
                }
            }
            self.last_turn = now;
            if now.duration_since(self.last_rx) > self.dead_after {
                diag(
                    "dsmwrap",
                    format_args!(
                        "no word from dsmexec for {:.1} s: link lost, killing the ranks",
                        self.dead_after.as_secs_f64()
                    ),
                );
                return Ok(1);
            }
            // In every phase: storing a shipped program or starting many ranks must
            // not look like a dead host to dsmexec.
            if now.duration_since(self.last_tx) >= self.heartbeat {
                self.send(&Up::Heartbeat);
            }
            self.check_children(now);
            // Rank pipes and child links are read only while the link up is not
            // backed up: the ranks then block on their pipes, the children on theirs.
            let backed_up = self.link.pending() >= MAX_QUEUED;
            if backed_up {
                for c in self.children.iter_mut().flatten() {
                    c.last_rx = now;
                }
            }
            let mut sources = Vec::new();
            let mut fds = Vec::new();
            let Some(rx) = self.link.rx_fd() else {
                // dsmexec went away: nothing left to do for it.
                return Ok(1);
            };
            sources.push(Source::Parent);
            fds.push(PollFd::new(rx, PollFlags::POLLIN));
            sources.push(Source::Signals);
            fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
            if let Some(tx) = self.link.tx_fd_if_pending() {
                sources.push(Source::ParentOut);
                fds.push(PollFd::new(tx, PollFlags::POLLOUT));
            }
            if let Some(fd) = self.stdin.as_ref().filter(|_| !self.stdin_queue.is_empty()) {
                sources.push(Source::Stdin);
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
            }
            if !backed_up {
                if let Some(agent) = &self.agent {
                    for (id, fd) in agent.open_pipes() {
                        sources.push(Source::Pipe(id));
                        fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    }
                }
            }
            for (k, c) in self.children.iter().enumerate() {
                let Some(c) = c else { continue };
                if let Some(fd) = c.proc.link.rx_fd().filter(|_| !backed_up) {
                    sources.push(Source::Child(k));
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
                if let Some(fd) = c.proc.link.tx_fd_if_pending() {
                    sources.push(Source::ChildOut(k));
                    fds.push(PollFd::new(fd, PollFlags::POLLOUT));
                }
                if let Some(fd) = c.proc.stderr_fd() {
                    sources.push(Source::ChildErr(k));
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
            }
            let wait = self
                .heartbeat
                .min(self.dead_after)
                .as_millis()
                .clamp(1, 60_000);
            let wait = PollTimeout::try_from(wait as u64).unwrap_or(PollTimeout::MAX);
            match nix::poll::poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(LaunchError::os("wait for events", e)),
            }
            let ready: Vec<Source> = sources
                .into_iter()
                .zip(&fds)
                .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(s, _)| s)
                .collect();
            drop(fds);
            let mut signals = false;
            let mut parent = false;
            for src in ready {
                match src {
                    Source::Parent => parent = true,
                    Source::Signals => signals = true,
                    Source::ParentOut => self.link.flush(),
                    Source::Stdin => self.write_stdin(),
                    Source::Pipe(id) => self.on_pipe(id, &mut buf),
                    Source::Child(k) => self.on_child(k),
                    Source::ChildOut(k) => {
                        if let Some(c) = &mut self.children[k] {
                            c.proc.link.flush();
                        }
                    }
                    Source::ChildErr(k) => self.on_child_stderr(k),
                }
            }
            // Last, as either may end the daemon.
            if signals {
                if let Some(code) = self.on_signals() {
                    return Ok(code);
                }
            }
            if parent {
                if let Some(code) = self.on_link()? {
                    return Ok(code);
                }
            }
        }
    }

    /// Reads frames from dsmexec; `Some(code)` when the daemon should exit.
    fn on_link(&mut self) -> Result<Option<i32>, LaunchError> {
        let (frames, closed) = match self.link.read_frames() {
            ReadOutcome::Frames(f) => (f, false),
            ReadOutcome::Closed(f) => (f, true),
            ReadOutcome::Oversized => {
                diag("dsmwrap", "malformed frame from dsmexec");
                return Ok(Some(1));
            }
        };
        if !frames.is_empty() {
            self.last_rx = Instant::now();
        }
        for body in frames {
            let msg = match Down::decode(&body) {
                Ok(m) => m,
                Err(e) => {
                    diag("dsmwrap", format_args!("from dsmexec: {e}"));
                    return Ok(Some(1));
                }
            };
            if let Some(code) = self.on_message(msg)? {
                return Ok(Some(code));
            }
        }
        if closed {
            // Quietly: dsmexec ending (or its ssh being killed) is not news.
            return Ok(Some(if self.agent.is_some() { 1 } else { 0 }));
        }
        Ok(None)
    }

    fn on_message(&mut self, msg: Down) -> Result<Option<i32>, LaunchError> {
        match msg {
            Down::Spec(spec) => {
                if !matches!(self.phase, Phase::Spec) {
                    return Ok(Some(1));
                }
                self.heartbeat = Duration::from_millis(u64::from(spec.heartbeat_ms.max(10)));
                self.dead_after = Duration::from_millis(u64::from(spec.dead_after_ms.max(100)));
                self.connect_timeout =
                    Duration::from_millis(u64::from(spec.connect_timeout_ms.max(100)));
                self.ship_hash = spec.ship_hash.clone();
                // The ssh handshakes are the slow part of a launch: start them before
                // this host's own (maybe shipped) program is ready.
                self.start_children(&spec);
                return self.prepare(spec);
            }
            Down::ProgramChunk(bytes) => {
                if let Phase::Program { bytes: all, .. } = &mut self.phase {
                    all.extend_from_slice(&bytes);
                }
            }
            Down::ProgramEnd => {
                if let Phase::Program { spec, bytes } =
                    std::mem::replace(&mut self.phase, Phase::Spec)
                {
                    let stored =
                        ship::cache_dir().and_then(|d| ship::store(&d, &spec.ship_hash, &bytes));
                    match stored {
                        Ok(s) => {
                            let path = s.path.clone();
                            self.shipped = Some(s);
                            self.program_copy = Some(path.clone());
                            self.program_bytes = Some(bytes);
                            return self.launch(&spec, path);
                        }
                        Err(e) => {
                            return self
                                .fail(1, format!("cannot store the shipped program: {e}"))
                                .map(Some)
                        }
                    }
                }
            }
            Down::Stdin(data) => {
                if self.stdin.is_some() {
                    self.stdin_queue.extend_from_slice(&data);
                    self.write_stdin();
                }
            }
            Down::StdinEof => {
                self.stdin_eof = true;
                if self.stdin_queue.is_empty() {
                    self.stdin = None;
                }
            }
            Down::Signal { signo, group } => {
                if let (Some(agent), Ok(sig)) = (&self.agent, Signal::try_from(signo)) {
                    if group {
                        agent.signal_groups(sig);
                    } else {
                        agent.signal_processes(sig);
                    }
                }
            }
            Down::Heartbeat => {}
            Down::Shutdown => {
                // The whole subtree goes: children first (they end in parallel with
                // this host's ranks being killed), then a bounded wait for them.
                for c in self.children.iter_mut().flatten() {
                    c.proc.link.send(&Down::Shutdown.encode());
                }
                if let Some(agent) = &mut self.agent {
                    agent.sweep();
                }
                self.link.flush_blocking(Duration::from_secs(2));
                for c in self.children.iter_mut().flatten() {
                    c.proc.link.flush_blocking(Duration::from_millis(200));
                }
                remote::finish_all(
                    self.children.iter_mut().flatten().map(|c| &mut c.proc),
                    Duration::from_secs(1),
                );
                return Ok(Some(0));
            }
            Down::Relay { host, frame } => self.relay_down(host, frame),
        }
        Ok(None)
    }

    /// Starts the launch agent of every child named in the spec's subtree.
    fn start_children(&mut self, spec: &JobSpec) {
        self.me = spec.host_index;
        self.parent_of = spec.subtree.iter().map(|n| (n.index, n.parent)).collect();
        let agent = LaunchAgent {
            words: spec.agent.clone(),
        };
        let now = Instant::now();
        let me = self.me;
        for node in spec.subtree.iter().filter(|n| n.parent == me) {
            let argv = agent.command(&node.name, &spec.wrap);
            match AgentProcess::spawn(&argv) {
                Ok(proc) => self.children.push(Some(ChildHost {
                    index: node.index,
                    proc,
                    hello: false,
                    started: false,
                    reported: false,
                    last_rx: now,
                    last_tx: now,
                })),
                Err(e) => self.send_for(
                    node.index,
                    &Up::Failed {
                        code: e.exit_code(),
                        msg: e.to_string(),
                    },
                ),
            }
        }
    }

    /// Sends `msg` up in the name of host `host` of the subtree.
    fn send_for(&mut self, host: u32, msg: &Up) {
        self.send(&Up::Relay {
            host,
            frame: msg.body(),
        });
    }

    /// The child (position in `children`) whose subtree holds `host`.
    fn child_toward(&self, host: u32) -> Option<usize> {
        let mut cur = host;
        // Bounded by the subtree's size: a malformed tree cannot loop forever.
        for _ in 0..=self.parent_of.len() {
            let parent = *self.parent_of.get(&cur)?;
            if parent == self.me {
                return self
                    .children
                    .iter()
                    .position(|c| c.as_ref().is_some_and(|c| c.index == cur));
            }
            cur = parent;
        }
        None
    }

    /// A frame from the parent for `host` below: to the child on the way, unwrapped
    /// if that child is `host`. Frames for a host already gone are dropped (its loss
    /// has been reported).
    fn relay_down(&mut self, host: u32, frame: Vec<u8>) {
        let Some(k) = self.child_toward(host) else {
            return;
        };
        let Some(c) = &mut self.children[k] else {
            return;
        };
        if c.index == host {
            c.proc.link.send(&proto::framed(&frame));
        } else {
            c.proc.link.send(&Down::Relay { host, frame }.encode());
        }
        c.last_tx = Instant::now();
    }

    /// Frames from child `k`.
    fn on_child(&mut self, k: usize) {
        let Some(c) = &mut self.children[k] else {
            return;
        };
        let (frames, closed) = match c.proc.link.read_frames() {
            ReadOutcome::Frames(f) => (f, false),
            ReadOutcome::Closed(f) => (f, true),
            ReadOutcome::Oversized => (Vec::new(), true),
        };
        if !frames.is_empty() {
            c.last_rx = Instant::now();
        }
        let index = c.index;
        for body in frames {
            match Up::decode(&body) {
                Ok(Up::Heartbeat) => {}
                Ok(Up::Relay { host, frame }) => {
                    let wants_program =
                        matches!(Up::decode(&frame), Ok(Up::NeedProgram)) && self.serve(host);
                    if !wants_program {
                        self.send(&Up::Relay { host, frame });
                    }
                }
                Ok(msg) => {
                    if let Some(c) = &mut self.children[k] {
                        match msg {
                            Up::Hello { .. } => c.hello = true,
                            Up::Started { .. } => c.started = true,
                            Up::Failed { .. } => c.reported = true,
                            _ => {}
                        }
                    }
                    if msg == Up::NeedProgram && self.serve(index) {
                        continue;
                    }
                    self.send(&Up::Relay {
                        host: index,
                        frame: body,
                    });
                }
                Err(e) => {
                    self.child_gone(k, format!("protocol error: {e}"));
                    return;
                }
            }
        }
        if closed {
            self.child_gone(
                k,
                "its bootstrap closed the link (killed, or its host went down)".into(),
            );
        }
    }

    /// Child `k` is gone: says so in its name (unless it said why itself) and kills
    /// its launch agent, which ends the link for its daemon if that still runs.
    fn child_gone(&mut self, k: usize, why: String) {
        let Some(mut c) = self.children[k].take() else {
            return;
        };
        if c.reported {
            return;
        }
        let msg = if c.started {
            Up::Lost { why }
        } else {
            // ssh says why a connection failed on its stderr, which may still be
            // arriving; wait at most one heartbeat interval for it.
            self.send(&Up::Heartbeat);
            self.link.flush();
            let why = c
                .proc
                .failure_reason(self.heartbeat.min(Duration::from_secs(2)));
            Up::Failed { code: 1, msg: why }
        };
        self.send_for(c.index, &msg);
        c.proc.kill();
    }

    /// Connect timeouts and heartbeats of the children.
    fn check_children(&mut self, now: Instant) {
        for k in 0..self.children.len() {
            let Some(c) = &mut self.children[k] else {
                continue;
            };
            let silent = now.saturating_duration_since(c.last_rx);
            if !c.hello && silent > self.connect_timeout {
                let why = format!(
                    "no answer within {} s (--connect-timeout)",
                    self.connect_timeout.as_secs_f64()
                );
                c.reported = true;
                let index = c.index;
                self.send_for(index, &Up::Failed { code: 1, msg: why });
                self.child_gone(k, String::new());
            } else if c.hello && silent > self.dead_after {
                let why = format!(
                    "no heartbeat for {:.1} s (link cut or host down)",
                    silent.as_secs_f64()
                );
                self.child_gone(k, why);
            } else if c.hello && now.saturating_duration_since(c.last_tx) >= self.heartbeat {
                c.proc.link.send(&Down::Heartbeat.encode());
                c.last_tx = now;
            }
        }
    }

    /// Lines child `k`'s launch agent printed: passed up once its ranks run, kept
    /// for the failure message before.
    fn on_child_stderr(&mut self, k: usize) {
        let Some(c) = &mut self.children[k] else {
            return;
        };
        let lines = c.proc.read_stderr();
        if !c.started {
            return;
        }
        let index = c.index;
        for line in lines.into_iter().filter(|l| !l.trim().is_empty()) {
            self.send_for(index, &Up::Diag { line });
        }
    }

    /// Sends the program to `host` below from this host's verified copy, if there is
    /// one; `false` to let the request go up instead.
    fn serve(&mut self, host: u32) -> bool {
        if self.program_bytes.is_none() {
            let Some(path) = &self.program_copy else {
                return false;
            };
            // Read and checked again: the copy could have changed since it was
            // checked, and a descendant must get exactly dsmexec's bytes.
            match std::fs::read(path) {
                Ok(b) if ship::sha256_hex(&b) == self.ship_hash => self.program_bytes = Some(b),
                _ => {
                    self.program_copy = None;
                    return false;
                }
            }
        }
        let Some(bytes) = self.program_bytes.take() else {
            return false;
        };
        for chunk in bytes.chunks(proto::SHIP_CHUNK) {
            self.relay_down(host, Down::ProgramChunk(chunk.to_vec()).body());
        }
        self.relay_down(host, Down::ProgramEnd.body());
        self.program_bytes = Some(bytes);
        true
    }

    /// Finds the program (or asks for it), then starts the ranks.
    fn prepare(&mut self, spec: Box<JobSpec>) -> Result<Option<i32>, LaunchError> {
        let program = OsString::from_vec(spec.program.clone());
        let path_var = std::env::var_os("PATH");
        let shipping = !spec.ship_hash.is_empty();
        match agent::resolve_program(&program, path_var.as_deref()) {
            // Without --ship, or with the very same bytes here: run what is here.
            Ok(path)
                if !shipping || ship::sha256_file(&path).is_ok_and(|h| h == spec.ship_hash) =>
            {
                if shipping {
                    self.program_copy = Some(path.clone());
                }
                return self.launch(&spec, path);
            }
            // With --ship, a missing or different program is replaced by the bytes
            // dsmexec has; any other problem (no permission, ...) is reported.
            Ok(_) | Err(LaunchError::NotFound { .. }) if shipping => {}
            Ok(path) => return self.launch(&spec, path),
            Err(e) => {
                let code = e.exit_code();
                return self.fail(code, e.to_string()).map(Some);
            }
        }
        let cached = ship::cache_dir().and_then(|d| ship::lookup(&d, &spec.ship_hash));
        match cached {
            Ok(Some(s)) => {
                let path = s.path.clone();
                self.shipped = Some(s);
                self.program_copy = Some(path.clone());
                self.launch(&spec, path)
            }
            Ok(None) => {
                self.send(&Up::NeedProgram);
                self.phase = Phase::Program {
                    spec,
                    bytes: Vec::new(),
                };
                Ok(None)
            }
            Err(e) => self
                .fail(1, format!("cannot use the ship cache: {e}"))
                .map(Some),
        }
    }

    fn launch(&mut self, spec: &JobSpec, program: PathBuf) -> Result<Option<i32>, LaunchError> {
        // Started by another daemon, this host's SSH_CONNECTION names that daemon's
        // host: dsmexec's address comes in the spec instead.
        let seen = self.launcher_ip.filter(|_| !spec.via_daemon);
        let pmi_ip = seen
            .or_else(|| spec.pmi_ip.parse().ok())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let pmi_addr = SocketAddr::new(pmi_ip, spec.pmi_port);
        let launch = LaunchSpec {
            argv0: OsString::from_vec(spec.argv0.clone()),
            program,
            args: spec.args.iter().cloned().map(OsString::from_vec).collect(),
            world_size: spec.world_size,
            pmi_addr: pmi_addr.to_string(),
            token_hex: spec.token_hex.clone(),
            host: spec.host.clone(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (OsString::from_vec(k.clone()), OsString::from_vec(v.clone())))
                .collect(),
            wdir: (!spec.wdir.is_empty())
                .then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&spec.wdir))),
            bind_addr: route_source(pmi_addr).map(|ip| ip.to_string()),
            rank0_stdin: StdinMode::Pipe,
            bind_cores: spec.bind_cores,
        };
        let mut agent = match Agent::spawn(&launch, &spec.ranks) {
            Ok(a) => a,
            Err(e) => {
                let code = e.exit_code();
                return self.fail(code, e.to_string()).map(Some);
            }
        };
        if let Some(stdin) = agent.take_stdin() {
            // Non-blocking so a rank that does not read cannot stall the daemon.
            if proto::set_nonblocking(stdin.as_fd()).is_ok() {
                self.stdin = Some(stdin);
            }
        }
        let pids = agent
            .pids()
            .into_iter()
            .map(|(r, p)| (r, p.as_raw() as u32))
            .collect();
        self.agent = Some(agent);
        self.phase = Phase::Running;
        self.send(&Up::Started { pids });
        Ok(None)
    }

    fn write_stdin(&mut self) {
        let Some(stdin) = &self.stdin else {
            self.stdin_queue.clear();
            return;
        };
        while !self.stdin_queue.is_empty() {
            match nix::unistd::write(stdin, &self.stdin_queue) {
                Ok(n) => {
                    self.stdin_queue.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    // Rank 0 closed its stdin: drop the rest, as a pipe would.
                    self.stdin = None;
                    self.stdin_queue.clear();
                    return;
                }
            }
        }
        if self.stdin_eof {
            self.stdin = None;
        }
    }

    fn on_pipe(&mut self, id: PipeId, buf: &mut [u8]) {
        let Some(agent) = &mut self.agent else { return };
        let stream = match id.stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        };
        let msg = match agent.read_pipe(id, buf) {
            Some(n) => Up::Output {
                rank: id.rank,
                stream,
                data: buf[..n].to_vec(),
            },
            None => Up::OutputEnd {
                rank: id.rank,
                stream,
            },
        };
        self.send(&msg);
    }

    /// Handles signals; `Some(code)` if the daemon was told to end.
    fn on_signals(&mut self) -> Option<i32> {
        let mut end = None;
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) | Ok(Signal::SIGPIPE) => {}
                Ok(sig) => end = Some(128 + sig as i32),
                Err(_) => {}
            }
        }
        let reaped = self.agent.as_mut().map(Agent::reap).unwrap_or_default();
        for r in reaped {
            let (kind, value) = match r.exit {
                RankExit::Code(c) => (0, c),
                RankExit::Signal(s) => (1, s),
                RankExit::Vanished => (2, 0),
            };
            self.send(&Up::RankExit {
                rank: r.rank,
                pid: r.pid.as_raw() as u32,
                kind,
                value,
            });
        }
        end
    }
}

/// Moves fds 0 and 1 to new descriptors for the link and points 0 and 1 at
/// `/dev/null`.
fn take_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let stdin = io::stdin().as_fd().try_clone_to_owned()?;
    let stdout = io::stdout().as_fd().try_clone_to_owned()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: dup2 onto 0 and 1, which this process owns; the originals live on in
    // the clones above, and nothing else in this single-threaded process is using
    // the standard descriptors concurrently.
    unsafe {
        use std::os::fd::AsRawFd;
        if libc::dup2(null.as_raw_fd(), 0) < 0 || libc::dup2(null.as_raw_fd(), 1) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((stdin, stdout))
}

/// The launcher's address as this host sees it: ssh's client address, the first
/// field of `SSH_CONNECTION` ("client_ip client_port server_ip server_port").
pub fn ssh_client_ip(ssh_connection: Option<&str>) -> Option<IpAddr> {
    ssh_connection?.split_whitespace().next()?.parse().ok()
}

/// The source address this host uses to reach `dest`: the address the other hosts
/// can reach this one at, for the ranks' mesh listeners. `None` for loopback (the
/// default binding is then right) or when there is no route.
pub fn route_source(dest: SocketAddr) -> Option<IpAddr> {
    if dest.ip().is_loopback() {
        return None;
    }
    let unspecified: IpAddr = match dest {
        SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    };
    // A UDP connect sends nothing; it only asks the kernel to pick a route.
    let sock = UdpSocket::bind(SocketAddr::new(unspecified, 0)).ok()?;
    sock.connect(dest).ok()?;
    Some(sock.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_connection_parsing() {
        assert_eq!(
            ssh_client_ip(Some("10.250.3.1 51234 10.250.3.11 22")),
            Some(IpAddr::from([10, 250, 3, 1]))
        );
        assert_eq!(ssh_client_ip(Some("")), None);
        assert_eq!(ssh_client_ip(Some("junk 1 2 3")), None);
        assert_eq!(ssh_client_ip(None), None);
    }

    #[test]
    fn loopback_needs_no_bind_address() {
        assert_eq!(route_source("127.0.0.1:1".parse().expect("addr")), None);
    }
}
