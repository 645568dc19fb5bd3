//! `dsmwrap PROGRAM [ARGS]...`: the per-rank bootstrap.
//!
//! Checks that the launcher's `DSMPI_*` variables are present, then becomes PROGRAM
//! (`execvp`), so the rank keeps dsmwrap's pid, process group and pipes. With
//! multi-host launch, dsmwrap also takes the per-host daemon role: started over ssh, it
//! runs the launcher's `agent` for that host's ranks. Until then it stays this small.

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
