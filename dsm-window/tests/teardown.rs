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
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .output()
        .unwrap()
}

#[test]
fn no_leftovers_after_drop() {
    if child_mode().is_some() {
        return;
    }
    // Alone in a fresh process, so that no other test's window is mapped meanwhile.
    let out = run_child("leftovers_child", "leftovers");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn leftovers_child() {
    if child_mode().as_deref() != Some("leftovers") {
        return;
    }
    let shm = names("/dev/shm");
    let tmp = names("/tmp");
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
    assert_eq!(names("/dev/shm"), shm);
    assert_eq!(names("/tmp"), tmp);
    // Threads are gone too: only this one remains besides the test harness's.
    let threads = names("/proc/self/task").len();
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
