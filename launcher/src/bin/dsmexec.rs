//! `dsmexec [OPTIONS] -n N PROGRAM [ARGS]...`: start N ranks of PROGRAM on this host.
//!
//! Thin on purpose: parse, run, turn an error into one `dsmexec: ...` line and its
//! exit code. See the `dsmpi_launcher` crate for the work.

use dsmpi_launcher::cli::{self, Invocation};
use dsmpi_launcher::job::{self, JobConfig};
use dsmpi_launcher::output::diag;

fn main() {
    std::process::exit(dsmexec());
}

fn dsmexec() -> i32 {
    let cli = match cli::parse_from(std::env::args_os()) {
        Ok(Invocation::Run(cli)) => cli,
        Ok(Invocation::Print(text)) => {
            // --help or --version; failing to print them is not worth an error.
            let _ = text.print();
            return 0;
        }
        Err(e) => {
            diag("dsmexec", &e);
            return e.exit_code();
        }
    };
    match JobConfig::from_cli(*cli).and_then(|cfg| job::run(&cfg)) {
        Ok(code) => code,
        Err(e) => {
            diag("dsmexec", &e);
            e.exit_code()
        }
    }
}
