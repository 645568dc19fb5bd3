//! One job from start to exit code: the event loop and the exit policy.
//!
//! A single thread polls a signalfd, the PMI server and every rank's output pipes.
//! The first thing that goes wrong (a rank failing, a rank's `Abort`, a signal to the
//! launcher, `--timeout`) becomes the job's [`ExitCause`]; the launcher then stops the
//! remaining ranks politely, SIGKILLs them after the grace period, and everything that
//! happens to them afterwards is its own doing and does not count. Neither does a rank
//! killed by SIGPIPE after the launcher's own stdout or stderr went away (`dsmexec
//! ... | head`): as in a shell pipeline, that is how a writer learns its reader left.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dsmpi_runtime::bootstrap::JobToken;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::agent::{self, Agent, LaunchSpec, PipeId, RankExit, Reaped};
use crate::cli::Cli;
use crate::error::LaunchError;
use crate::output::{self, LineForwarder, Sinks, Stream};
use crate::pmi::{PmiEvent, PmiServer, PmiSource};

/// Exit code when `--timeout` expires, as `timeout(1)` uses.
pub const EXIT_TIMEOUT: i32 = 124;

/// How long to keep reading output after the last rank was reaped, in case a process
/// the rank left behind still holds a pipe open.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Signals the launcher reads through its signalfd.
const HANDLED_SIGNALS: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// A job ready to run: the command line, checked and with the program resolved.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Number of ranks.
    pub np: u32,
    /// Prefix output lines with `[rank] `.
    pub tag_output: bool,
    /// Time between the polite signal and SIGKILL.
    pub grace: Duration,
    /// Kill the job after this long.
    pub timeout: Option<Duration>,
    /// The program as the user named it.
    pub argv0: OsString,
    /// The program's resolved path.
    pub program: PathBuf,
    /// The program's arguments.
    pub args: Vec<OsString>,
}

impl JobConfig {
    /// Checks the parsed command line and finds the program on `PATH`.
    pub fn from_cli(cli: Cli) -> Result<JobConfig, LaunchError> {
        let grace = cli.grace();
        let mut command = cli.command.into_iter();
        let Some(argv0) = command.next() else {
            return Err(LaunchError::Usage("no program given".into()));
        };
        let program = agent::resolve_program(&argv0, std::env::var_os("PATH").as_deref())?;
        Ok(JobConfig {
            np: cli.np,
            tag_output: cli.tag_output,
            grace,
            timeout: cli.timeout,
            argv0,
            program,
            args: command.collect(),
        })
    }
}

/// Why a job ended other than by every rank exiting 0. The first cause wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitCause {
    /// A rank exited non-zero or was killed by a signal the launcher did not send.
    RankFailed {
        /// World rank.
        rank: u32,
        /// How it ended.
        exit: RankExit,
    },
    /// A rank sent `Abort` on its PMI link.
    Aborted {
        /// World rank.
        rank: u32,
        /// The exit code it asked for.
        code: i32,
    },
    /// The launcher received a terminating signal (number).
    Signaled(i32),
    /// `--timeout` expired.
    TimedOut,
}

impl ExitCause {
    /// The launcher's exit code for a job that ended this way.
    ///
    /// A failed rank's own code, or `128 + signal`; an abort's requested code, except
    /// that codes a shell cannot see or that would read as success (0, negative,
    /// above 255) become 1; `128 + signal` for a signal to the launcher; 124 for a
    /// timeout.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitCause::RankFailed { exit, .. } => exit.shell_code(),
            ExitCause::Aborted { code, .. } => {
                if (1..=255).contains(code) {
                    *code
                } else {
                    1
                }
            }
            ExitCause::Signaled(sig) => 128 + sig,
            ExitCause::TimedOut => EXIT_TIMEOUT,
        }
    }
}

/// The exit code of a finished job: 0 if nothing went wrong.
pub fn exit_code(cause: Option<&ExitCause>) -> i32 {
    cause.map_or(0, ExitCause::exit_code)
}

/// Runs the job to its end and returns the launcher's exit code.
///
/// Takes over the process's signal handling (it blocks the signals it handles and
/// ignores SIGPIPE), so it is meant to be called once, from `dsmexec`'s main thread,
/// before any other thread exists.
pub fn run(cfg: &JobConfig) -> Result<i32, LaunchError> {
    // Blocked before any rank exists, so not even the first SIGCHLD can be missed.
    let signals = take_over_signals()?;
    let token = JobToken::random().map_err(|e| LaunchError::os("make a job token", e))?;
    let pmi = PmiServer::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), token, cfg.np)
        .map_err(|e| LaunchError::os("open the PMI listener", e))?;
    let pmi_addr = pmi
        .local_addr()
        .map_err(|e| LaunchError::os("open the PMI listener", e))?;
    let host = nix::unistd::gethostname()
        .map_err(|e| LaunchError::os("read the host name", e))?
        .to_string_lossy()
        .into_owned();
    let spec = LaunchSpec {
        argv0: cfg.argv0.clone(),
        program: cfg.program.clone(),
        args: cfg.args.clone(),
        world_size: cfg.np,
        pmi_addr: pmi_addr.to_string(),
        token_hex: token.to_hex(),
        host,
    };
    let ranks: Vec<u32> = (0..cfg.np).collect();
    let started = Instant::now();
    let agent = Agent::spawn(&spec, &ranks)?;
    let mut job = Job {
        cfg,
        forwarders: ranks
            .iter()
            .map(|&r| {
                [
                    LineForwarder::new(r, cfg.tag_output),
                    LineForwarder::new(r, cfg.tag_output),
                ]
            })
            .collect(),
        agent,
        pmi,
        signals,
        sinks: Sinks::std(),
        cause: None,
        kill_at: None,
        timeout_at: cfg.timeout.map(|t| started + t),
        drain_until: None,
        output_closed: false,
        vanished: None,
        reaped: vec![false; cfg.np as usize],
        awaiting: None,
    };
    let result = job.event_loop();
    // Whatever happened, nothing of the job outlives the launcher.
    job.agent.sweep();
    if let Some(r) = job.awaiting.take() {
        job.report_failure(&r, None);
    }
    job.flush_partial_lines();
    result?;
    Ok(exit_code(job.cause.as_ref()))
}

/// Sets the signal dispositions the launcher relies on and returns a signalfd for the
/// signals it handles.
fn take_over_signals() -> Result<SignalFd, LaunchError> {
    // SAFETY: no handler function is installed, only the default and ignore
    // dispositions, which cannot run code in signal context.
    unsafe {
        // A parent that ignores SIGCHLD would make the kernel reap ranks for us and
        // waitpid fail; a closed stdout must be an EPIPE error, not death.
        nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl)
            .map_err(|e| LaunchError::os("reset SIGCHLD", e))?;
        nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn)
            .map_err(|e| LaunchError::os("ignore SIGPIPE", e))?;
    }
    let mut mask = SigSet::empty();
    for sig in HANDLED_SIGNALS {
        mask.add(sig);
    }
    mask.thread_block()
        .map_err(|e| LaunchError::os("block signals", e))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| LaunchError::os("create a signalfd", e))
}

/// What a ready descriptor belongs to.
#[derive(Clone, Copy, Debug)]
enum Source {
    Signals,
    Pmi(PmiSource),
    Pipe(PipeId),
}

struct Job<'a> {
    cfg: &'a JobConfig,
    agent: Agent,
    pmi: PmiServer,
    signals: SignalFd,
    sinks: Sinks,
    /// Per world rank: stdout and stderr forwarders.
    forwarders: Vec<[LineForwarder; 2]>,
    /// Set by the first thing that goes wrong; never overwritten.
    cause: Option<ExitCause>,
    /// When to SIGKILL what the polite signal left alive.
    kill_at: Option<Instant>,
    /// When `--timeout` expires (cleared once it has fired).
    timeout_at: Option<Instant>,
    /// When to stop waiting for output after the last rank was reaped.
    drain_until: Option<Instant>,
    /// Whether the launcher closed the ranks' pipes of a stream it cannot write.
    output_closed: bool,
    /// The first rank a peer reported lost (links closed without finalize).
    vanished: Option<u32>,
    /// Per world rank: reaped yet.
    reaped: Vec<bool>,
    /// A failure that came after `vanished` disappeared: the job waits for the
    /// vanished rank's own status before it says which rank failed.
    awaiting: Option<Reaped>,
}

impl Job<'_> {
    fn event_loop(&mut self) -> Result<(), LaunchError> {
        let mut buf = vec![0u8; output::MAX_LINE];
        let mut pmi_events = Vec::new();
        loop {
            let now = Instant::now();
            self.check_deadlines(now);
            if self.agent.all_reaped() {
                if !self.agent.has_open_pipes() {
                    return Ok(());
                }
                // Every rank is gone; only something a rank left behind can still
                // hold a pipe open. Give it a moment, not forever.
                let until = *self.drain_until.get_or_insert(now + DRAIN_AFTER_EXIT);
                if now >= until {
                    return Ok(());
                }
            }
            let mut ready = self.wait(now)?;
            // PMI first: a rank reports a vanished peer before it fails itself, and
            // the report must be read before that failure's SIGCHLD is.
            ready.sort_by_key(|(src, _)| match src {
                Source::Pmi(_) => 0,
                Source::Pipe(_) => 1,
                Source::Signals => 2,
            });
            for (src, ready) in ready {
                match src {
                    Source::Signals => self.on_signals(),
                    Source::Pmi(src) => {
                        self.pmi.handle(src, ready, &mut pmi_events);
                        for event in pmi_events.drain(..) {
                            self.on_pmi(event);
                        }
                    }
                    Source::Pipe(id) => self.on_pipe(id, &mut buf),
                }
            }
        }
    }

    /// Polls every descriptor until something is ready or the next deadline.
    fn wait(&self, now: Instant) -> Result<Vec<(Source, PollFlags)>, LaunchError> {
        let mut sources = vec![Source::Signals];
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        for (src, fd, flags) in self.pmi.poll_set() {
            sources.push(Source::Pmi(src));
            fds.push(PollFd::new(fd, flags));
        }
        for (id, fd) in self.agent.open_pipes() {
            sources.push(Source::Pipe(id));
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, self.poll_timeout(now)) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(LaunchError::os("wait for events", e)),
        }
        Ok(sources
            .into_iter()
            .zip(&fds)
            .filter_map(|(src, fd)| {
                let ready = fd.revents().filter(|r| !r.is_empty())?;
                Some((src, ready))
            })
            .collect())
    }

    /// Time until the earliest deadline, rounded up to whole milliseconds so the
    /// loop does not spin just short of it.
    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        let next = [self.kill_at, self.timeout_at, self.drain_until]
            .into_iter()
            .flatten()
            .min();
        match next {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        if self.timeout_at.is_some_and(|t| now >= t) {
            self.timeout_at = None;
            if self.cause.is_none() {
                let secs = self.cfg.timeout.map_or(0.0, |t| t.as_secs_f64());
                report(format_args!("job exceeded --timeout of {secs} s, killed"));
                self.stop(ExitCause::TimedOut, Signal::SIGTERM);
            }
        }
        if self.kill_at.is_some_and(|t| now >= t) {
            self.kill_now();
        }
    }

    /// Makes `cause` the job's cause (unless there already is one) and sends `sig` to
    /// every live rank, with SIGKILL to follow after the grace period.
    fn stop(&mut self, cause: ExitCause, sig: Signal) {
        if self.cause.is_some() {
            return;
        }
        self.cause = Some(cause);
        self.agent.signal_groups(sig);
        self.kill_at = Some(Instant::now() + self.cfg.grace);
    }

    fn kill_now(&mut self) {
        self.agent.signal_groups(Signal::SIGKILL);
        self.kill_at = None;
    }

    fn on_signals(&mut self) {
        // Until drained (the signalfd is non-blocking) or unreadable: either way there
        // is nothing more to learn now.
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => {}
                Signal::SIGUSR1 | Signal::SIGUSR2 => self.agent.signal_processes(sig),
                _ if self.cause.is_some() => {
                    // A second interrupt, or one while the job is already going down:
                    // the user does not want to wait for the grace period.
                    self.kill_now();
                }
                _ => self.stop(ExitCause::Signaled(sig as i32), sig),
            }
        }
        // SIGCHLDs coalesce, so look at every rank whatever the signal was.
        for reaped in self.agent.reap() {
            self.on_reaped(reaped);
        }
    }

    fn on_reaped(&mut self, r: Reaped) {
        if let Some(slot) = self.reaped.get_mut(r.rank as usize) {
            *slot = true;
        }
        if self.vanished == Some(r.rank) {
            if let Some(first) = self.awaiting.take() {
                // The rank whose disappearance started it all: its own status tells
                // the story, unless it left quietly or was stopped by the launcher.
                let quiet = matches!(
                    r.exit,
                    RankExit::Code(0)
                        | RankExit::Signal(libc::SIGTERM)
                        | RankExit::Signal(libc::SIGKILL)
                );
                let blamed = if quiet { first } else { r };
                self.report_failure(&blamed, Some(r.rank).filter(|_| quiet));
                self.cause = Some(ExitCause::RankFailed {
                    rank: blamed.rank,
                    exit: blamed.exit,
                });
                return;
            }
        }
        if self.cause.is_some() || r.exit.is_success() {
            return;
        }
        if self.output_closed && r.exit == RankExit::Signal(libc::SIGPIPE) {
            // It wrote to a pipe the launcher closed because its own reader left:
            // `yes` in `yes | head`, not a failure of the job.
            return;
        }
        let exit = r.exit;
        let rank = r.rank;
        match self.vanished {
            Some(v) if v != rank && !self.reaped.get(v as usize).copied().unwrap_or(true) => {
                // This rank most likely failed because `v` vanished: stop the job now,
                // but name the culprit once its status is known (within the grace).
                self.awaiting = Some(r);
            }
            _ => self.report_failure(&r, None),
        }
        self.stop(ExitCause::RankFailed { rank, exit }, Signal::SIGTERM);
    }

    /// The one line that says which rank failed, where and how.
    fn report_failure(&self, r: &Reaped, vanished_first: Option<u32>) {
        match vanished_first {
            None => report(format_args!(
                "rank {} (pid {}) on {} {}",
                r.rank,
                r.pid,
                self.agent.host(),
                r.exit
            )),
            Some(v) => report(format_args!(
                "rank {} (pid {}) on {} {} after rank {v} left the job without finalizing",
                r.rank,
                r.pid,
                self.agent.host(),
                r.exit
            )),
        }
    }

    fn on_pmi(&mut self, event: PmiEvent) {
        match event {
            PmiEvent::Dropped { peer, reason } => {
                report(format_args!("dropped PMI connection from {peer}: {reason}"));
            }
            PmiEvent::Abort {
                rank,
                pid,
                code,
                msg,
            } => {
                if self.cause.is_none() {
                    report(format_args!("rank {rank} (pid {pid}) aborted: {msg}"));
                    self.stop(ExitCause::Aborted { rank, code }, Signal::SIGTERM);
                }
            }
            PmiEvent::PeerLost { peer, .. } => {
                if self.cause.is_none() && self.vanished.is_none() {
                    self.vanished = Some(peer);
                }
            }
            // Recorded by the server; nothing for the job to do.
            PmiEvent::TableSent | PmiEvent::Finalized { .. } => {}
        }
    }

    fn on_pipe(&mut self, id: PipeId, buf: &mut [u8]) {
        let data = self.agent.read_pipe(id, buf).map(|n| &buf[..n]);
        let Some(fwd) = self.forwarders.get_mut(id.rank as usize) else {
            return;
        };
        let failed = match (id.stream, data) {
            (Stream::Stdout, Some(d)) => fwd[0].feed(d, &mut self.sinks.stdout),
            (Stream::Stdout, None) => fwd[0].finish(&mut self.sinks.stdout),
            (Stream::Stderr, Some(d)) => fwd[1].feed(d, &mut self.sinks.stderr),
            (Stream::Stderr, None) => fwd[1].finish(&mut self.sinks.stderr),
        };
        let Some(e) = failed else {
            return;
        };
        // Nothing can be forwarded any more: let the ranks find out on their next
        // write, as in a shell pipeline whose reader has gone (`dsmexec ... | head`).
        self.agent.close_stream(id.stream);
        self.output_closed = true;
        // EPIPE is that reader leaving, which needs no explanation.
        if e != Errno::EPIPE {
            let name = match id.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            report(format_args!("cannot write to {name}: {e}"));
        }
    }

    /// Forwards the unfinished last lines of pipes given up on.
    fn flush_partial_lines(&mut self) {
        self.agent.close_pipes();
        for [out, err] in &mut self.forwarders {
            out.finish(&mut self.sinks.stdout);
            err.finish(&mut self.sinks.stderr);
        }
    }
}

/// One line on stderr, prefixed `dsmexec: `.
fn report(msg: std::fmt::Arguments<'_>) {
    output::diag("dsmexec", msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_policy() {
        assert_eq!(exit_code(None), 0);
        let failed = |exit| ExitCause::RankFailed { rank: 3, exit };
        assert_eq!(failed(RankExit::Code(7)).exit_code(), 7);
        assert_eq!(failed(RankExit::Signal(libc::SIGSEGV)).exit_code(), 139);
        assert_eq!(failed(RankExit::Vanished).exit_code(), 1);
        let aborted = |code| ExitCause::Aborted { rank: 0, code };
        assert_eq!(aborted(3).exit_code(), 3);
        assert_eq!(aborted(255).exit_code(), 255);
        assert_eq!(
            aborted(0).exit_code(),
            1,
            "an abort must not look like success"
        );
        assert_eq!(aborted(-3).exit_code(), 1);
        assert_eq!(aborted(256).exit_code(), 1);
        assert_eq!(ExitCause::Signaled(libc::SIGTERM).exit_code(), 143);
        assert_eq!(ExitCause::Signaled(libc::SIGINT).exit_code(), 130);
        assert_eq!(ExitCause::TimedOut.exit_code(), 124);
    }
}
