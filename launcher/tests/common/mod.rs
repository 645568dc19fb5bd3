//! The harness both launcher test files share: a running `dsmexec` whose output is
//! read on threads, a bounded wait for its exit, and a kill on drop (of dsmexec and
//! of any rank pids the test learned), so nothing outlives a failed assertion.

// Each test file uses its own part of the harness.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The `dsmexec` binary under test.
pub const DSMEXEC: &str = env!("CARGO_BIN_EXE_dsmexec");

/// A running `dsmexec`; it and `rank_pids` are killed on drop.
pub struct Running {
    pub child: Child,
    /// Rank pids the test learned, killed (with their process groups) on drop.
    pub rank_pids: Vec<i32>,
    stdout: Option<mpsc::Receiver<String>>,
    stderr: Option<thread::JoinHandle<String>>,
    /// The longest the test waits for a line or for the exit.
    limit: Duration,
}

/// A finished `dsmexec`.
pub struct Finished {
    pub status: ExitStatus,
    /// Stdout lines not taken with [`Running::line`].
    pub stdout: Vec<String>,
    pub stderr: String,
    /// How long [`Running::finish`] waited.
    pub waited: Duration,
}

impl Finished {
    /// The exit code, or -1 when dsmexec itself died by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// dsmexec's own lines on stderr.
    pub fn reports(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("dsmexec:"))
            .collect()
    }
}

impl Running {
    /// Starts `dsmexec ARGS` with `stdin`.
    pub fn start(limit: Duration, args: &[&str], stdin: Stdio) -> Running {
        Running::start_with_env(limit, args, stdin, &[])
    }

    /// Starts `dsmexec ARGS` with `stdin` and extra environment variables.
    pub fn start_with_env(
        limit: Duration,
        args: &[&str],
        stdin: Stdio,
        env: &[(&str, &str)],
    ) -> Running {
        let mut child = Command::new(DSMEXEC)
            .args(args)
            .envs(env.iter().copied())
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dsmexec");
        let out = child.stdout.take().expect("stdout pipe");
        let mut err = child.stderr.take().expect("stderr pipe");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Running {
            child,
            rank_pids: Vec::new(),
            stdout: Some(rx),
            stderr: Some(stderr),
            limit,
        }
    }

    /// Stops reading dsmexec's stdout, as a reader that goes away would.
    pub fn close_stdout(&mut self) {
        self.stdout = None;
    }

    /// dsmexec's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The next stdout line, within the limit.
    pub fn line(&self) -> String {
        self.stdout
            .as_ref()
            .expect("stdout still read")
            .recv_timeout(self.limit)
            .expect("a line from dsmexec within the limit")
    }

    /// Waits for dsmexec to exit; returns its status, all stdout lines not yet taken,
    /// stderr, and how long the wait took.
    pub fn finish(&mut self) -> Finished {
        let start = Instant::now();
        let limit = self.limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for dsmexec") {
                break status;
            }
            assert!(
                start.elapsed() < limit,
                "dsmexec did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        let waited = start.elapsed();
        let stdout = self
            .stdout
            .take()
            .map(|rx| rx.iter().collect())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().expect("stderr reader"))
            .unwrap_or_default();
        Finished {
            status,
            stdout,
            stderr,
            waited,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGKILL takes the ranks along (PR_SET_PDEATHSIG); the explicit kills cover
        // the case where that is what is being tested and broken.
        let _ = self.child.kill();
        for &pid in &self.rank_pids {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
