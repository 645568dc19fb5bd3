//! End-to-end tests of the real `dsmexec` binary on plain programs (`sh`, `true`,
//! `hostname`).
//!
//! Timing bounds are deliberately loose (this must pass on a loaded 2-core machine);
//! every spawned process is killed by a guard even when an assertion fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use dsmpi_runtime::bootstrap::{self, JobToken, PmiMsg};
use nix::sys::signal::{kill, Signal};

mod common;
use common::{Finished, Running};

const DSMWRAP: &str = env!("CARGO_BIN_EXE_dsmwrap");

/// Longest any single test job may take before the test fails (and kills it).
const LIMIT: Duration = Duration::from_secs(60);

/// A scratch directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "dsmexec-test-{name}-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Finished {
    Running::start(LIMIT, args, Stdio::null()).finish()
}

/// State and process group of `pid` from `/proc`, if it exists.
fn stat(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": the command name may contain anything.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.to_string();
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether `pid` is a live process. A zombie counts as gone: the test container's
/// init may never reap orphans.
fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != "Z" && state != "X")
}

/// Live processes in process group `pgid`.
fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(s, g)| g == pgid && s != "Z" && s != "X"))
        .collect()
}

/// Waits (loosely) until none of `pids` is alive and no process is left in the
/// groups they lead; panics naming the survivors.
fn assert_all_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut alive: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        alive.extend(pids.iter().flat_map(|&p| live_members(p)));
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes still alive: {alive:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_lines(f: &Finished) -> Vec<&str> {
    f.stderr.lines().collect()
}

#[test]
fn each_rank_gets_its_identity() {
    let f = run(&["-n", "3", "sh", "-c", "echo $DSMPI_RANK of $DSMPI_SIZE"]);
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    let mut lines = f.stdout.clone();
    lines.sort();
    assert_eq!(lines, ["0 of 3", "1 of 3", "2 of 3"]);
    assert_eq!(f.stderr, "");

    let f = run(&[
        "--tag-output",
        "-n",
        "3",
        "sh",
        "-c",
        "echo $DSMPI_RANK of $DSMPI_SIZE",
    ]);
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    let mut lines = f.stdout.clone();
    lines.sort();
    assert_eq!(lines, ["[0] 0 of 3", "[1] 1 of 3", "[2] 2 of 3"]);
}

#[test]
fn bootstrap_environment_is_complete() {
    let script = "echo $DSMPI_RANK $DSMPI_LOCAL_RANK $DSMPI_LOCAL_SIZE \
                  $DSMPI_PMI_ADDR $DSMPI_JOB_TOKEN $DSMPI_HOSTNAME";
    let f = run(&["--np", "2", "sh", "-c", script]);
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    let host = nix::unistd::gethostname().expect("hostname");
    let mut tokens = Vec::new();
    for line in &f.stdout {
        let v: Vec<&str> = line.split(' ').collect();
        assert_eq!(v.len(), 6, "{line}");
        assert_eq!(v[0], v[1], "local rank is the rank on one host");
        assert_eq!(v[2], "2");
        assert!(v[3].starts_with("127.0.0.1:"), "{line}");
        assert_eq!(v[4].len(), 32);
        assert!(v[4].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(v[5], host.to_string_lossy());
        tokens.push(v[4].to_string());
    }
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0], tokens[1], "one token per job");
}

#[test]
fn plain_programs_run() {
    let f = run(&["-n", "2", "hostname"]);
    assert_eq!(f.code(), 0);
    assert_eq!(f.stdout.len(), 2);
    let f = run(&["true"]);
    assert_eq!(f.code(), 0);
    assert!(f.stdout.is_empty() && f.stderr.is_empty());
}

#[test]
fn partial_last_line_gets_its_newline() {
    let f = run(&["-n", "2", "sh", "-c", "printf abc"]);
    assert_eq!(f.code(), 0);
    assert_eq!(f.stdout, ["abc", "abc"]);
}

#[test]
fn lines_of_different_ranks_never_mix() {
    // 4 ranks x 2000 lines of ~1000 bytes: more than a pipe holds and than one read
    // takes, so lines reach dsmexec cut at arbitrary points.
    let script = r#"
        pad=$(printf '%01000d' 0 | tr 0 "$DSMPI_RANK")
        i=0
        while [ $i -lt 2000 ]; do
            echo "$DSMPI_RANK:$i:$pad"
            i=$((i+1))
        done"#;
    let f = run(&["-n", "4", "sh", "-c", script]);
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    let mut next: BTreeMap<u32, u32> = BTreeMap::new();
    for line in &f.stdout {
        let mut parts = line.splitn(3, ':');
        let (Some(rank), Some(i), Some(pad)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("mangled line: {line:.80}");
        };
        let rank: u32 = rank
            .parse()
            .unwrap_or_else(|_| panic!("bad rank: {line:.80}"));
        let i: u32 = i
            .parse()
            .unwrap_or_else(|_| panic!("bad index: {line:.80}"));
        let digit = char::from_digit(rank, 10).expect("rank is a digit");
        assert!(
            pad.len() == 1000 && pad.chars().all(|c| c == digit),
            "mixed line: {line:.80}"
        );
        // Each rank's lines arrive complete and in order.
        let expected = next.entry(rank).or_insert(0);
        assert_eq!(i, *expected, "rank {rank} out of order");
        *expected += 1;
    }
    assert_eq!(next.len(), 4);
    assert!(next.values().all(|&n| n == 2000), "{next:?}");
}

#[test]
fn a_failing_rank_ends_the_job_with_its_code() {
    // Each rank leaves a background `sleep` in its process group (holding the output
    // pipe open) and prints its pid and that sleep's. Rank 1 fails once the test has
    // seen every rank's pids (the go file), so no rank is stopped before it prints.
    let script = r#"
        sleep 30 &
        echo "$$ $!"
        if [ "$DSMPI_RANK" = 1 ]; then
            while [ ! -e "$GO_FILE" ]; do sleep 0.01; done
            exit 7
        fi
        wait"#;
    let go = TempDir::new("go");
    let go_file = go.0.join("go");
    let mut r = Running::start_with_env(
        LIMIT,
        &["-n", "3", "sh", "-c", script],
        Stdio::null(),
        &[("GO_FILE", &go_file.to_string_lossy())],
    );
    let mut rank_pids = Vec::new();
    let mut all_pids = Vec::new();
    for _ in 0..3 {
        let line = r.line();
        let pids: Vec<i32> = line.split(' ').map(|p| p.parse().expect("pid")).collect();
        rank_pids.push(pids[0]);
        all_pids.extend(pids);
    }
    r.rank_pids = rank_pids.clone();
    std::fs::write(&go_file, "").expect("create the go file");
    let f = r.finish();
    assert_eq!(f.code(), 7, "stderr: {}", f.stderr);
    assert!(f.waited < Duration::from_secs(20), "took {:?}", f.waited);
    let lines = stderr_lines(&f);
    assert_eq!(lines.len(), 1, "exactly one line: {:?}", f.stderr);
    assert!(
        lines[0].starts_with("dsmexec: rank 1 (pid "),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with("exited with code 7"), "{}", lines[0]);
    let named_pid: i32 = lines[0]["dsmexec: rank 1 (pid ".len()..]
        .split(')')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid in message");
    assert!(
        rank_pids.contains(&named_pid),
        "{named_pid} not in {rank_pids:?}"
    );
    assert_all_gone(&all_pids);
}

#[test]
fn a_rank_killed_by_a_signal_is_reported_by_name() {
    let script = r#"if [ "$DSMPI_RANK" = 0 ]; then kill -SEGV $$; fi; exec sleep 30"#;
    let f = run(&["-n", "2", "sh", "-c", script]);
    assert_eq!(f.code(), 139, "stderr: {}", f.stderr);
    let lines = stderr_lines(&f);
    assert_eq!(lines.len(), 1, "{:?}", f.stderr);
    assert!(
        lines[0].contains("rank 0") && lines[0].contains("killed by signal SIGSEGV (11)"),
        "{}",
        lines[0]
    );
}

#[test]
fn sigterm_to_dsmexec_stops_every_rank() {
    let mut r = Running::start(
        LIMIT,
        &["-n", "3", "sh", "-c", "echo $$; exec sleep 30"],
        Stdio::null(),
    );
    let pids: Vec<i32> = (0..3).map(|_| r.line().parse().expect("pid")).collect();
    r.rank_pids = pids.clone();
    kill(r.pid(), Signal::SIGTERM).expect("signal dsmexec");
    let f = r.finish();
    assert_eq!(f.code(), 143, "stderr: {}", f.stderr);
    assert_all_gone(&pids);
}

#[test]
fn a_second_sigint_does_not_wait_for_the_grace_period() {
    // Ranks ignore SIGINT, so only the SIGKILL ends them; with a 60 s grace period the
    // job can only end in time if the second SIGINT kills at once.
    let mut r = Running::start(
        LIMIT,
        &[
            "--grace-ms",
            "60000",
            "-n",
            "2",
            "sh",
            "-c",
            "trap '' INT; echo $$; exec sleep 30",
        ],
        Stdio::null(),
    );
    let pids: Vec<i32> = (0..2).map(|_| r.line().parse().expect("pid")).collect();
    r.rank_pids = pids.clone();
    kill(r.pid(), Signal::SIGINT).expect("signal dsmexec");
    thread::sleep(Duration::from_millis(200));
    kill(r.pid(), Signal::SIGINT).expect("signal dsmexec");
    let f = r.finish();
    assert_eq!(f.code(), 130, "stderr: {}", f.stderr);
    assert!(f.waited < Duration::from_secs(20), "took {:?}", f.waited);
    assert_all_gone(&pids);
}

#[test]
fn timeout_kills_the_job() {
    let f = run(&["--timeout", "1", "-n", "2", "sleep", "30"]);
    assert_eq!(f.code(), 124, "stderr: {}", f.stderr);
    assert!(f.waited < Duration::from_secs(20), "took {:?}", f.waited);
    assert_eq!(
        stderr_lines(&f),
        ["dsmexec: job exceeded --timeout of 1 s, killed"]
    );
}

#[test]
fn bad_command_lines_fail_in_one_line() {
    let cases: [(&[&str], i32, &str); 6] = [
        (&["-n", "0", "true"], 2, "at least 1"),
        (&["-n", "2"], 2, "PROGRAM"),
        (&[], 2, "PROGRAM"),
        (&["--no-such-option", "true"], 2, "--no-such-option"),
        (&["dsmpi-no-such-program"], 127, "dsmpi-no-such-program"),
        (&["/etc/passwd"], 126, "/etc/passwd"),
    ];
    for (args, code, needle) in cases {
        let f = run(args);
        assert_eq!(f.code(), code, "{args:?}: {}", f.stderr);
        let lines = stderr_lines(&f);
        assert_eq!(lines.len(), 1, "{args:?}: {:?}", f.stderr);
        assert!(lines[0].starts_with("dsmexec: "), "{args:?}: {}", lines[0]);
        assert!(lines[0].contains(needle), "{args:?}: {}", lines[0]);
        assert!(f.stdout.is_empty());
    }
}

#[test]
fn only_rank_0_reads_stdin() {
    let mut r = Running::start(
        LIMIT,
        &["-n", "2", "sh", "-c", r#"read x; echo "$DSMPI_RANK:$x""#],
        Stdio::piped(),
    );
    let mut stdin = r.child.stdin.take().expect("stdin pipe");
    stdin.write_all(b"hello\n").expect("write stdin");
    drop(stdin);
    let f = r.finish();
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    let mut lines = f.stdout.clone();
    lines.sort();
    assert_eq!(lines, ["0:hello", "1:"]);
}

#[test]
fn a_closed_stdout_ends_writers_quietly() {
    let mut r = Running::start(LIMIT, &["-n", "2", "yes"], Stdio::null());
    assert_eq!(r.line(), "y");
    // The reader goes away, like `dsmexec -n 2 yes | head -1`.
    r.close_stdout();
    let f = r.finish();
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    assert_eq!(f.stderr, "");
}

#[test]
fn dsmwrap_checks_the_environment_then_execs() {
    let f = run(&["-n", "2", DSMWRAP, "sh", "-c", "echo $$ $DSMPI_RANK"]);
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    assert_eq!(f.stdout.len(), 2);

    let out = Command::new(DSMWRAP)
        .args(["sh", "-c", "true"])
        .env_remove("DSMPI_RANK")
        .env_remove("DSMPI_JOB_TOKEN")
        .output()
        .expect("run dsmwrap");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("dsmwrap: ") && err.contains("DSMPI_RANK"),
        "{err}"
    );

    let f = run(&[DSMWRAP, "dsmpi-no-such-program"]);
    assert_eq!(f.code(), 127, "stderr: {}", f.stderr);
    assert!(f
        .stderr
        .contains("dsmwrap: cannot execute dsmpi-no-such-program"));
}

/// Not a test by itself: started by `dsmexec` (see `pmi_link_end_to_end`), this test
/// binary plays a dsmpi rank on the PMI link. Run normally, it does nothing.
#[test]
fn fake_dsmpi_rank() {
    let Ok(rank) = std::env::var(bootstrap::ENV_RANK) else {
        return;
    };
    let rank: u32 = rank.parse().expect("DSMPI_RANK");
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let token = JobToken::from_hex(&var(bootstrap::ENV_TOKEN)).expect("token");
    let mut link =
        std::net::TcpStream::connect(var(bootstrap::ENV_PMI_ADDR)).expect("connect to PMI");
    PmiMsg::Hello {
        token: token.0,
        rank,
        pid: std::process::id(),
        host: var(bootstrap::ENV_HOSTNAME),
        addr: format!("127.0.0.1:{}", 6000 + rank),
    }
    .write_to(&mut link)
    .expect("hello");
    let Some(PmiMsg::Table(table)) = PmiMsg::read_from(&mut link).expect("table") else {
        panic!("expected the table");
    };
    let addrs: Vec<&str> = table.iter().map(|e| e.addr.as_str()).collect();
    println!("FAKE-RANK {rank} table {}", addrs.join(","));
    if std::env::var("FAKE_RANK_MODE").as_deref() == Ok("abort") && rank == 1 {
        PmiMsg::Abort {
            rank,
            code: 3,
            msg: "bad input".into(),
        }
        .write_to(&mut link)
        .expect("abort");
        // Like MPI_Abort: wait for the launcher to end us.
        thread::sleep(Duration::from_secs(30));
    }
    PmiMsg::Finalize { rank }
        .write_to(&mut link)
        .expect("finalize");
}

fn fake_rank_args(np: &str) -> Vec<String> {
    let me = std::env::current_exe().expect("test binary path");
    [
        "-n",
        np,
        &me.to_string_lossy(),
        "fake_dsmpi_rank",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn pmi_link_end_to_end() {
    let args = fake_rank_args("3");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Running::start(LIMIT, &args, Stdio::null()).finish();
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    let mut tables: Vec<&String> = f
        .stdout
        .iter()
        .filter(|l| l.starts_with("FAKE-RANK"))
        .collect();
    tables.sort();
    assert_eq!(
        tables,
        [0, 1, 2]
            .map(|r| format!("FAKE-RANK {r} table 127.0.0.1:6000,127.0.0.1:6001,127.0.0.1:6002"))
            .iter()
            .collect::<Vec<_>>()
    );
}

#[test]
fn pmi_abort_ends_the_job_with_its_code() {
    let args = fake_rank_args("3");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r =
        Running::start_with_env(LIMIT, &args, Stdio::null(), &[("FAKE_RANK_MODE", "abort")]);
    let f = r.finish();
    assert_eq!(f.code(), 3, "stderr: {}", f.stderr);
    assert!(f.waited < Duration::from_secs(20), "took {:?}", f.waited);
    let lines: Vec<&str> = stderr_lines(&f)
        .into_iter()
        .filter(|l| l.starts_with("dsmexec:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", f.stderr);
    assert!(
        lines[0].starts_with("dsmexec: rank 1 (pid ") && lines[0].ends_with(") aborted: bad input"),
        "{}",
        lines[0]
    );
}

/// The CPUs in a `Cpus_allowed_list` value ("0-2,5").
fn cpu_list(s: &str) -> Vec<usize> {
    s.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
                (a..=b).collect::<Vec<_>>()
            }
            None => vec![p.parse().expect("cpu")],
        })
        .collect()
}

fn allowed_here() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    cpu_list(line)
}

#[test]
fn bind_to_core_pins_each_rank_to_one_cpu_in_turn() {
    // The launcher runs where this test may; its ranks get those CPUs one each, in
    // order, wrapping around for the rank past the last CPU.
    let cpus = allowed_here();
    let n = cpus.len() + 1;
    let script = "echo $DSMPI_RANK ${DSMPI_HOST_CPUS:-unset} \
                  $(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)";
    let np = n.to_string();
    let f = run(&["--bind-to", "core", "-n", &np, "sh", "-c", script]);
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    let mut seen = BTreeMap::new();
    for line in &f.stdout {
        let v: Vec<&str> = line.split(' ').collect();
        assert_eq!(v.len(), 3, "{line}");
        let rank: usize = v[0].parse().expect("rank");
        assert_eq!(v[1], cpus.len().to_string(), "{line}");
        seen.insert(rank, cpu_list(v[2]));
    }
    let want: BTreeMap<usize, Vec<usize>> =
        (0..n).map(|r| (r, vec![cpus[r % cpus.len()]])).collect();
    assert_eq!(seen, want);

    // Without it, ranks may run wherever the launcher may, and are told nothing.
    let f = run(&["-n", "2", "sh", "-c", script]);
    assert_eq!(f.code(), 0, "stderr: {}", f.stderr);
    for line in &f.stdout {
        let v: Vec<&str> = line.split(' ').collect();
        assert_eq!(v[1], "unset", "{line}");
        assert_eq!(cpu_list(v[2]), cpus, "{line}");
    }

    let f = run(&["--bind-to", "socket", "-n", "2", "true"]);
    assert_eq!(f.code(), 2);
    assert!(f.stderr.contains("--bind-to"), "{}", f.stderr);
}
