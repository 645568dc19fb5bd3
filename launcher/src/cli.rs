//! The `dsmexec` command line.
//!
//! Options come first and stop at PROGRAM: everything after it belongs to the program,
//! even words that look like options (`dsmexec -n 2 ls -l`). Errors are one line, so a
//! typo does not bury the terminal under clap's full help.

use std::ffi::OsString;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;

use crate::error::LaunchError;
use crate::hostfile::MapBy;

/// Default grace period between the polite signal and SIGKILL, in milliseconds.
pub const DEFAULT_GRACE_MS: u64 = 1000;

/// `dsmexec [OPTIONS] -n N PROGRAM [ARGS]...` as parsed by clap.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "dsmexec",
    version,
    about = "Start N ranks of a dsmpi (or any) program on this host",
    override_usage = "dsmexec [OPTIONS] -n <N> PROGRAM [ARGS]..."
)]
pub struct Cli {
    /// Number of ranks to start. Defaults to every slot of the hosts given, or 1.
    #[arg(short = 'n', long = "np", value_name = "N", value_parser = parse_np)]
    pub np: Option<u32>,

    /// Prefix every output line with `[RANK] ` (one host) or `[HOST:RANK] `.
    #[arg(long)]
    pub tag_output: bool,

    /// Hosts to run on, one per line: `host`, `host:N`, or `host slots=N max_slots=M`.
    #[arg(
        short = 'f',
        long = "hostfile",
        alias = "machinefile",
        value_name = "FILE"
    )]
    pub hostfile: Option<std::path::PathBuf>,

    /// Hosts to run on, comma-separated, each `name` or `name:slots`.
    #[arg(short = 'H', long = "host", value_name = "LIST")]
    pub host: Option<String>,

    /// Fill each host's slots in turn (`slot`) or deal ranks round-robin (`node`).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = MapBy::Slot)]
    pub map_by: MapBy,

    /// Allow more ranks than slots (never more than a host's `max_slots`).
    #[arg(long)]
    pub oversubscribe: bool,

    /// Print which host each rank runs on before starting.
    #[arg(long)]
    pub display_map: bool,

    /// Pin each rank to one CPU (`core`: the host's Nth rank to the Nth CPU dsmexec
    /// or the host's bootstrap may use there, wrapping around when there are more
    /// ranks than CPUs), or leave placement to the kernel (`none`, the default).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = BindTo::None)]
    pub bind_to: BindTo,

    /// Command that runs a command on a host: HOST and the command are appended.
    /// Defaults to `$DSMPI_LAUNCH_AGENT`, else `ssh` (or `srun` inside Slurm).
    #[arg(long, value_name = "CMD")]
    pub launch_agent: Option<String>,

    /// How ranks on one host talk: `shm` (shared memory, the default) or `tcp` (the
    /// TCP mesh for every pair, e.g. to compare). Sets `DSMPI_TRANSPORT` for every rank.
    #[arg(long, value_enum, value_name = "HOW")]
    pub transport: Option<TransportChoice>,

    /// Forward an environment variable to every rank (`VAR` or `VAR=value`).
    #[arg(short = 'x', value_name = "VAR[=VALUE]")]
    pub export: Vec<String>,

    /// Working directory of the ranks on every host.
    #[arg(long, value_name = "DIR")]
    pub wdir: Option<std::path::PathBuf>,

    /// Send the program to hosts that do not have it.
    #[arg(long)]
    pub ship: bool,

    /// Write each rank's stdout and stderr to DIR/rank.N.stdout|stderr instead.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<std::path::PathBuf>,

    /// Seconds of silence after which a host counts as lost (fractions allowed).
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_timeout)]
    pub heartbeat_timeout: Duration,

    /// Seconds a host may take to answer and start its ranks.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_timeout)]
    pub connect_timeout: Duration,

    /// Degree of the launch tree: dsmexec and each host's bootstrap start at most K
    /// hosts (flat up to K hosts; with srun, hosts connecting at once).
    #[arg(long, value_name = "K", default_value_t = 8, value_parser = parse_np)]
    pub launch_fanout: u32,

    /// Path of `dsmwrap` on the remote hosts (default: next to this dsmexec).
    #[arg(long, value_name = "PATH")]
    pub wrap: Option<String>,

    /// Milliseconds between the polite signal and SIGKILL when the job is stopped.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_GRACE_MS)]
    pub grace_ms: u64,

    /// Kill the job after this many seconds (fractions allowed); exit code 124.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout,
          allow_negative_numbers = true)]
    pub timeout: Option<Duration>,

    /// The program to run, then its arguments, passed through untouched.
    #[arg(
        value_name = "PROGRAM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<OsString>,
}

/// Where ranks may run on their host (`--bind-to`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BindTo {
    /// Anywhere the kernel puts them.
    #[default]
    None,
    /// Each on one CPU of its own (shared round-robin when oversubscribed).
    Core,
}

/// The transport between ranks that share a host (`--transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// Shared-memory rings (the default).
    Shm,
    /// The TCP mesh, as between hosts.
    Tcp,
}

impl TransportChoice {
    /// The value of `DSMPI_TRANSPORT` that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportChoice::Shm => "shm",
            TransportChoice::Tcp => "tcp",
        }
    }
}

impl Cli {
    /// The grace period as a duration.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run a job (boxed: the command line is large next to the other variant).
    Run(Box<Cli>),
    /// `--help` or `--version`: clap's text, to be printed on stdout with exit code 0.
    Print(clap::Error),
}

/// Parses `args` (including `argv[0]`).
///
/// A bad command line becomes [`LaunchError::Usage`] with a one-line message.
pub fn parse_from<I, T>(args: I) -> Result<Invocation, LaunchError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(Invocation::Run(Box::new(cli))),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            Ok(Invocation::Print(e))
        }
        Err(e) => Err(LaunchError::Usage(one_line(&e))),
    }
}

/// Squeezes a clap error into one line: its first paragraph, without the `error: `
/// label, plus a pointer to `--help`.
fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first_paragraph: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let text = first_paragraph.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{text} (see 'dsmexec --help')")
}

fn parse_np(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| "the number of ranks must be a positive integer".to_string())?;
    if n == 0 {
        return Err("the number of ranks must be at least 1".to_string());
    }
    Ok(n)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| "expected a number of seconds".to_string())?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("the timeout must be more than 0 seconds".to_string());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "the timeout is too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Cli {
        match parse_from(args) {
            Ok(Invocation::Run(cli)) => *cli,
            other => panic!("expected a job for {args:?}, got {other:?}"),
        }
    }

    fn usage(args: &[&str]) -> String {
        match parse_from(args) {
            Err(LaunchError::Usage(msg)) => msg,
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn options_stop_at_the_program() {
        let cli = run(&[
            "dsmexec",
            "-n",
            "3",
            "--tag-output",
            "ls",
            "-l",
            "--np",
            "x",
        ]);
        assert_eq!(cli.np, Some(3));
        assert!(cli.tag_output);
        assert_eq!(cli.command, ["ls", "-l", "--np", "x"]);
        let cli = run(&["dsmexec", "--np=2", "prog", "-n", "5"]);
        assert_eq!(cli.np, Some(2));
        assert_eq!(cli.command, ["prog", "-n", "5"]);
        // `--` lets a program name start with a dash.
        let cli = run(&["dsmexec", "--", "-odd", "-n"]);
        assert_eq!(cli.command, ["-odd", "-n"]);
    }

    #[test]
    fn defaults() {
        let cli = run(&["dsmexec", "true"]);
        assert_eq!(cli.np, None);
        assert_eq!(cli.map_by, MapBy::Slot);
        assert_eq!(cli.heartbeat_timeout, Duration::from_secs(5));
        assert!(!cli.tag_output);
        assert_eq!(cli.grace(), Duration::from_millis(DEFAULT_GRACE_MS));
        assert_eq!(cli.timeout, None);
    }

    #[test]
    fn timeout_accepts_fractions_and_rejects_nonsense() {
        let cli = run(&["dsmexec", "--timeout", "0.5", "true"]);
        assert_eq!(cli.timeout, Some(Duration::from_millis(500)));
        for bad in ["0", "-1", "abc", "nan", "inf"] {
            let msg = usage(&["dsmexec", "--timeout", bad, "true"]);
            assert!(msg.contains("--timeout"), "{msg}");
        }
    }

    #[test]
    fn bad_command_lines_are_one_line_usage_errors() {
        for args in [
            &["dsmexec", "-n", "0", "true"][..],
            &["dsmexec", "-n", "many", "true"],
            &["dsmexec", "-n", "2"],
            &["dsmexec"],
            &["dsmexec", "--bogus", "true"],
            &["dsmexec", "-x", "true"],
        ] {
            let msg = usage(args);
            assert!(!msg.contains('\n'), "{args:?}: {msg}");
            assert!(!msg.starts_with("error"), "{args:?}: {msg}");
        }
        assert!(usage(&["dsmexec", "-n", "0", "true"]).contains("at least 1"));
        assert!(usage(&["dsmexec", "-n", "2"]).contains("PROGRAM"));
        assert!(usage(&["dsmexec", "--bogus", "true"]).contains("--bogus"));
    }

    #[test]
    fn multi_host_options() {
        let cli = run(&[
            "dsmexec",
            "-f",
            "hosts",
            "--map-by",
            "node",
            "-x",
            "A",
            "-x",
            "B=1",
            "--ship",
            "--launch-agent",
            "ssh -p 2222",
            "prog",
        ]);
        assert_eq!(cli.hostfile.as_deref(), Some(std::path::Path::new("hosts")));
        assert_eq!(cli.map_by, MapBy::Node);
        assert_eq!(cli.export, ["A", "B=1"]);
        assert!(cli.ship);
        assert_eq!(cli.launch_agent.as_deref(), Some("ssh -p 2222"));
        assert!(usage(&["dsmexec", "--map-by", "core", "true"]).contains("core"));
    }

    #[test]
    fn help_and_version_are_printed_not_errors() {
        assert!(matches!(
            parse_from(["dsmexec", "--help"]),
            Ok(Invocation::Print(_))
        ));
        assert!(matches!(
            parse_from(["dsmexec", "--version"]),
            Ok(Invocation::Print(_))
        ));
    }
}
