//! The window in real processes, through the launcher. Skipped (with a note) when
//! `dsmexec` has not been built: set `DSMEXEC` or build the workspace's launcher.

use std::path::PathBuf;
use std::process::Command;

fn dsmexec() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DSMEXEC") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/dsmexec");
    p.exists().then_some(p)
}

fn example(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps; examples sit in target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

#[test]
fn window_checks_in_processes() {
    let Some(launcher) = dsmexec() else {
        eprintln!("dsmexec not built; skipping the multi-process window test");
        return;
    };
    let prog = example("window_procs");
    if !prog.exists() {
        // `cargo test -p dsmpi-window` builds the examples; `--test procs` alone does not.
        eprintln!("{} not built; skipping", prog.display());
        return;
    }
    // n = 3 with the window's threads polling (off by default on small machines),
    // n = 5 with faults served by the fault thread instead of the faulting thread;
    // both over TCP links, so that the ranks of this one host fault pages in from
    // each other instead of sharing them.
    for n in [1, 3, 5] {
        let mut cmd = Command::new(&launcher);
        cmd.args(["-n", &n.to_string(), "--timeout", "120"]);
        if n == 3 {
            cmd.args(["--transport", "tcp", "-x", "DSMPI_WIN_POLL_US=2000"]);
        }
        if n == 5 {
            cmd.args(["--transport", "tcp", "-x", "DSMPI_WIN_FAULT_PATH=thread"]);
        }
        let out = cmd.arg(&prog).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "n={n}: {:?}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.matches("window checks ok").count(), n, "{text}");
        // "(F faults, I served inline)" per rank: over TCP the bounced page faults
        // somewhere, and every fault is served the way this run asked for.
        let counts: Vec<(u64, u64)> = text
            .lines()
            .filter_map(|l| {
                let t = l.split_once("ok (")?.1;
                let (f, rest) = t.split_once(" faults, ")?;
                let i = rest.split_once(' ')?.0;
                Some((f.parse().ok()?, i.parse().ok()?))
            })
            .collect();
        assert_eq!(counts.len(), n, "{text}");
        if n > 1 {
            assert!(counts.iter().any(|&(f, _)| f > 0), "no faults: {text}");
            let inline = n != 5;
            for &(f, i) in &counts {
                assert_eq!(i, if inline { f } else { 0 }, "n={n}: {text}");
            }
        }
    }
}
