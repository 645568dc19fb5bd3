//! The ranks of one host: start them, hand out their output pipes, reap them, kill them.
//!
//! This is the per-host half of the launcher. Today `dsmexec` drives it directly for
//! the local host; with multi-host launch the same module runs inside `dsmwrap` on each
//! remote host and the job loop talks to it over the ssh link. It therefore knows
//! nothing about PMI, exit policy or where output ends up.
//!
//! Each rank is the leader of its own process group, so "kill the rank" means "kill
//! everything it started", and dies with the launcher (`PR_SET_PDEATHSIG`) even when
//! the launcher is SIGKILLed and cannot clean up.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};

use dsmpi_runtime::bootstrap::{
    ENV_BIND_ADDR, ENV_HOSTNAME, ENV_HOST_CPUS, ENV_LOCAL_RANK, ENV_LOCAL_SIZE, ENV_PMI_ADDR,
    ENV_RANK, ENV_SIZE, ENV_TOKEN,
};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::LaunchError;
use crate::output::Stream;

/// Finds the program the way `execvp(3)` would, so a missing program is reported once
/// by the launcher instead of N times by N failed ranks.
///
/// A name with a `/` is used as it is; otherwise each `PATH` entry is tried (an empty
/// entry means the current directory). The first executable regular file wins; if
/// only non-executable candidates exist, the first of them is reported.
pub fn resolve_program(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, LaunchError> {
    let shown = program.to_string_lossy().into_owned();
    if program.is_empty() {
        return Err(LaunchError::NotFound { program: shown });
    }
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return match check_executable(&path) {
            Candidate::Runnable => Ok(path),
            Candidate::Missing => Err(LaunchError::NotFound { program: shown }),
            Candidate::NotRunnable(reason) => Err(LaunchError::NotExecutable { path, reason }),
        };
    }
    let default_path = OsStr::new("/usr/local/bin:/usr/bin:/bin");
    let mut first_refusal = None;
    for dir in path_var
        .unwrap_or(default_path)
        .as_bytes()
        .split(|&b| b == b':')
    {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let path = dir.join(program);
        match check_executable(&path) {
            Candidate::Runnable => return Ok(path),
            Candidate::Missing => {}
            Candidate::NotRunnable(reason) => {
                first_refusal.get_or_insert(LaunchError::NotExecutable { path, reason });
            }
        }
    }
    Err(first_refusal.unwrap_or(LaunchError::NotFound { program: shown }))
}

enum Candidate {
    Runnable,
    Missing,
    NotRunnable(String),
}

fn check_executable(path: &Path) -> Candidate {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Candidate::Missing,
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Candidate::Missing,
        Err(e) => return Candidate::NotRunnable(e.to_string()),
    };
    if meta.is_dir() {
        return Candidate::NotRunnable("is a directory".into());
    }
    // access(2) rather than the mode bits: it accounts for root, ACLs and noexec
    // mounts the way exec will.
    match nix::unistd::access(path, nix::unistd::AccessFlags::X_OK) {
        Ok(()) => Candidate::Runnable,
        Err(Errno::EACCES) => Candidate::NotRunnable("permission denied".into()),
        Err(e) => Candidate::NotRunnable(e.desc().into()),
    }
}

/// Everything a rank needs to know that is the same for all ranks of the job.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The program as the user named it; becomes the ranks' `argv[0]`.
    pub argv0: OsString,
    /// The resolved program path (see [`resolve_program`]).
    pub program: PathBuf,
    /// The program's arguments.
    pub args: Vec<OsString>,
    /// Number of ranks in the whole job.
    pub world_size: u32,
    /// `ip:port` of the launcher's PMI service.
    pub pmi_addr: String,
    /// The job token as hex.
    pub token_hex: String,
    /// This host's name, as ranks will see it in `DSMPI_HOSTNAME`.
    pub host: String,
    /// Extra environment for every rank (`-x`), set after the inherited one.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory of the ranks (`--wdir`); `None` keeps the launcher's.
    pub wdir: Option<PathBuf>,
    /// `DSMPI_BIND_ADDR` for the ranks, when the PMI address's IP is not one the
    /// other hosts can reach this host at.
    pub bind_addr: Option<String>,
    /// Where world rank 0's stdin comes from, if it runs here.
    pub rank0_stdin: StdinMode,
    /// `--bind-to core`: pin the host's Nth rank to the Nth CPU this process may use.
    pub bind_cores: bool,
}

/// Where world rank 0 reads its input from (every other rank reads `/dev/null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdinMode {
    /// The launcher's own stdin (single host: no copy in between).
    Inherit,
    /// A pipe the launcher writes to ([`Agent::take_stdin`]): relayed input.
    Pipe,
    /// `/dev/null`.
    Null,
}

/// How a rank ended, as `waitpid(2)` reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankExit {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
    /// It was reaped by someone else, so its status is unknown.
    Vanished,
}

impl RankExit {
    /// Whether this counts as a clean end.
    pub fn is_success(self) -> bool {
        self == RankExit::Code(0)
    }

    /// The exit code a shell would report for it: the code itself, `128 + signal`,
    /// or 1 when unknown.
    pub fn shell_code(self) -> i32 {
        match self {
            RankExit::Code(c) => c,
            RankExit::Signal(s) => 128 + s,
            RankExit::Vanished => 1,
        }
    }
}

impl fmt::Display for RankExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankExit::Code(c) => write!(f, "exited with code {c}"),
            RankExit::Signal(s) => write!(f, "was killed by signal {} ({s})", signal_name(*s)),
            RankExit::Vanished => f.write_str("vanished (its exit status was lost)"),
        }
    }
}

/// `SIGSEGV` for 11, `SIGRTMIN+2` for a real-time signal, `signal 99` otherwise.
pub fn signal_name(signo: i32) -> String {
    if let Ok(sig) = Signal::try_from(signo) {
        return sig.as_str().to_string();
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&signo) {
        return format!("SIGRTMIN+{}", signo - min);
    }
    format!("signal {signo}")
}

/// A rank that [`Agent::reap`] found dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaped {
    /// World rank.
    pub rank: u32,
    /// Its process id (also its process group id).
    pub pid: Pid,
    /// How it ended.
    pub exit: RankExit,
}

/// One started rank.
#[derive(Debug)]
struct LocalRank {
    rank: u32,
    pid: Pid,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    exit: Option<RankExit>,
}

/// Identifies one output pipe of one rank of an [`Agent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PipeId {
    /// World rank.
    pub rank: u32,
    /// Which stream.
    pub stream: Stream,
    index: usize,
}

/// The ranks started on this host.
///
/// Dropping it SIGKILLs every rank's process group, so no early return or panic in the
/// launcher leaves a rank behind.
#[derive(Debug)]
pub struct Agent {
    host: String,
    ranks: Vec<LocalRank>,
    swept: bool,
    /// Rank 0's stdin pipe with [`StdinMode::Pipe`], until taken.
    stdin: Option<ChildStdin>,
}

impl Agent {
    /// Starts `ranks` (world ranks, in local-rank order) of `spec`.
    ///
    /// Each rank gets the inherited environment plus the `DSMPI_*` variables, its own
    /// process group, piped stdout and stderr, and stdin from the launcher for world
    /// rank 0 only (the others read `/dev/null`, so they cannot steal rank 0's input).
    /// If any rank fails to start, the ones already started are killed.
    ///
    /// Known limit with [`StdinMode::Inherit`]: rank 0 is not in the terminal's
    /// foreground process group, so if stdin is a terminal, reading it stops rank 0
    /// with SIGTTIN. [`StdinMode::Pipe`] (used when rank 0 is on another host) does
    /// not have that limit.
    pub fn spawn(spec: &LaunchSpec, ranks: &[u32]) -> Result<Agent, LaunchError> {
        let mut agent = Agent {
            host: spec.host.clone(),
            ranks: Vec::with_capacity(ranks.len()),
            swept: false,
            stdin: None,
        };
        let local_size = ranks.len().to_string();
        let world_size = spec.world_size.to_string();
        let launcher = nix::unistd::getpid();
        let cpus = if spec.bind_cores {
            allowed_cpus().map_err(|e| LaunchError::os("list the CPUs to bind ranks to", e))?
        } else {
            Vec::new()
        };
        for (local_rank, &rank) in ranks.iter().enumerate() {
            let mut cmd = Command::new(&spec.program);
            cmd.arg0(&spec.argv0)
                .args(&spec.args)
                .env(ENV_RANK, rank.to_string())
                .env(ENV_SIZE, &world_size)
                .env(ENV_LOCAL_RANK, local_rank.to_string())
                .env(ENV_LOCAL_SIZE, &local_size)
                .env(ENV_PMI_ADDR, &spec.pmi_addr)
                .env(ENV_TOKEN, &spec.token_hex)
                .env(ENV_HOSTNAME, &spec.host)
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(match (rank, spec.rank0_stdin) {
                    (0, StdinMode::Inherit) => Stdio::inherit(),
                    (0, StdinMode::Pipe) => Stdio::piped(),
                    _ => Stdio::null(),
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // setpgid(0, 0) in the child, before exec: a signal to the group
                // reaches everything the rank starts.
                .process_group(0);
            if let Some(bind) = &spec.bind_addr {
                cmd.env(ENV_BIND_ADDR, bind);
            }
            if let Some(dir) = &spec.wdir {
                cmd.current_dir(dir);
            }
            // The set is made here: the child may not allocate between fork and exec.
            let pin = (!cpus.is_empty()).then(|| {
                // The runtime sizes its waiting to the host, which the rank's own
                // affinity (one CPU) no longer tells.
                cmd.env(ENV_HOST_CPUS, cpus.len().to_string());
                cpu_set_of(cpus[local_rank % cpus.len()])
            });
            // SAFETY: the closure runs in the forked child of this single-threaded
            // launcher and only makes async-signal-safe system calls; it allocates
            // nothing and touches no lock.
            unsafe {
                cmd.pre_exec(move || {
                    prepare_child(launcher)?;
                    match &pin {
                        Some(set) => pin_to(set),
                        None => Ok(()),
                    }
                });
            }
            // `spawn` returns only once the child has exec'ed (or failed to), so the
            // process group exists before anyone can signal it.
            let mut child = cmd.spawn().map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => LaunchError::NotFound {
                    program: spec.argv0.to_string_lossy().into_owned(),
                },
                io::ErrorKind::PermissionDenied => LaunchError::NotExecutable {
                    path: spec.program.clone(),
                    reason: e.to_string(),
                },
                _ => LaunchError::os(format!("start rank {rank}"), e),
            })?;
            if let Some(stdin) = child.stdin.take() {
                agent.stdin = Some(stdin);
            }
            let pid = Pid::from_raw(child.id() as libc::pid_t);
            agent.ranks.push(LocalRank {
                rank,
                pid,
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
                exit: None,
            });
            // `child` is dropped without waiting; `reap` waits by pid.
        }
        Ok(agent)
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Rank 0's stdin pipe, once, if it runs here with [`StdinMode::Pipe`].
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// `(world rank, pid)` of every rank, in local-rank order.
    pub fn pids(&self) -> Vec<(u32, Pid)> {
        self.ranks.iter().map(|r| (r.rank, r.pid)).collect()
    }

    /// The pid of `rank`, if it runs here.
    pub fn pid_of(&self, rank: u32) -> Option<Pid> {
        self.ranks.iter().find(|r| r.rank == rank).map(|r| r.pid)
    }

    /// Collects every rank that has ended since the last call, without blocking.
    pub fn reap(&mut self) -> Vec<Reaped> {
        let mut out = Vec::new();
        for r in self.ranks.iter_mut().filter(|r| r.exit.is_none()) {
            if let Some(exit) = try_wait(r.pid) {
                r.exit = Some(exit);
                out.push(Reaped {
                    rank: r.rank,
                    pid: r.pid,
                    exit,
                });
            }
        }
        out
    }

    /// Whether every rank has been reaped.
    pub fn all_reaped(&self) -> bool {
        self.ranks.iter().all(|r| r.exit.is_some())
    }

    /// Sends `sig` to the process group of every rank not yet reaped: everything the
    /// rank started, which is what stopping or interrupting a rank must reach.
    ///
    /// Reaped ranks are skipped: their group id may be free for reuse by now.
    pub fn signal_groups(&self, sig: Signal) {
        for r in self.ranks.iter().filter(|r| r.exit.is_none()) {
            // ESRCH only means the group is already gone.
            let _ = killpg(r.pid, sig);
        }
    }

    /// Sends `sig` to the process of every rank not yet reaped, and not to its
    /// children: for signals that are messages to the program (SIGUSR1, SIGUSR2),
    /// which would kill helpers such as a script's `sleep` that never asked for them.
    pub fn signal_processes(&self, sig: Signal) {
        for r in self.ranks.iter().filter(|r| r.exit.is_none()) {
            let _ = nix::sys::signal::kill(r.pid, sig);
        }
    }

    /// SIGKILLs every rank's process group, reaped or not, to take down anything a
    /// rank left behind. Done once, at the end of the job.
    pub fn sweep(&mut self) {
        if self.swept {
            return;
        }
        self.swept = true;
        for r in &self.ranks {
            let _ = killpg(r.pid, Signal::SIGKILL);
        }
    }

    /// The output pipes still open, for `poll(2)`.
    pub fn open_pipes(&self) -> Vec<(PipeId, BorrowedFd<'_>)> {
        let mut out = Vec::new();
        for (index, r) in self.ranks.iter().enumerate() {
            if let Some(p) = &r.stdout {
                let id = PipeId {
                    rank: r.rank,
                    stream: Stream::Stdout,
                    index,
                };
                out.push((id, p.as_fd()));
            }
            if let Some(p) = &r.stderr {
                let id = PipeId {
                    rank: r.rank,
                    stream: Stream::Stderr,
                    index,
                };
                out.push((id, p.as_fd()));
            }
        }
        out
    }

    /// Whether any output pipe is still open.
    pub fn has_open_pipes(&self) -> bool {
        self.ranks
            .iter()
            .any(|r| r.stdout.is_some() || r.stderr.is_some())
    }

    /// Reads what is available on a pipe `poll(2)` reported ready.
    ///
    /// `None` means end of file (or a read error, which ends the stream the same way);
    /// the pipe is then closed.
    pub fn read_pipe(&mut self, id: PipeId, buf: &mut [u8]) -> Option<usize> {
        let r = self.ranks.get_mut(id.index)?;
        let result = match id.stream {
            Stream::Stdout => read_once(r.stdout.as_mut()?, buf),
            Stream::Stderr => read_once(r.stderr.as_mut()?, buf),
        };
        match result {
            Some(n) => Some(n),
            None => {
                match id.stream {
                    Stream::Stdout => r.stdout = None,
                    Stream::Stderr => r.stderr = None,
                }
                None
            }
        }
    }

    /// Closes `stream`'s pipe of every rank, so their next write to it fails with
    /// EPIPE (or SIGPIPE) the way it would in a shell pipeline whose reader left.
    pub fn close_stream(&mut self, stream: Stream) {
        for r in &mut self.ranks {
            match stream {
                Stream::Stdout => r.stdout = None,
                Stream::Stderr => r.stderr = None,
            }
        }
    }

    /// Closes every output pipe, giving up on output a straggler still holds open.
    pub fn close_pipes(&mut self) {
        for r in &mut self.ranks {
            r.stdout = None;
            r.stderr = None;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// One `read(2)`; `None` for end of file or an error.
fn read_once(pipe: &mut impl Read, buf: &mut [u8]) -> Option<usize> {
    loop {
        match pipe.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// `waitpid(pid, WNOHANG)`: `None` while the process runs.
///
/// libc rather than nix: nix cannot represent a death by a real-time signal and would
/// lose a status the kernel has already handed over.
fn try_wait(pid: Pid) -> Option<RankExit> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) };
        if r == 0 {
            return None;
        }
        if r < 0 {
            return match Errno::last() {
                Errno::EINTR => continue,
                _ => Some(RankExit::Vanished),
            };
        }
        if libc::WIFEXITED(status) {
            return Some(RankExit::Code(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Some(RankExit::Signal(libc::WTERMSIG(status)));
        }
        // Stopped or continued: not reported without WUNTRACED/WCONTINUED; keep waiting.
        return None;
    }
}

/// The CPUs this process may run on (its affinity mask), in increasing order: what
/// `--bind-to core` hands out, so that a launcher confined to some CPUs (a cgroup,
/// `taskset`, a batch system) binds its ranks inside them.
fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at
    // most its size into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, the set's capacity.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(io::Error::other("the affinity mask is empty"));
    }
    Ok(cpus)
}

/// The set holding just `cpu`.
fn cpu_set_of(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and `cpu` comes from
    // `allowed_cpus`, so it is below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// In the forked child: runs only on the CPUs of `set`. Async-signal-safe (one
/// system call, no allocation).
fn pin_to(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs in the forked child before exec (see the SAFETY note in [`Agent::spawn`]).
///
/// Makes the rank die with the launcher and gives it the signal state of a fresh
/// process. Dispositions the launcher inherited as "ignored" (e.g. SIGHUP under
/// `nohup`) are deliberately kept, as any shell would; only what the launcher itself
/// changed is undone.
pub(crate) fn prepare_child(launcher: Pid) -> io::Result<()> {
    // SAFETY: prctl, getppid, signal and sigprocmask are async-signal-safe; the sigset
    // lives on this stack frame.
    unsafe {
        // The death signal is tied to the thread that forked; the launcher forks from
        // its only thread, so this means "when the launcher dies".
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        // If the launcher died before the prctl, the death signal will never come.
        if libc::getppid() != launcher.as_raw() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // Rust ignores SIGPIPE; SIGCHLD is set to default by the launcher anyway.
        for sig in [libc::SIGPIPE, libc::SIGCHLD] {
            libc::signal(sig, libc::SIG_DFL);
        }
        // The launcher blocks the signals it reads through signalfd.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
        assert_eq!(signal_name(999), "signal 999");
    }

    #[test]
    fn exit_descriptions_and_codes() {
        assert_eq!(RankExit::Code(7).to_string(), "exited with code 7");
        assert_eq!(
            RankExit::Signal(11).to_string(),
            "was killed by signal SIGSEGV (11)"
        );
        assert_eq!(RankExit::Code(7).shell_code(), 7);
        assert_eq!(RankExit::Signal(11).shell_code(), 139);
        assert!(RankExit::Code(0).is_success());
        assert!(!RankExit::Signal(15).is_success());
        assert!(!RankExit::Vanished.is_success());
    }

    #[test]
    fn resolves_like_execvp() {
        let path = OsStr::new("/nonexistent-dir:/bin:/usr/bin");
        let sh = resolve_program(OsStr::new("sh"), Some(path)).expect("sh on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"));
        assert!(matches!(
            resolve_program(OsStr::new("no-such-program-dsmpi"), Some(path)),
            Err(LaunchError::NotFound { .. })
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/no/such/file"), Some(path)),
            Err(LaunchError::NotFound { .. })
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/"), Some(path)),
            Err(LaunchError::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve_program(OsStr::new(""), Some(path)),
            Err(LaunchError::NotFound { .. })
        ));
    }

    #[test]
    fn non_executable_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("dsmpi-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("data.txt");
        std::fs::write(&file, "not a program").expect("write temp file");
        let result = resolve_program(file.as_os_str(), None);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(result, Err(LaunchError::NotExecutable { .. })));
    }
}
