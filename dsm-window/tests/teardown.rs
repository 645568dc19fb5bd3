//! Teardown and the fault handler's manners toward other faults. Each scenario that
//! must crash runs in a child process (this test binary, re-executed with a variable).

use std::process::Command;

use dsmpi_runtime::run_local;
use dsmpi_window::{Layout, Window};

const CHILD: &str = "DSMPI_WINDOW_TEST_CHILD";

fn names(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The entries of `dir` that could be dsmpi's: the directory is shared with every
/// other process on the machine (parallel test binaries, Open MPI's `/dev/shm`
/// files, `mktemp`), which must not fail this test. The launcher's per-user ship
/// cache (`dsmpi-ship-UID`) is meant to stay.
fn ours(dir: &str) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.to_lowercase().contains("dsm") && !n.starts_with("dsmpi-ship-"))
        .collect()
}

fn window_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("dsmpi-window"))
        .count()
}

fn child_mode() -> Option<String> {
    std::env::var(CHILD).ok()
}

/// Runs this test binary's `test` with the child variable set; returns its status.
fn run_child(test: &str, mode: &str) -> std::process::Output {
    run_child_with(test, mode, &[])
}

fn run_child_with(test: &str, mode: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn no_leftovers_after_drop() {
    if child_mode().is_some() {
        return;
    }
    // Alone in a fresh process, so that no other test's window is mapped meanwhile,
    // with a temporary directory of its own, which must stay empty.
    let tmp = std::env::temp_dir().join(format!("window-teardown-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = run_child_with(
        "leftovers_child",
        "leftovers",
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    let left = names(tmp.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

#[test]
fn leftovers_child() {
    if child_mode().as_deref() != Some("leftovers") {
        return;
    }
    let shm = ours("/dev/shm");
    let tmp = ours("/tmp");
    for round in 0..3 {
        run_local(4, |world| {
            let layout = if round == 1 {
                Layout::RoundRobin
            } else {
                Layout::Blocked
            };
            let win = Window::allocate_with(&world, 5 * 4096, layout).unwrap();
            let v = win.view::<u32>().unwrap();
            for i in 0..v.len() / 64 {
                v.store(i * 64, i as u32).unwrap();
            }
            win.fence().unwrap();
            assert!(window_mappings() >= 2);
            win.free().unwrap();
            // Dropped without free: same teardown.
            let w2 = Window::allocate(&world, 100).unwrap();
            w2.fence().unwrap();
        })
        .unwrap();
    }
    assert_eq!(window_mappings(), 0, "mappings left after free");
    assert_eq!(ours("/dev/shm"), shm);
    assert_eq!(ours("/tmp"), tmp);
    // Threads are gone too: only this one remains besides the test harness's. Every
    // thread has been joined, but a joined thread can still be listed for a moment
    // (the kernel reaps it after waking the joiner), which failed this check on a
    // loaded machine: give the listing up to 10 s to catch up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut threads = names("/proc/self/task").len();
    while threads > 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        threads = names("/proc/self/task").len();
    }
    assert!(threads <= 2, "{threads} threads left");
}

fn signal_of(out: &std::process::Output) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal()
}

#[test]
fn ordinary_segfault_still_crashes_with_sigsegv() {
    if child_mode().is_some() {
        return;
    }
    let out = run_child("segfault_child", "segv");
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("window alive"));
}

#[test]
fn segfault_child() {
    if child_mode().as_deref() != Some("segv") {
        return;
    }
    run_local(2, |world| {
        let win = Window::allocate(&world, 4096).unwrap();
        let v = win.view::<u64>().unwrap();
        v.store(v.index_of(1 - world.rank(), 0).unwrap(), 1)
            .unwrap();
        win.fence().unwrap();
        if world.rank() == 0 {
            println!("window alive");
            // SAFETY: not safe at all: the point is to fault outside every window.
            unsafe { std::ptr::write_volatile(16 as *mut u64, 1) };
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    })
    .unwrap();
}

#[test]
fn stack_overflow_is_still_reported() {
    if child_mode().is_some() {
        return;
    }
    let out = run_child("overflow_child", "overflow");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overflowed its stack"), "{err}");
    assert_eq!(signal_of(&out), Some(libc::SIGABRT));
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, sink: &mut [u8; 1024]) -> u64 {
    let mut local = [depth as u8; 1024];
    local[depth as usize % 1024] ^= sink[0];
    let r = recurse(depth + 1, &mut local);
    std::hint::black_box(r + local[3] as u64)
}

#[test]
fn overflow_child() {
    if child_mode().as_deref() != Some("overflow") {
        return;
    }
    run_local(1, |world| {
        let _win = Window::allocate(&world, 4096).unwrap();
        let mut sink = [0u8; 1024];
        std::hint::black_box(recurse(0, &mut sink));
    })
    .unwrap();
}
