//! `dsmwrap PROGRAM [ARGS]...`: the per-rank bootstrap; `dsmwrap --daemon`: the
//! per-host bootstrap of a multi-host job.
//!
//! As a per-rank bootstrap it checks that the launcher's `DSMPI_*` variables are
//! present, then becomes PROGRAM (`execvp`), so the rank keeps dsmwrap's pid, process
//! group and pipes. As a daemon (started by dsmexec through ssh or srun, never by
//! hand) it starts its host's ranks and speaks the framed protocol of
//! `dsmpi_launcher::proto` on its stdin and stdout; see `dsmpi_launcher::daemon`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use dsmpi_launcher::error::{EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_USAGE};
use dsmpi_launcher::output::diag;
use dsmpi_launcher::wrap::missing_vars;

fn main() {
    std::process::exit(dsmwrap());
}

fn dsmwrap() -> i32 {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        diag(
            "dsmwrap",
            "usage: dsmwrap PROGRAM [ARGS]... (run by dsmexec)",
        );
        return EXIT_USAGE;
    };
    if program == "--daemon" {
        return dsmpi_launcher::daemon::run();
    }
    let missing = missing_vars(|name| std::env::var_os(name));
    if !missing.is_empty() {
        diag(
            "dsmwrap",
            format_args!(
                "not started by a dsmpi launcher: {} not set",
                missing.join(", ")
            ),
        );
        return EXIT_USAGE;
    }
    // `exec` only returns on failure.
    let err = Command::new(&program).args(args).exec();
    diag(
        "dsmwrap",
        format_args!("cannot execute {}: {err}", program.to_string_lossy()),
    );
    if err.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_NOT_EXECUTABLE
    }
}
