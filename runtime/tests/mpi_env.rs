//! `init()` in a process started by an MPI launcher, seen from outside: the test
//! re-runs its own binary with a launcher variable set (so the global environment of
//! the other tests is untouched) and checks what `init()` says.

use std::process::Command;

/// Set in the child run, so that only it calls `init()` under the MPI variables.
const CHILD: &str = "DSMPI_TEST_MPI_ENV_CHILD";

#[test]
fn init_under_mpirun_without_the_feature_says_to_rebuild() {
    if std::env::var_os(CHILD).is_some() {
        // The child: report init()'s outcome on stdout for the parent.
        match dsmpi_runtime::init() {
            Ok(u) => println!("INIT-OK size={}", u.world().size()),
            Err(e) => println!("INIT-ERR {e}"),
        }
        return;
    }
    if cfg!(feature = "mpi") {
        // With the feature, these variables start the MPI backend, which needs a real
        // mpirun: tests/mpi_p2p (under mpirun) covers that case.
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    for var in ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"] {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "init_under_mpirun_without_the_feature_says_to_rebuild",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env(var, "0")
            .env_remove("DSMPI_RANK")
            .output()
            .expect("re-running the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The harness may print "test NAME ... " on the same line before the outcome.
        let line = stdout
            .lines()
            .find_map(|l| l.find("INIT-").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("{var}: the child printed no outcome: {stdout}"));
        assert!(
            line.starts_with("INIT-ERR bootstrap failed:")
                && line.contains("--features mpi")
                && line.contains(var),
            "{var}: {line}"
        );
    }
}
