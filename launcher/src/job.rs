//! One job from start to exit code: the event loop and the exit policy.
//!
//! A single thread polls a signalfd, the PMI server and every rank's output pipes.
//! The first thing that goes wrong (a rank failing, a rank's `Abort`, a signal to the
//! launcher, `--timeout`) becomes the job's [`ExitCause`]; the launcher then stops the
//! remaining ranks politely, SIGKILLs them after the grace period, and everything that
//! happens to them afterwards is its own doing and does not count. Neither does a rank
//! killed by SIGPIPE after the launcher's own stdout or stderr went away (`dsmexec
//! ... | head`): as in a shell pipeline, that is how a writer learns its reader left.
//!
//! Ranks on this host are started directly ([`Agent`]); every other host gets one
//! launch agent process (ssh, or srun) running `dsmwrap --daemon` there
//! ([`crate::daemon`]). With ssh, the remote hosts form a launch tree of degree
//! `--launch-fanout` K ([`launch_tree`]): dsmexec starts at most K of them, and each
//! daemon starts its own children, so no launcher has more than K handshakes under way
//! and no sshd sees more than one connection per job. Up to K hosts the tree is flat
//! (every host a child of dsmexec), which is the same thing. With srun (whose own
//! launch does not go through sshd) every host is started by dsmexec, at most K at
//! once. The loop treats a remote rank like a local one: its output, exit and signals
//! travel over the host's link, relayed by the daemons on the way
//! ([`Down::Relay`], [`Up::Relay`]). A host whose link ends or falls silent for longer
//! than the heartbeat bound is lost with its whole subtree, and that ends the job like
//! a failed rank; a daemon reports a child it lost the same way ([`Up::Lost`]).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dsmpi_runtime::bootstrap::JobToken;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::agent::{self, Agent, LaunchSpec, PipeId, RankExit, Reaped, StdinMode};
use crate::cli::{BindTo, Cli};
use crate::error::{LaunchError, EXIT_LAUNCHER_FAILURE};
use crate::hostfile::{self, HostSlots};
use crate::output::{self, LineForwarder, Sink, Sinks, Stream};
use crate::pmi::{PmiEvent, PmiServer, PmiSource};
use crate::proto::{self, Down, JobSpec, ReadOutcome, TreeNode, Up};
use crate::remote::{self, AgentProcess, LaunchAgent};
use crate::ship;

/// Exit code when `--timeout` expires, as `timeout(1)` uses.
pub const EXIT_TIMEOUT: i32 = 124;

/// Output queued for a slow reader beyond which dsmexec stops reading more (the
/// ranks then block on their pipes, the daemons' links fill up): bounded memory.
pub const MAX_BACKLOG: usize = 16 << 20;

/// How long to keep reading output after the last rank was reaped, in case a process
/// the rank left behind still holds a pipe open.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// How long the job waits, after a rank failed because another one vanished (closed
/// its links without finalizing), for the vanished rank to exit by itself before
/// it stops the job: long enough for a panicking rank to print its backtrace on a
/// loaded machine, short against the launcher's 2 s bound for taking a job down.
const CULPRIT_WAIT: Duration = Duration::from_millis(1000);

/// Signals the launcher reads through its signalfd.
const HANDLED_SIGNALS: [Signal; 9] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTSTP,
    Signal::SIGCONT,
];

/// One host of the job and the world ranks it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    /// The name to reach it by and to show.
    pub name: String,
    /// World ranks, in local-rank order.
    pub ranks: Vec<u32>,
    /// Whether it is this machine (started directly, no launch agent).
    pub local: bool,
}

/// A job ready to run: the command line, checked and with the program resolved.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Number of ranks.
    pub np: u32,
    /// Prefix output lines with `[rank] ` (one host) or `[host:rank] `.
    pub tag_output: bool,
    /// Time between the polite signal and SIGKILL.
    pub grace: Duration,
    /// Kill the job after this long.
    pub timeout: Option<Duration>,
    /// The program as the user named it.
    pub argv0: OsString,
    /// The program's resolved local path (what this host runs, and what `--ship`
    /// reads); the name as given when no rank runs here and nothing is shipped.
    pub program: PathBuf,
    /// The program's arguments.
    pub args: Vec<OsString>,
    /// Where ranks run; hosts without ranks are left out.
    pub hosts: Vec<HostPlan>,
    /// `-x` variables, with their values.
    pub env: Vec<(OsString, OsString)>,
    /// `--wdir`.
    pub wdir: Option<PathBuf>,
    /// `--ship`.
    pub ship: bool,
    /// `--output-dir`.
    pub output_dir: Option<PathBuf>,
    /// `--display-map`.
    pub display_map: bool,
    /// `--bind-to core`.
    pub bind_cores: bool,
    /// How to reach remote hosts.
    pub agent: LaunchAgent,
    /// `dsmwrap`'s path on the remote hosts.
    pub wrap: String,
    /// Remote hosts being connected to at once, at most.
    pub fanout: usize,
    /// Silence after which a host is lost.
    pub dead_after: Duration,
    /// How long a host may take to answer and start its ranks.
    pub connect_timeout: Duration,
}

impl JobConfig {
    /// Checks the parsed command line, places the ranks and finds the program.
    pub fn from_cli(cli: Cli) -> Result<JobConfig, LaunchError> {
        let env_lookup = |k: &str| std::env::var(k).ok();
        JobConfig::from_cli_with(cli, &env_lookup)
    }

    /// [`JobConfig::from_cli`] with the environment read through `env`.
    pub fn from_cli_with(
        cli: Cli,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<JobConfig, LaunchError> {
        let grace = cli.grace();
        let usage = |e: hostfile::HostError| LaunchError::Usage(e.to_string());
        let mut in_slurm = false;
        let hosts: Option<Vec<HostSlots>> = match (&cli.hostfile, &cli.host) {
            (Some(_), Some(_)) => {
                return Err(LaunchError::Usage(
                    "give --hostfile or --host, not both".into(),
                ))
            }
            (Some(f), None) => Some(hostfile::read_hostfile(f).map_err(usage)?),
            (None, Some(list)) => Some(hostfile::parse_host_list(list).map_err(usage)?),
            (None, None) => match hostfile::slurm_hosts(env) {
                Some(h) => {
                    in_slurm = true;
                    Some(h.map_err(usage)?)
                }
                None => None,
            },
        };
        let this_host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (np, hosts) = match hosts {
            None => {
                // Today's single-host job: this machine takes any number of ranks.
                let np = cli.np.unwrap_or(1);
                let plan = HostPlan {
                    name: this_host.clone(),
                    ranks: (0..np).collect(),
                    local: true,
                };
                (np, vec![plan])
            }
            Some(hosts) => {
                let total: u64 = hosts.iter().map(|h| u64::from(h.slots)).sum();
                let np = cli
                    .np
                    .unwrap_or_else(|| u32::try_from(total).unwrap_or(u32::MAX));
                let placed =
                    hostfile::place(&hosts, np, cli.map_by, cli.oversubscribe).map_err(usage)?;
                let plans = hosts
                    .into_iter()
                    .zip(placed)
                    .filter(|(_, ranks)| !ranks.is_empty())
                    .map(|(h, ranks)| HostPlan {
                        local: is_local(&h.name, &this_host),
                        name: h.name,
                        ranks,
                    })
                    .collect();
                (np, plans)
            }
        };
        let mut command = cli.command.into_iter();
        let Some(argv0) = command.next() else {
            return Err(LaunchError::Usage("no program given".into()));
        };
        let runs_here = hosts.iter().any(|h| h.local);
        let program = if runs_here || cli.ship {
            agent::resolve_program(&argv0, std::env::var_os("PATH").as_deref())?
        } else {
            // Only the remote hosts run it: their PATH decides, not ours.
            PathBuf::from(&argv0)
        };
        let mut exported = Vec::new();
        for x in &cli.export {
            let (k, v) = match x.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = env(x).ok_or_else(|| {
                        LaunchError::Usage(format!("-x {x}: {x} is not set here"))
                    })?;
                    (x.clone(), v)
                }
            };
            // The bootstrap variables are the launcher's to set; other DSMPI_*
            // knobs (timeouts) are the user's.
            let owned = crate::wrap::REQUIRED_VARS.contains(&k.as_str())
                || k == dsmpi_runtime::bootstrap::ENV_BIND_ADDR;
            if k.is_empty() || owned {
                return Err(LaunchError::Usage(format!(
                    "-x {x}: cannot override the launcher's own variables"
                )));
            }
            exported.push((OsString::from(k), OsString::from(v)));
        }
        // Both ends of a same-host pair must agree on shared memory: every rank gets
        // the transport chosen here (`--transport`, else this environment's).
        let transport = match cli.transport {
            Some(t) => Some(t.as_str().to_string()),
            None => env(dsmpi_runtime::transport::shm::ENV_TRANSPORT),
        };
        if let Some(t) = transport {
            exported.retain(|(k, _)| k != dsmpi_runtime::transport::shm::ENV_TRANSPORT);
            exported.push((
                OsString::from(dsmpi_runtime::transport::shm::ENV_TRANSPORT),
                OsString::from(t),
            ));
        }
        let agent_cmd = cli
            .launch_agent
            .clone()
            .or_else(|| env("DSMPI_LAUNCH_AGENT"))
            .unwrap_or_else(|| {
                if in_slurm {
                    "srun".into()
                } else {
                    // No password prompt can hang a launch; no X11 forwarding.
                    "ssh -x -o BatchMode=yes".into()
                }
            });
        let wrap = match cli.wrap.clone() {
            Some(w) => w,
            None => default_wrap()?,
        };
        Ok(JobConfig {
            np,
            tag_output: cli.tag_output,
            grace,
            timeout: cli.timeout,
            argv0,
            program,
            args: command.collect(),
            hosts,
            env: exported,
            wdir: cli.wdir,
            ship: cli.ship,
            output_dir: cli.output_dir,
            display_map: cli.display_map,
            bind_cores: cli.bind_to == BindTo::Core,
            agent: LaunchAgent::parse(&agent_cmd)?,
            wrap,
            fanout: cli.launch_fanout as usize,
            dead_after: cli.heartbeat_timeout,
            connect_timeout: cli.connect_timeout,
        })
    }

    /// Whether any rank runs on another host.
    pub fn is_multi_host(&self) -> bool {
        self.hosts.iter().any(|h| !h.local)
    }
}

/// Whether `name` means this machine: started directly, without a launch agent.
pub fn is_local(name: &str, this_host: &str) -> bool {
    let short = this_host.split('.').next().unwrap_or(this_host);
    matches!(name, "localhost" | "127.0.0.1" | "::1")
        || (!this_host.is_empty() && (name == this_host || name == short))
}

/// The launch tree over `n` remote hosts with at most `degree` children per
/// launcher: for each host, the host that starts it (`None` for dsmexec).
///
/// Breadth-first: host `j` is node `j + 1` of a complete `degree`-ary tree rooted at
/// dsmexec (node 0), so dsmexec starts hosts `0..degree`, host 0 starts the next
/// `degree`, and so on. This is the shallowest tree with that degree; its depth grows
/// as log(n) / log(degree), and each level costs one ssh handshake of start-up.
/// With `n <= degree` every host is a child of dsmexec.
pub fn launch_tree(n: usize, degree: usize) -> Vec<Option<usize>> {
    let degree = degree.max(1);
    (0..n)
        .map(|j| {
            let parent_node = j / degree;
            parent_node.checked_sub(1)
        })
        .collect()
}

/// `dsmwrap` next to the running `dsmexec`: the same install on every host.
fn default_wrap() -> Result<String, LaunchError> {
    let exe = std::env::current_exe().map_err(|e| LaunchError::os("find dsmexec's path", e))?;
    Ok(exe.with_file_name("dsmwrap").to_string_lossy().into_owned())
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
    /// A host's ranks could not be started (unreachable, refused, no program).
    LaunchFailed {
        /// The host.
        host: String,
        /// The exit code it calls for (127 no program, 126 not executable, else 1).
        code: i32,
    },
    /// A host vanished while its ranks ran (link closed or silent).
    HostLost {
        /// The host.
        host: String,
    },
}

impl ExitCause {
    /// The launcher's exit code for a job that ended this way.
    ///
    /// A failed rank's own code, or `128 + signal`; an abort's requested code, except
    /// that codes a shell cannot see or that would read as success (0, negative,
    /// above 255) become 1; `128 + signal` for a signal to the launcher; 124 for a
    /// timeout; the daemon's code for a launch failure; 1 for a lost host.
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
            ExitCause::LaunchFailed { code, .. } => {
                if (1..=255).contains(code) {
                    *code
                } else {
                    EXIT_LAUNCHER_FAILURE
                }
            }
            ExitCause::HostLost { .. } => EXIT_LAUNCHER_FAILURE,
        }
    }
}

/// The exit code of a finished job: 0 if nothing went wrong.
pub fn exit_code(cause: Option<&ExitCause>) -> i32 {
    cause.map_or(0, ExitCause::exit_code)
}

/// Where a remote host is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not started yet (waiting for a launch slot).
    Queued,
    /// The agent runs; waiting for the daemon's hello.
    Connecting,
    /// The spec went out; waiting for the ranks to start.
    Starting,
    /// The ranks run.
    Running,
    /// Nothing more is expected from it.
    Done,
}

/// One remote host.
struct Remote {
    name: String,
    ranks: Vec<u32>,
    phase: Phase,
    /// The host whose daemon starts this one (`None`: dsmexec does).
    parent: Option<usize>,
    /// The hosts this one's daemon starts.
    children: Vec<usize>,
    /// dsmexec's address as this host saw it (its hello), if it is a child of
    /// dsmexec.
    seen_ip: Option<IpAddr>,
    /// The launch agent, for a child of dsmexec only.
    proc: Option<AgentProcess>,
    /// Last frame (or launch) time, for the heartbeat and connect bounds.
    last_rx: Instant,
    last_tx: Instant,
    /// Output streams still open, counted down by `OutputEnd`.
    open_streams: usize,
    /// Per local index: the rank's pid once started, and whether it has ended.
    pids: Vec<Option<u32>>,
    ended: Vec<bool>,
}

impl Remote {
    fn all_ended(&self) -> bool {
        self.ended.iter().all(|&e| e)
    }
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
    let multi = cfg.is_multi_host();
    // Remote ranks must reach the PMI service from their hosts' network.
    let bind_ip = if multi {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    let pmi = PmiServer::bind(bind_ip, token, cfg.np)
        .map_err(|e| LaunchError::os("open the PMI listener", e))?;
    let pmi_port = pmi
        .local_addr()
        .map_err(|e| LaunchError::os("open the PMI listener", e))?
        .port();
    let mut host_of = vec![String::new(); cfg.np as usize];
    for h in &cfg.hosts {
        for &r in &h.ranks {
            if let Some(slot) = host_of.get_mut(r as usize) {
                *slot = h.name.clone();
            }
        }
    }
    let forwarders = (0..cfg.np)
        .map(|r| {
            let prefix = match (cfg.tag_output, multi) {
                (false, _) => Vec::new(),
                (true, false) => output::tag_prefix(r),
                (true, true) => format!("[{}:{r}] ", host_of[r as usize]).into_bytes(),
            };
            [
                LineForwarder::with_prefix(prefix.clone()),
                LineForwarder::with_prefix(prefix),
            ]
        })
        .collect();
    let files = match &cfg.output_dir {
        Some(dir) => Some(open_output_files(dir, cfg.np)?),
        None => None,
    };
    let now = Instant::now();
    let remotes: Vec<Remote> = cfg
        .hosts
        .iter()
        .filter(|h| !h.local)
        .map(|h| Remote {
            name: h.name.clone(),
            ranks: h.ranks.clone(),
            phase: Phase::Queued,
            parent: None,
            children: Vec::new(),
            seen_ip: None,
            proc: None,
            last_rx: now,
            last_tx: now,
            open_streams: 2 * h.ranks.len(),
            pids: vec![None; h.ranks.len()],
            ended: vec![false; h.ranks.len()],
        })
        .collect();
    let mut remotes = remotes;
    // srun starts its task through Slurm's own daemons, not sshd, and a node may not
    // be able to run srun for another: every host is dsmexec's child there.
    let degree = if cfg.agent.is_srun() {
        usize::MAX
    } else {
        cfg.fanout
    };
    for (j, parent) in launch_tree(remotes.len(), degree).into_iter().enumerate() {
        remotes[j].parent = parent;
        if let Some(p) = parent {
            remotes[p].children.push(j);
        }
    }
    if cfg.display_map {
        print_map(cfg, &remotes);
    }
    let rank0_remote = remotes.iter().position(|r| r.ranks.contains(&0));
    let mut job = Job {
        cfg,
        forwarders,
        files,
        agent: None,
        local_started: false,
        remotes,
        queue: VecDeque::new(),
        pmi,
        pmi_port,
        token,
        fallback_ip: fallback_ip(),
        signals,
        // With remote hosts the loop must keep running while a slow reader holds the
        // output back, or heartbeats stop and the hosts give up on the job.
        sinks: if multi {
            Sinks::threaded().map_err(|e| LaunchError::os("start the output thread", e))?
        } else {
            Sinks::std()
        },
        last_turn: now,
        cause: None,
        kill_at: None,
        timeout_at: cfg.timeout.map(|t| now + t),
        drain_until: None,
        output_closed: false,
        vanished: None,
        reaped: vec![false; cfg.np as usize],
        awaiting: None,
        culprit_by: None,
        host_of,
        rank0_remote,
        stdin_open: rank0_remote.is_some(),
        ship: None,
    };
    if cfg.ship && cfg.is_multi_host() {
        let mut bytes = Vec::new();
        File::open(&cfg.program)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| {
                LaunchError::os(format!("read {} to ship it", cfg.program.display()), e)
            })?;
        let hash = ship::sha256_hex(&bytes);
        job.ship = Some((bytes, hash));
    }
    // dsmexec starts the roots of the tree; the daemons start the rest.
    job.queue = (0..job.remotes.len())
        .filter(|&i| job.remotes[i].parent.is_none())
        .collect();
    let result = job.run_all();
    // Whatever happened, nothing of the job outlives the launcher.
    if let Some(agent) = &mut job.agent {
        agent.sweep();
    }
    job.shutdown_remotes();
    if let Some(r) = job.awaiting.take() {
        job.report_failure(&r, None);
    }
    job.flush_partial_lines();
    job.sinks.drain();
    result?;
    Ok(exit_code(job.cause.as_ref()))
}

/// `--display-map`: one line per host, on stdout, before anything starts; a host
/// another host's daemon starts says which (`(launched by node1)`).
fn print_map(cfg: &JobConfig, remotes: &[Remote]) {
    let mut text = String::new();
    let mut remote = remotes.iter();
    for h in &cfg.hosts {
        let ranks: Vec<String> = h.ranks.iter().map(u32::to_string).collect();
        let via = if h.local {
            " (local)".to_string()
        } else {
            remote
                .next()
                .and_then(|r| r.parent)
                .and_then(|p| remotes.get(p))
                .map(|p| format!(" (launched by {})", p.name))
                .unwrap_or_default()
        };
        text.push_str(&format!(
            "dsmexec: map: {}{via}: ranks {}\n",
            h.name,
            ranks.join(",")
        ));
    }
    let mut out = Sink::new(std::io::stdout());
    for line in text.lines() {
        out.write_line(b"", line.as_bytes());
    }
}

/// `DIR/rank.N.stdout` and `DIR/rank.N.stderr` for every rank.
fn open_output_files(dir: &std::path::Path, np: u32) -> Result<Vec<[Sink<File>; 2]>, LaunchError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LaunchError::os(format!("create {}", dir.display()), e))?;
    (0..np)
        .map(|r| {
            let open = |stream: &str| {
                let path = dir.join(format!("rank.{r}.{stream}"));
                File::create(&path)
                    .map(Sink::new)
                    .map_err(|e| LaunchError::os(format!("create {}", path.display()), e))
            };
            Ok([open("stdout")?, open("stderr")?])
        })
        .collect()
}

/// This host's address for hosts that cannot tell it from their link: the first
/// non-loopback address its name resolves to, else loopback.
fn fallback_ip() -> IpAddr {
    let name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    (name.as_str(), 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|a| !a.ip().is_loopback()))
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip())
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
    /// A remote host's link (read side).
    Link(usize),
    /// A remote host's link has queued bytes to write.
    LinkOut(usize),
    /// A launch agent's stderr.
    AgentErr(usize),
    /// dsmexec's own stdin, relayed to a remote rank 0.
    Stdin,
}

struct Job<'a> {
    cfg: &'a JobConfig,
    /// This host's ranks, once started.
    agent: Option<Agent>,
    /// Whether this host's ranks were started (or there are none).
    local_started: bool,
    remotes: Vec<Remote>,
    /// Remote hosts waiting for a launch slot, in order.
    queue: VecDeque<usize>,
    pmi: PmiServer,
    pmi_port: u16,
    token: JobToken,
    fallback_ip: IpAddr,
    signals: SignalFd,
    sinks: Sinks,
    /// `--output-dir`: per world rank, stdout and stderr files.
    files: Option<Vec<[Sink<File>; 2]>>,
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
    /// While `awaiting`: when to stop waiting for the vanished rank to exit by
    /// itself, and stop the job anyway.
    culprit_by: Option<Instant>,
    /// Per world rank: its host's name.
    host_of: Vec<String>,
    /// The remote host running rank 0, whose stdin dsmexec relays.
    rank0_remote: Option<usize>,
    /// Whether dsmexec's stdin is still being relayed.
    stdin_open: bool,
    /// When the event loop last came round: a loop held up longer than a heartbeat
    /// (stopped dsmexec, starved machine) cannot judge the hosts' heartbeats.
    last_turn: Instant,
    /// `--ship`: the program's bytes and their SHA-256, read once at start so every
    /// host gets the same bytes whatever happens to the file meanwhile.
    ship: Option<(Vec<u8>, String)>,
}

impl Job<'_> {
    fn run_all(&mut self) -> Result<(), LaunchError> {
        if self.remotes.is_empty() {
            self.start_local(None)?;
        }
        self.event_loop()
    }

    /// Starts this host's ranks. `launcher_ip` is this host's address as the remote
    /// hosts see it (their ranks must reach ours at it).
    fn start_local(&mut self, launcher_ip: Option<IpAddr>) -> Result<(), LaunchError> {
        self.local_started = true;
        let Some(plan) = self.cfg.hosts.iter().find(|h| h.local) else {
            return Ok(());
        };
        let multi = !self.remotes.is_empty();
        let ip = launcher_ip.unwrap_or(if multi {
            self.fallback_ip
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
        let spec = LaunchSpec {
            argv0: self.cfg.argv0.clone(),
            program: self.cfg.program.clone(),
            args: self.cfg.args.clone(),
            world_size: self.cfg.np,
            pmi_addr: SocketAddr::new(ip, self.pmi_port).to_string(),
            token_hex: self.token.to_hex(),
            host: plan.name.clone(),
            env: self.cfg.env.clone(),
            wdir: self.cfg.wdir.clone(),
            bind_addr: multi.then(|| ip.to_string()),
            rank0_stdin: StdinMode::Inherit,
            bind_cores: self.cfg.bind_cores,
        };
        self.agent = Some(Agent::spawn(&spec, &plan.ranks)?);
        Ok(())
    }

    fn event_loop(&mut self) -> Result<(), LaunchError> {
        let mut buf = vec![0u8; output::MAX_LINE];
        let mut pmi_events = Vec::new();
        loop {
            let now = Instant::now();
            self.launch_more(now);
            self.check_deadlines(now);
            self.check_remotes(now);
            if self.all_reaped() {
                if !self.has_open_pipes() {
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
                Source::Pipe(_) | Source::Link(_) => 1,
                _ => 2,
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
                    Source::Link(i) => self.on_link(i)?,
                    Source::LinkOut(i) => {
                        if let Some(p) = &mut self.remotes[i].proc {
                            p.link.flush();
                        }
                    }
                    Source::AgentErr(i) => self.on_agent_stderr(i),
                    Source::Stdin => self.on_stdin(&mut buf),
                }
            }
        }
    }

    fn all_reaped(&self) -> bool {
        self.local_started
            && self.agent.as_ref().is_none_or(Agent::all_reaped)
            && self
                .remotes
                .iter()
                .all(|r| r.phase == Phase::Done || r.all_ended())
    }

    fn has_open_pipes(&self) -> bool {
        self.agent.as_ref().is_some_and(Agent::has_open_pipes)
            || self
                .remotes
                .iter()
                .any(|r| r.phase != Phase::Done && r.open_streams > 0)
    }

    /// Starts launch agents while fewer than `fanout` hosts are connecting.
    fn launch_more(&mut self, now: Instant) {
        while self.cause.is_none() {
            // dsmexec's own launches only: the daemons bound theirs.
            let connecting = self
                .remotes
                .iter()
                .filter(|r| r.parent.is_none())
                .filter(|r| matches!(r.phase, Phase::Connecting | Phase::Starting))
                .count();
            if connecting >= self.cfg.fanout {
                return;
            }
            let Some(i) = self.queue.pop_front() else {
                return;
            };
            let argv = self
                .cfg
                .agent
                .command(&self.remotes[i].name, &self.cfg.wrap);
            match AgentProcess::spawn(&argv) {
                Ok(p) => {
                    let r = &mut self.remotes[i];
                    r.proc = Some(p);
                    r.phase = Phase::Connecting;
                    r.last_rx = now;
                }
                Err(e) => self.launch_failed(i, e.exit_code(), &e.to_string()),
            }
        }
    }

    /// Connect timeouts and heartbeats of the remote hosts.
    fn check_remotes(&mut self, now: Instant) {
        let stalled = now.saturating_duration_since(self.last_turn) > self.heartbeat() * 2;
        self.last_turn = now;
        if stalled || self.sinks.backlog() > MAX_BACKLOG {
            // dsmexec itself was not listening (held up, or not reading links while
            // its output is backed up): silence from the hosts proves nothing.
            for r in &mut self.remotes {
                r.last_rx = now;
            }
        }
        for i in 0..self.remotes.len() {
            let r = &self.remotes[i];
            let silent = now.saturating_duration_since(r.last_rx);
            if r.parent.is_some() {
                // Its parent's daemon watches its link (and dsmexec the parent's).
                // Only a backstop here, later than the parent's own bound, in case
                // the parent never started it.
                if r.phase == Phase::Connecting
                    && silent > self.cfg.connect_timeout + self.cfg.dead_after
                {
                    let msg = format!(
                        "no answer within {} s (--connect-timeout)",
                        self.cfg.connect_timeout.as_secs_f64()
                    );
                    self.launch_failed(i, EXIT_LAUNCHER_FAILURE, &msg);
                }
                continue;
            }
            match r.phase {
                Phase::Connecting | Phase::Starting if silent > self.cfg.connect_timeout => {
                    let msg = format!(
                        "no answer within {} s (--connect-timeout)",
                        self.cfg.connect_timeout.as_secs_f64()
                    );
                    self.launch_failed(i, EXIT_LAUNCHER_FAILURE, &msg);
                }
                Phase::Running if silent > self.cfg.dead_after => {
                    let msg = format!(
                        "no heartbeat for {:.1} s (link cut or host down)",
                        silent.as_secs_f64()
                    );
                    self.host_lost(i, &msg);
                }
                // From the spec on, the daemon holds dsmexec to the heartbeat bound.
                Phase::Starting | Phase::Running
                    if now.saturating_duration_since(r.last_tx) >= self.heartbeat() =>
                {
                    self.send(i, &Down::Heartbeat);
                }
                _ => {}
            }
        }
    }

    fn heartbeat(&self) -> Duration {
        (self.cfg.dead_after / 4).max(Duration::from_millis(10))
    }

    /// Sends `msg` to host `i`: on its own link, or wrapped for the daemons between.
    fn send(&mut self, i: usize, msg: &Down) {
        let top = self.top_of(i);
        let frame = if top == i {
            msg.encode()
        } else {
            Down::Relay {
                host: i as u32,
                frame: msg.body(),
            }
            .encode()
        };
        let r = &mut self.remotes[top];
        if let Some(p) = &mut r.proc {
            p.link.send(&frame);
            r.last_tx = Instant::now();
        }
    }

    /// The child of dsmexec whose subtree holds host `i` (the link it is reached by).
    fn top_of(&self, i: usize) -> usize {
        let mut cur = i;
        // Bounded: the tree has no cycles, but a bug must not hang the launcher.
        for _ in 0..self.remotes.len() {
            match self.remotes[cur].parent {
                Some(p) => cur = p,
                None => break,
            }
        }
        cur
    }

    /// Host `i` and every host below it in the launch tree, `i` first.
    fn subtree(&self, i: usize) -> Vec<usize> {
        let mut out = vec![i];
        let mut k = 0;
        while k < out.len() {
            out.extend(self.remotes[out[k]].children.iter().copied());
            k += 1;
        }
        out
    }

    /// A host could not start its ranks: one line, and the job ends.
    fn launch_failed(&mut self, i: usize, code: i32, why: &str) {
        if self.remotes[i].phase == Phase::Done {
            return;
        }
        // The hosts below it cannot be reached any more (or never will be).
        for j in self.subtree(i) {
            let r = &mut self.remotes[j];
            r.phase = Phase::Done;
            if let Some(p) = &mut r.proc {
                p.kill();
            }
        }
        let host = self.remotes[i].name.clone();
        if self.cause.is_none() {
            report(format_args!("cannot start ranks on {host}: {why}"));
            self.stop(ExitCause::LaunchFailed { host, code }, Signal::SIGTERM);
        }
    }

    /// A running host vanished, and with it every host below it in the launch tree:
    /// their ranks count as gone, the job ends. One line names them all.
    fn host_lost(&mut self, i: usize, why: &str) {
        if self.remotes[i].phase == Phase::Done {
            return;
        }
        let mut named = Vec::new();
        let mut any_live = false;
        for j in self.subtree(i) {
            let r = &mut self.remotes[j];
            if r.phase == Phase::Done && j != i {
                continue;
            }
            r.phase = Phase::Done;
            if let Some(p) = &mut r.proc {
                p.kill();
            }
            let live: Vec<String> = r
                .ranks
                .iter()
                .zip(&r.ended)
                .filter(|(_, &e)| !e)
                .map(|(rank, _)| rank.to_string())
                .collect();
            for &rank in &r.ranks {
                if let Some(slot) = self.reaped.get_mut(rank as usize) {
                    *slot = true;
                }
            }
            any_live |= !live.is_empty();
            // The host whose link died is always named; below it, those that still
            // had ranks.
            if j == i || !live.is_empty() {
                let ranks = if live.is_empty() {
                    String::new()
                } else {
                    format!(" (ranks {})", live.join(","))
                };
                named.push(format!("{}{ranks}", r.name));
            }
        }
        if self.cause.is_none() && any_live {
            let host = self.remotes[i].name.clone();
            let (first, below) = named
                .split_first()
                .map_or((String::new(), &[][..]), |(f, b)| (f.clone(), b));
            let below = if below.is_empty() {
                String::new()
            } else {
                format!(" and the hosts it launched, {}", below.join(", "))
            };
            report(format_args!("lost host {first}{below}: {why}"));
            self.stop(ExitCause::HostLost { host }, Signal::SIGTERM);
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
        // A reader that is behind: read no more output until it catches up.
        let backed_up = self.sinks.backlog() > MAX_BACKLOG;
        if let Some(agent) = self.agent.as_ref().filter(|_| !backed_up) {
            for (id, fd) in agent.open_pipes() {
                sources.push(Source::Pipe(id));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        for (i, r) in self.remotes.iter().enumerate() {
            let Some(p) = &r.proc else { continue };
            if r.phase == Phase::Done {
                continue;
            }
            if let Some(fd) = p.link.rx_fd().filter(|_| !backed_up) {
                sources.push(Source::Link(i));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            if let Some(fd) = p.link.tx_fd_if_pending() {
                sources.push(Source::LinkOut(i));
                fds.push(PollFd::new(fd, PollFlags::POLLOUT));
            }
            if let Some(fd) = p.stderr_fd() {
                sources.push(Source::AgentErr(i));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        let stdin = std::io::stdin();
        if let Some(i) = self.rank0_remote.filter(|_| self.stdin_open) {
            let r = &self.remotes[i];
            // Relay only once rank 0 runs, and not faster than the first link on the
            // way takes it.
            let backed_up = self.remotes[self.top_of(i)]
                .proc
                .as_ref()
                .is_none_or(|p| p.link.pending() > 1 << 20);
            if r.phase == Phase::Running && !backed_up {
                sources.push(Source::Stdin);
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
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
    /// loop does not spin just short of it. With remote hosts, at least every
    /// heartbeat interval, to send heartbeats and check theirs.
    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        let tick = if self.sinks.backlog() > MAX_BACKLOG {
            // Look again soon whether the reader caught up.
            Some(now + Duration::from_millis(20))
        } else {
            self.remotes
                .iter()
                .any(|r| r.phase != Phase::Done && r.phase != Phase::Queued)
                .then(|| now + self.heartbeat())
        };
        let next = [
            self.kill_at,
            self.timeout_at,
            self.drain_until,
            self.culprit_by,
            tick,
        ]
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
        if self.culprit_by.is_some_and(|t| now >= t) {
            self.culprit_by = None;
            // The vanished rank did not exit by itself: blame the first rank that
            // failed after it, and stop the job (the vanished one included).
            if let Some(first) = self.awaiting.take() {
                self.blame(&first, self.vanished);
            }
        }
        if self.kill_at.is_some_and(|t| now >= t) {
            self.kill_now();
        }
    }

    /// Sends `sig` to every live rank on every host, to its process group (`group`)
    /// or to the rank's process alone.
    fn signal_all(&mut self, sig: Signal, group: bool) {
        if let Some(agent) = &self.agent {
            if group {
                agent.signal_groups(sig);
            } else {
                agent.signal_processes(sig);
            }
        }
        for i in 0..self.remotes.len() {
            if self.remotes[i].phase == Phase::Running {
                self.send(
                    i,
                    &Down::Signal {
                        signo: sig as i32,
                        group,
                    },
                );
            }
        }
    }

    /// Makes `cause` the job's cause (unless there already is one) and sends `sig` to
    /// every live rank, with SIGKILL to follow after the grace period. Hosts not yet
    /// running are told to stop, or never started.
    fn stop(&mut self, cause: ExitCause, sig: Signal) {
        if self.cause.is_some() {
            return;
        }
        self.cause = Some(cause);
        self.signal_all(sig, true);
        self.queue.clear();
        for i in 0..self.remotes.len() {
            match self.remotes[i].phase {
                Phase::Queued => self.remotes[i].phase = Phase::Done,
                Phase::Connecting | Phase::Starting => {
                    self.send(i, &Down::Shutdown);
                    self.remotes[i].phase = Phase::Done;
                }
                _ => {}
            }
        }
        if !self.local_started {
            // The local ranks never started: nothing of them to wait for.
            self.local_started = true;
        }
        self.kill_at = Some(Instant::now() + self.cfg.grace);
    }

    fn kill_now(&mut self) {
        self.signal_all(Signal::SIGKILL, true);
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
                Signal::SIGUSR1 | Signal::SIGUSR2 => self.signal_all(sig, false),
                // Job control reaches whole ranks; dsmexec itself keeps running so
                // that heartbeats keep the remote hosts' daemons from giving up.
                Signal::SIGTSTP | Signal::SIGCONT => self.signal_all(sig, true),
                _ if self.cause.is_some() => {
                    // A second interrupt, or one while the job is already going down:
                    // the user does not want to wait for the grace period.
                    self.kill_now();
                }
                _ => self.stop(ExitCause::Signaled(sig as i32), sig),
            }
        }
        // SIGCHLDs coalesce, so look at every rank whatever the signal was.
        let reaped = self.agent.as_mut().map(Agent::reap).unwrap_or_default();
        for r in reaped {
            self.on_reaped(r);
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
                self.culprit_by = None;
                self.blame(&blamed, Some(r.rank).filter(|_| quiet));
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
        match self.vanished {
            Some(v) if v != r.rank && !self.reaped.get(v as usize).copied().unwrap_or(true) => {
                // This rank most likely failed because `v` vanished. `v` is on its way
                // out by itself (its links closed): signalling the job now would kill
                // it mid-exit (a panic still printing its backtrace) and its status
                // would say SIGTERM, not what happened. Wait for it a little, then
                // stop the job and name the culprit (`on_reaped`, `check_deadlines`).
                if self.awaiting.is_none() {
                    self.awaiting = Some(r);
                    self.culprit_by = Some(Instant::now() + CULPRIT_WAIT);
                }
            }
            _ => self.blame(&r, None),
        }
    }

    /// Names `r` as the rank whose failure ends the job (see `report_failure`) and
    /// stops the job with its status.
    fn blame(&mut self, r: &Reaped, vanished_first: Option<u32>) {
        self.report_failure(r, vanished_first);
        self.stop(
            ExitCause::RankFailed {
                rank: r.rank,
                exit: r.exit,
            },
            Signal::SIGTERM,
        );
    }

    /// The one line that says which rank failed, where and how.
    fn report_failure(&self, r: &Reaped, vanished_first: Option<u32>) {
        let host = self
            .host_of
            .get(r.rank as usize)
            .map_or("?", String::as_str);
        match vanished_first {
            None => report(format_args!(
                "rank {} (pid {}) on {host} {}",
                r.rank, r.pid, r.exit
            )),
            Some(v) => report(format_args!(
                "rank {} (pid {}) on {host} {} after rank {v} left the job without finalizing",
                r.rank, r.pid, r.exit
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
        let Some(agent) = &mut self.agent else { return };
        let data = agent.read_pipe(id, buf).map(|n| &buf[..n]);
        let failed = self.forward(id.rank, id.stream, data);
        if let Some(e) = failed {
            self.output_failed(id.stream, e);
        }
    }

    /// Forwards a rank's output (`None`: end of stream) to the terminal or its file.
    fn forward(&mut self, rank: u32, stream: Stream, data: Option<&[u8]>) -> Option<Errno> {
        let fwd = self.forwarders.get_mut(rank as usize)?;
        let k = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        if let Some(files) = &mut self.files {
            let sink = &mut files.get_mut(rank as usize)?[k];
            // A full disk is reported once per file by the sink closing; the job
            // goes on (the output is lost, the ranks are not stopped for it).
            match data {
                Some(d) => fwd[k].feed(d, sink),
                None => fwd[k].finish(sink),
            };
            return None;
        }
        match (stream, data) {
            (Stream::Stdout, Some(d)) => fwd[0].feed(d, &mut self.sinks.stdout),
            (Stream::Stdout, None) => fwd[0].finish(&mut self.sinks.stdout),
            (Stream::Stderr, Some(d)) => fwd[1].feed(d, &mut self.sinks.stderr),
            (Stream::Stderr, None) => fwd[1].finish(&mut self.sinks.stderr),
        }
    }

    /// One of dsmexec's own output streams failed.
    fn output_failed(&mut self, stream: Stream, e: Errno) {
        // Nothing can be forwarded any more: let the ranks find out on their next
        // write, as in a shell pipeline whose reader has gone (`dsmexec ... | head`).
        if let Some(agent) = &mut self.agent {
            agent.close_stream(stream);
        }
        self.output_closed = true;
        // EPIPE is that reader leaving, which needs no explanation.
        if e != Errno::EPIPE {
            let name = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            report(format_args!("cannot write to {name}: {e}"));
        }
    }

    /// Frames from remote host `i`.
    fn on_link(&mut self, i: usize) -> Result<(), LaunchError> {
        let Some(p) = &mut self.remotes[i].proc else {
            return Ok(());
        };
        let (frames, closed) = match p.link.read_frames() {
            ReadOutcome::Frames(f) => (f, false),
            ReadOutcome::Closed(f) => (f, true),
            ReadOutcome::Oversized => (Vec::new(), true),
        };
        let now = Instant::now();
        if !frames.is_empty() {
            self.remotes[i].last_rx = now;
        }
        for body in frames {
            let (h, msg) = match Up::decode(&body) {
                Ok(Up::Relay { host, frame }) => {
                    // From a host below `i`: anything else is a confused daemon.
                    let h = host as usize;
                    let below = h != i && h < self.remotes.len() && self.top_of(h) == i;
                    match Up::decode(&frame) {
                        Ok(Up::Relay { .. }) | Err(_) => (h, None),
                        Ok(msg) if below => (h, Some(msg)),
                        Ok(_) => (h, None),
                    }
                }
                Ok(msg) => (i, Some(msg)),
                Err(_) => (i, None),
            };
            let Some(msg) = msg else {
                self.host_lost(i, "protocol error: a malformed or misaddressed frame");
                return Ok(());
            };
            if self.remotes[h].phase == Phase::Done {
                // Lost, failed or stopped already: what it still says changes nothing.
                continue;
            }
            self.remotes[h].last_rx = now;
            self.on_up(h, msg)?;
            if self.remotes[i].phase == Phase::Done {
                return Ok(());
            }
        }
        if closed {
            self.link_closed(i);
        }
        Ok(())
    }

    /// The link to host `i` ended.
    fn link_closed(&mut self, i: usize) {
        let phase = self.remotes[i].phase;
        match phase {
            Phase::Connecting | Phase::Starting => {
                // The agent failed to connect or the daemon to start: ssh says why on
                // its stderr, which may still be arriving.
                let why = match &mut self.remotes[i].proc {
                    Some(p) => p.failure_reason(Duration::from_secs(2)),
                    None => "no launch agent".to_string(),
                };
                self.launch_failed(i, EXIT_LAUNCHER_FAILURE, &why);
            }
            Phase::Running => {
                let sub = self.subtree(i);
                let finished = sub.iter().all(|&j| {
                    let r = &self.remotes[j];
                    r.phase == Phase::Done || (r.all_ended() && r.open_streams == 0)
                });
                if finished {
                    for j in sub {
                        self.remotes[j].phase = Phase::Done;
                    }
                } else {
                    self.host_lost(
                        i,
                        "its bootstrap closed the link (killed, or its host went down)",
                    );
                }
            }
            Phase::Queued | Phase::Done => {}
        }
    }

    fn on_up(&mut self, i: usize, msg: Up) -> Result<(), LaunchError> {
        match msg {
            Up::Hello {
                version,
                launcher_ip,
                ..
            } => {
                if version != proto::VERSION {
                    let why = format!(
                        "its dsmwrap speaks protocol {version}, this dsmexec {}",
                        proto::VERSION
                    );
                    self.launch_failed(i, EXIT_LAUNCHER_FAILURE, &why);
                    return Ok(());
                }
                // Only a child of dsmexec saw dsmexec itself connect.
                let seen: Option<IpAddr> = launcher_ip
                    .parse()
                    .ok()
                    .filter(|_| self.remotes[i].parent.is_none());
                self.remotes[i].seen_ip = seen;
                if !self.local_started && self.cause.is_none() {
                    // The first host to answer tells which of our addresses the hosts'
                    // network knows: our local ranks listen there.
                    if let Err(e) = self.start_local(seen) {
                        let code = e.exit_code();
                        report(format_args!("{e}"));
                        self.stop(
                            ExitCause::LaunchFailed {
                                host: self
                                    .cfg
                                    .hosts
                                    .iter()
                                    .find(|h| h.local)
                                    .map_or_else(String::new, |h| h.name.clone()),
                                code,
                            },
                            Signal::SIGTERM,
                        );
                        return Ok(());
                    }
                }
                let spec = self.spec_for(i);
                self.send(i, &Down::Spec(Box::new(spec)));
                self.remotes[i].phase = Phase::Starting;
                // Its daemon starts its children on reading the spec.
                let now = Instant::now();
                for j in self.remotes[i].children.clone() {
                    let c = &mut self.remotes[j];
                    if c.phase == Phase::Queued {
                        c.phase = Phase::Connecting;
                        c.last_rx = now;
                    }
                }
            }
            Up::NeedProgram => self.ship_to(i),
            Up::Started { pids } => {
                let r = &mut self.remotes[i];
                r.phase = Phase::Running;
                for (rank, pid) in pids {
                    if let Some(k) = r.ranks.iter().position(|&x| x == rank) {
                        r.pids[k] = Some(pid);
                    }
                }
                if self.cause.is_some() {
                    // Started just as the job ended: stop them too.
                    self.send(i, &Down::Shutdown);
                }
            }
            Up::Output { rank, stream, data } => {
                let stream = if stream == 2 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                if let Some(e) = self.forward(rank, stream, Some(&data)) {
                    self.output_failed(stream, e);
                }
            }
            Up::OutputEnd { rank, stream } => {
                let stream = if stream == 2 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                let r = &mut self.remotes[i];
                r.open_streams = r.open_streams.saturating_sub(1);
                if let Some(e) = self.forward(rank, stream, None) {
                    self.output_failed(stream, e);
                }
            }
            Up::RankExit {
                rank,
                pid,
                kind,
                value,
            } => {
                let r = &mut self.remotes[i];
                if let Some(k) = r.ranks.iter().position(|&x| x == rank) {
                    r.ended[k] = true;
                }
                let exit = match kind {
                    0 => RankExit::Code(value),
                    1 => RankExit::Signal(value),
                    _ => RankExit::Vanished,
                };
                self.on_reaped(Reaped {
                    rank,
                    pid: Pid::from_raw(pid as i32),
                    exit,
                });
            }
            Up::Heartbeat => {}
            Up::Failed { code, msg } => self.launch_failed(i, code, &msg),
            Up::Lost { why } => self.host_lost(i, &why),
            Up::Diag { line } => {
                let name = &self.remotes[i].name;
                report(format_args!("{name}: {line}"));
            }
            // Unwrapped by `on_link`; a relay inside a relay is refused there.
            Up::Relay { .. } => {}
        }
        Ok(())
    }

    /// The job spec for remote host `i`.
    fn spec_for(&self, i: usize) -> JobSpec {
        let r = &self.remotes[i];
        let bytes = |s: &OsStr| s.as_bytes().to_vec();
        JobSpec {
            token_hex: self.token.to_hex(),
            pmi_port: self.pmi_port,
            // Below the first level, the address the first host on the way saw
            // dsmexec come from (the daemon cannot see it from its own link).
            pmi_ip: self.remotes[self.top_of(i)]
                .seen_ip
                .unwrap_or(self.fallback_ip)
                .to_string(),
            world_size: self.cfg.np,
            host: r.name.clone(),
            ranks: r.ranks.clone(),
            argv0: bytes(&self.cfg.argv0),
            // With --ship, the path dsmexec read; otherwise the name the user gave,
            // looked up on the remote PATH (what `ssh host prog` would do).
            program: if self.cfg.ship {
                bytes(self.cfg.program.as_os_str())
            } else {
                bytes(&self.cfg.argv0)
            },
            args: self.cfg.args.iter().map(|a| bytes(a)).collect(),
            env: self
                .cfg
                .env
                .iter()
                .map(|(k, v)| (bytes(k), bytes(v)))
                .collect(),
            wdir: self
                .cfg
                .wdir
                .as_ref()
                .map(|w| bytes(w.as_os_str()))
                .unwrap_or_default(),
            ship_hash: self
                .ship
                .as_ref()
                .map(|(_, hash)| hash.clone())
                .unwrap_or_default(),
            heartbeat_ms: u32::try_from(self.heartbeat().as_millis()).unwrap_or(u32::MAX),
            dead_after_ms: u32::try_from(self.cfg.dead_after.as_millis()).unwrap_or(u32::MAX),
            host_index: i as u32,
            via_daemon: r.parent.is_some(),
            subtree: self
                .subtree(i)
                .into_iter()
                .skip(1)
                .map(|j| TreeNode {
                    index: j as u32,
                    name: self.remotes[j].name.clone(),
                    parent: self.remotes[j].parent.map_or(u32::MAX, |p| p as u32),
                })
                .collect(),
            agent: self.cfg.agent.words.clone(),
            wrap: self.cfg.wrap.clone(),
            connect_timeout_ms: u32::try_from(self.cfg.connect_timeout.as_millis())
                .unwrap_or(u32::MAX),
            bind_cores: self.cfg.bind_cores,
        }
    }

    /// Sends the program to host `i`, which does not have it.
    fn ship_to(&mut self, i: usize) {
        let Some((bytes, _)) = &self.ship else { return };
        let chunks: Vec<Vec<u8>> = bytes
            .chunks(proto::SHIP_CHUNK)
            .map(<[u8]>::to_vec)
            .collect();
        for c in chunks {
            self.send(i, &Down::ProgramChunk(c));
        }
        self.send(i, &Down::ProgramEnd);
    }

    /// Lines the launch agent of host `i` printed (ssh warnings, dsmwrap errors).
    fn on_agent_stderr(&mut self, i: usize) {
        let r = &mut self.remotes[i];
        let Some(p) = &mut r.proc else { return };
        let lines = p.read_stderr();
        // Before the daemon answers, they are kept for the failure message instead.
        if matches!(r.phase, Phase::Running | Phase::Done) {
            for l in lines.iter().filter(|l| !l.trim().is_empty()) {
                report(format_args!("{}: {l}", r.name));
            }
        }
    }

    /// dsmexec's stdin became readable: relay it to rank 0's host.
    fn on_stdin(&mut self, buf: &mut [u8]) {
        let Some(i) = self.rank0_remote else { return };
        let n = loop {
            match nix::unistd::read(libc::STDIN_FILENO, buf) {
                Ok(n) => break n,
                Err(Errno::EINTR) => {}
                Err(_) => break 0,
            }
        };
        if n == 0 {
            self.stdin_open = false;
            self.send(i, &Down::StdinEof);
        } else {
            let data = buf[..n].to_vec();
            self.send(i, &Down::Stdin(data));
        }
    }

    /// Ends every remote host: tells its daemon to stop, gives the agent a moment to
    /// exit with it, then SIGKILLs the agent.
    ///
    /// Only dsmexec's children are told: each daemon passes the shutdown to its own
    /// children and waits for them (up to a second) before it ends, so the patience
    /// here grows with the tree's depth.
    fn shutdown_remotes(&mut self) {
        let mut depth = 0;
        for i in 0..self.remotes.len() {
            let mut d = 0;
            let mut cur = i;
            while let Some(p) = self.remotes[cur].parent {
                d += 1;
                cur = p;
                if d > self.remotes.len() {
                    break;
                }
            }
            depth = depth.max(d);
            if self.remotes[i].parent.is_none() {
                self.send(i, &Down::Shutdown);
            }
        }
        for r in &mut self.remotes {
            if let Some(p) = &mut r.proc {
                p.link.flush_blocking(Duration::from_millis(200));
            }
        }
        let patience = Duration::from_millis(500) + Duration::from_secs(1) * depth as u32;
        remote::finish_all(
            self.remotes.iter_mut().filter_map(|r| r.proc.as_mut()),
            patience,
        );
    }

    /// Forwards the unfinished last lines of pipes given up on.
    fn flush_partial_lines(&mut self) {
        if let Some(agent) = &mut self.agent {
            agent.close_pipes();
        }
        for rank in 0..self.forwarders.len() as u32 {
            self.forward(rank, Stream::Stdout, None);
            self.forward(rank, Stream::Stderr, None);
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
        let launch = |code| ExitCause::LaunchFailed {
            host: "h".into(),
            code,
        };
        assert_eq!(launch(127).exit_code(), 127);
        assert_eq!(launch(0).exit_code(), 1);
        assert_eq!(ExitCause::HostLost { host: "h".into() }.exit_code(), 1);
    }

    #[test]
    fn launch_tree_shapes() {
        // Up to the degree: flat.
        assert_eq!(launch_tree(3, 8), vec![None; 3]);
        assert_eq!(launch_tree(0, 2), Vec::<Option<usize>>::new());
        // 6 hosts, degree 2: dsmexec -> 0,1; 0 -> 2,3; 1 -> 4,5.
        assert_eq!(
            launch_tree(6, 2),
            [None, None, Some(0), Some(0), Some(1), Some(1)]
        );
        // Every launcher has at most `degree` children; depth is logarithmic.
        for (n, k) in [(100, 8), (1000, 8), (37, 3), (5, 1)] {
            let t = launch_tree(n, k);
            let mut count = vec![0; n + 1];
            for p in &t {
                count[p.map_or(n, |p| p)] += 1;
            }
            assert!(count.iter().all(|&c| c <= k), "{n} {k}");
            for (j, p) in t.iter().enumerate() {
                assert!(p.is_none_or(|p| p < j), "parents come first");
            }
        }
        let depth = |t: &[Option<usize>]| {
            (0..t.len())
                .map(|mut j| {
                    let mut d = 1;
                    while let Some(p) = t[j] {
                        j = p;
                        d += 1;
                    }
                    d
                })
                .max()
                .unwrap_or(0)
        };
        assert_eq!(depth(&launch_tree(72, 8)), 2);
        assert_eq!(depth(&launch_tree(73, 8)), 3);
    }

    #[test]
    fn local_host_names() {
        assert!(is_local("localhost", "box.example.org"));
        assert!(is_local("box", "box.example.org"));
        assert!(is_local("box.example.org", "box.example.org"));
        assert!(!is_local("node1", "box.example.org"));
        assert!(!is_local("", ""));
    }
}
