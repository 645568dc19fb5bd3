//! The least a page fault served through SIGSEGV and `mprotect` can cost on this
//! machine, with no window, no thread and no fetch: a load from a `PROT_NONE` page
//! whose handler makes the page readable, against the `mprotect` alone.
//!
//! `cargo run --release -p dsmpi-window --example fault_floor`
//!
//! A window's fault costs at least this much on top of moving the page (the floor of
//! issue 4's "a remote page fault at most 2× a 4 KiB get"); see the crate docs,
//! *Measurements*.

use std::time::Instant;

const PAGES: usize = 64;
const REPS: usize = 4000;

/// Start of the test region, for the handler (set once before it can run).
static BASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_segv(_sig: libc::c_int, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // SAFETY: the kernel's siginfo for this SIGSEGV; mprotect is async-signal-safe.
    unsafe {
        let addr = (*info).si_addr() as usize;
        let base = BASE.load(std::sync::atomic::Ordering::Relaxed);
        if addr < base || addr >= base + PAGES * 4096 {
            // Not ours: restore the default action, so the access kills the process.
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            return;
        }
        libc::mprotect((addr & !4095) as *mut libc::c_void, 4096, libc::PROT_READ);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // SAFETY: a fresh anonymous mapping, a handler that only touches it, and loads
    // from it that either succeed or fault into that handler.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            PAGES * 4096,
            libc::PROT_NONE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        let base = p as *mut u8;
        BASE.store(base as usize, std::sync::atomic::Ordering::Relaxed);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
        let (mut fault, mut prot) = (Vec::with_capacity(REPS), Vec::with_capacity(REPS));
        for k in 0..REPS {
            let page = base.add(k % PAGES * 4096);
            libc::mprotect(page.cast(), 4096, libc::PROT_NONE);
            let t = Instant::now();
            std::ptr::read_volatile(page);
            fault.push(t.elapsed().as_secs_f64() * 1e6);
            libc::mprotect(page.cast(), 4096, libc::PROT_NONE);
            let t = Instant::now();
            libc::mprotect(page.cast(), 4096, libc::PROT_READ);
            prot.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let (f, m) = (median(fault), median(prot));
        println!("load faulting into a handler that mprotects: median {f:.2} µs");
        println!("the mprotect alone:                          median {m:.2} µs");
        println!(
            "so the signal's delivery and return:         about  {:.2} µs",
            f - m
        );
        libc::munmap(p, PAGES * 4096);
    }
}
