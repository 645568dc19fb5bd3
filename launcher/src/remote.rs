//! dsmexec's end of one remote host: the launch agent process (ssh or srun) running
//! that host's `dsmwrap --daemon`, the framed link over its stdin and stdout, and its
//! stderr, where ssh itself explains why a connection failed.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::LaunchError;
use crate::output::LineSplitter;
use crate::proto::{self, FramedLink};

/// The command that runs a command on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchAgent {
    /// The words before the host name, e.g. `["ssh", "-p", "2222"]`.
    pub words: Vec<String>,
}

impl LaunchAgent {
    /// Splits a command line the way a shell would for plain words and quotes
    /// (`ssh -i "my key"`); no variables or globbing.
    pub fn parse(cmd: &str) -> Result<LaunchAgent, LaunchError> {
        let words = split_words(cmd).ok_or_else(|| {
            LaunchError::Usage(format!("--launch-agent: unbalanced quotes in '{cmd}'"))
        })?;
        if words.is_empty() {
            return Err(LaunchError::Usage("--launch-agent is empty".into()));
        }
        Ok(LaunchAgent { words })
    }

    /// Whether this is Slurm's `srun`, which takes a program and arguments rather
    /// than a shell command string.
    pub fn is_srun(&self) -> bool {
        self.words
            .first()
            .is_some_and(|w| w.rsplit('/').next() == Some("srun"))
    }

    /// The full command that starts `wrap --daemon` on `host`.
    pub fn command(&self, host: &str, wrap: &str) -> Vec<OsString> {
        let mut argv: Vec<OsString> = self.words.iter().map(OsString::from).collect();
        if self.is_srun() {
            // One task on exactly that node, sharing the allocation's resources with
            // the job step dsmexec may itself run in.
            for a in [
                "--nodes=1",
                "--ntasks=1",
                "--overlap",
                "--kill-on-bad-exit=1",
            ] {
                argv.push(a.into());
            }
            argv.push(format!("--nodelist={host}").into());
            argv.push(wrap.into());
            argv.push("--daemon".into());
        } else {
            // ssh joins the rest into a string for the remote shell: quote it.
            argv.push(host.into());
            argv.push(format!("exec {} --daemon", shell_quote(wrap)).into());
        }
        argv
    }
}

/// `'word'`, with embedded single quotes escaped, for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Shell-like word splitting: whitespace separates, quotes group, `\` escapes.
fn split_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// The launch agent process for one host and the link through it.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    /// The framed link to the daemon.
    pub link: FramedLink,
    stderr: Option<ChildStderr>,
    splitter: LineSplitter,
    /// The last non-empty line the agent printed, for a launch error message.
    pub last_error: String,
    reaped: bool,
}

impl AgentProcess {
    /// Starts `argv` with piped stdin, stdout and stderr, in its own process group (a
    /// Ctrl-C at the terminal must reach dsmexec, which forwards it, not kill ssh and
    /// with it the link) and dying with dsmexec (`PR_SET_PDEATHSIG`).
    pub fn spawn(argv: &[OsString]) -> Result<AgentProcess, LaunchError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(LaunchError::Usage("--launch-agent is empty".into()));
        };
        let launcher = nix::unistd::getpid();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: as in `Agent::spawn`: runs in the forked child of a single-threaded
        // process and makes only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || crate::agent::prepare_child(launcher));
        }
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LaunchError::NotFound {
                program: program.to_string_lossy().into_owned(),
            },
            _ => LaunchError::os(format!("start {}", program.to_string_lossy()), e),
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LaunchError::os(
                "start the launch agent",
                io::Error::other("missing pipe"),
            ));
        };
        let link = FramedLink::new(OwnedFd::from(stdout), OwnedFd::from(stdin))
            .map_err(|e| LaunchError::os("set up the launch agent's pipes", e))?;
        proto::set_nonblocking(stderr.as_fd())
            .map_err(|e| LaunchError::os("set up the launch agent's pipes", e))?;
        Ok(AgentProcess {
            child,
            link,
            stderr: Some(stderr),
            splitter: LineSplitter::new(4096),
            last_error: String::new(),
            reaped: false,
        })
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr pipe while open.
    pub fn stderr_fd(&self) -> Option<BorrowedFd<'_>> {
        self.stderr.as_ref().map(|s| s.as_fd())
    }

    /// Reads the agent's stderr; returns complete lines. Keeps the last one.
    pub fn read_stderr(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let Some(err) = &mut self.stderr else {
            return lines;
        };
        let mut buf = [0u8; 4096];
        let mut eof = false;
        loop {
            match err.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.splitter.feed(&buf[..n], &mut |l| {
                    lines.push(String::from_utf8_lossy(l).into_owned())
                }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            self.splitter
                .finish(&mut |l| lines.push(String::from_utf8_lossy(l).into_owned()));
            self.stderr = None;
        }
        if let Some(last) = lines.iter().rev().find(|l| !l.trim().is_empty()) {
            self.last_error = last.trim().to_string();
        }
        lines
    }

    /// After the link closed early: waits (bounded) for the agent to exit and its
    /// stderr to end, so the error message has ssh's own explanation.
    pub fn collect_failure(&mut self, limit: Duration) -> Option<i32> {
        let until = Instant::now() + limit;
        let mut code = None;
        while Instant::now() < until {
            self.read_stderr();
            if !self.reaped {
                if let Ok(Some(st)) = self.child.try_wait() {
                    self.reaped = true;
                    code = st.code();
                }
            }
            if self.reaped && self.stderr.is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        code
    }

    /// After the link closed before the ranks started: ssh's own explanation if it
    /// gave one (waiting up to `limit` for it), else what is known of the agent's end.
    pub fn failure_reason(&mut self, limit: Duration) -> String {
        let code = self.collect_failure(limit);
        if self.last_error.is_empty() {
            format!(
                "the launch agent exited{} before the bootstrap answered",
                code.map(|c| format!(" with code {c}")).unwrap_or_default()
            )
        } else {
            self.last_error.clone()
        }
    }

    /// Whether the agent has exited (reaping it if so), without blocking.
    pub fn try_reap(&mut self) -> bool {
        if !self.reaped {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.reaped = true;
            }
        }
        self.reaped
    }

    /// Ends the agent: a polite wait of `patience`, then SIGKILL to its group.
    pub fn finish(&mut self, patience: Duration) {
        finish_all([self], patience);
    }
}

/// Ends several agents at once: closes every link (each daemon reads end of file,
/// or has already been told to shut down), waits up to `patience` for all of them
/// together, then SIGKILLs what is left. Together, so that a launch tree's shutdown
/// costs one patience per level, not one per host.
pub fn finish_all<'a>(procs: impl IntoIterator<Item = &'a mut AgentProcess>, patience: Duration) {
    let mut procs: Vec<&mut AgentProcess> = procs.into_iter().collect();
    for p in &mut procs {
        p.link.close_tx();
    }
    let until = Instant::now() + patience;
    while Instant::now() < until {
        let mut all = true;
        for p in &mut procs {
            all &= p.try_reap();
        }
        if all {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for p in procs {
        p.kill();
    }
}

impl AgentProcess {
    /// SIGKILLs the agent's process group and reaps it.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_words_and_commands() {
        let a = LaunchAgent::parse("ssh -p 2222 -i 'my key' -o \"A=b c\"").expect("parses");
        assert_eq!(
            a.words,
            ["ssh", "-p", "2222", "-i", "my key", "-o", "A=b c"]
        );
        assert!(LaunchAgent::parse("ssh 'open").is_err());
        assert!(LaunchAgent::parse("  ").is_err());
        let cmd = a.command("node1", "/opt/it's/dsmwrap");
        assert_eq!(cmd[cmd.len() - 2], "node1");
        assert_eq!(cmd[cmd.len() - 1], r"exec '/opt/it'\''s/dsmwrap' --daemon");
        let srun = LaunchAgent::parse("/usr/bin/srun").expect("parses");
        assert!(srun.is_srun());
        let cmd = srun.command("n3", "/x/dsmwrap");
        assert!(cmd.contains(&OsString::from("--nodelist=n3")));
        assert_eq!(cmd[cmd.len() - 1], "--daemon");
    }
}
