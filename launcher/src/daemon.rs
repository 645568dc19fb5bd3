//! `dsmwrap --daemon`: the per-host bootstrap of a multi-host job.
//!
//! dsmexec starts one daemon per remote host through the launch agent (ssh or srun)
//! and talks to it over the agent's stdin and stdout ([`crate::proto`]). The daemon
//! starts that host's ranks with the same [`Agent`] dsmexec uses locally, relays their
//! output, exits and rank 0's input, and forwards signals to them.
//!
//! It never outlives its link: end of file on it, silence longer than the heartbeat
//! bound, or a terminating signal to the daemon all SIGKILL every rank's process group
//! before it exits. Killing the ssh client does not reliably reach the remote side, and
//! a cut cable gives no end of file at all, which is why both checks exist. The ranks
//! also die with the daemon itself (`PR_SET_PDEATHSIG`), so even a SIGKILLed daemon
//! leaves nothing behind.

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
            // Build the poll set: link, signals, rank pipes (unless the link is backed
            // up), rank 0's stdin (when there is something to write).
            let mut fds = Vec::new();
            let rx = self.link.rx_fd();
            let Some(rx) = rx else {
                // dsmexec went away: nothing left to do for it.
                return Ok(1);
            };
            fds.push(PollFd::new(rx, PollFlags::POLLIN));
            fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
            let tx = self.link.tx_fd_if_pending();
            let has_tx = tx.is_some();
            if let Some(tx) = tx {
                fds.push(PollFd::new(tx, PollFlags::POLLOUT));
            }
            let stdin_fd = self
                .stdin
                .as_ref()
                .filter(|_| !self.stdin_queue.is_empty())
                .map(|s| s.as_fd());
            let has_stdin = stdin_fd.is_some();
            if let Some(fd) = stdin_fd {
                fds.push(PollFd::new(fd, PollFlags::POLLOUT));
            }
            let mut pipe_ids: Vec<PipeId> = Vec::new();
            if self.link.pending() < MAX_QUEUED {
                if let Some(agent) = &self.agent {
                    for (id, fd) in agent.open_pipes() {
                        pipe_ids.push(id);
                        fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    }
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
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            let mut i = 2;
            if has_tx {
                if ready[i] {
                    self.link.flush();
                }
                i += 1;
            }
            if has_stdin {
                if ready[i] {
                    self.write_stdin();
                }
                i += 1;
            }
            for (k, id) in pipe_ids.into_iter().enumerate() {
                if ready[i + k] {
                    self.on_pipe(id, &mut buf);
                }
            }
            if ready[1] {
                if let Some(code) = self.on_signals() {
                    return Ok(code);
                }
            }
            if ready[0] {
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
                if let Some(agent) = &mut self.agent {
                    agent.sweep();
                }
                self.link.flush_blocking(Duration::from_secs(2));
                return Ok(Some(0));
            }
        }
        Ok(None)
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
        let pmi_ip = self
            .launcher_ip
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
