//! The view's element copies, and how a fault inside one comes back to its caller.
//!
//! On x86_64 Linux a [`View`](crate::View) reads and writes the application view only
//! through the tiny assembly routines below, each with a single memory access (one
//! `mov`, or one `rep movsb` for elements of other sizes). When that access faults on
//! a window page, the SIGSEGV handler does not wake anybody: it sees that the faulting
//! instruction lies in these routines and rewrites the interrupted context so the
//! routine returns at once with *"faulted at address A, read or write"* instead of
//! retrying the access — what the Linux kernel's exception tables do for its copies
//! from user memory. The caller, back in ordinary code on its own stack with no lock
//! held, makes the page valid itself (the same function the fault thread runs: one
//! fetch from the owner through the runtime, then `mprotect`) and retries.
//!
//! Why: handing the fault to the window's fault thread costs two thread wake-ups (the
//! fault thread's, then the faulting thread's), 3–9 µs each on a 2-core VM, on top of
//! the fetch; here the faulting thread does the fetch while it is running anyway, and
//! its wait for the page is an ordinary receive that spins before it sleeps, like a
//! `get`'s. The handler's part is three register writes: async-signal-safe by
//! construction.
//!
//! Elsewhere (other architectures), and for windows allocated with
//! [`FaultPath::Thread`](crate::FaultPath::Thread), views use volatile accesses and
//! the handler wakes the fault thread (module `fault`).

use bytemuck::Pod;

use crate::fault::FaultKind;

/// Whether this build has the routines (else views use volatile accesses).
pub(crate) const AVAILABLE: bool = cfg!(all(target_arch = "x86_64", target_os = "linux"));

/// What one access through a routine did.
pub(crate) enum Outcome<T> {
    /// The access happened; for a load, the value read.
    Done(T),
    /// The access faulted at `addr` and did not happen.
    // Only the x86_64 routines report faults; elsewhere views never use them.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_os = "linux")),
        allow(dead_code)
    )]
    Fault {
        /// The faulting address (inside the window, or the handler would not have
        /// turned the fault into this).
        addr: usize,
        /// What the instruction tried.
        kind: FaultKind,
    },
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::{FaultKind, Outcome, Pod};

    /// A routine's answer, returned in `rax:rdx` (SysV: a 16-byte struct of two
    /// integers). `status` 0: done, `value` is what a load read. Else the handler
    /// wrote `1 + kind` into `status` and the faulting address into `value`.
    #[repr(C)]
    struct Ret {
        status: u64,
        value: u64,
    }

    // Every routine is a leaf without a stack frame, and its one faulting instruction
    // comes first after the registers are set up, so that at the fault `rsp` points at
    // the caller's return address: the handler can send the thread to `fixup` (a bare
    // `ret`) with `rax` and `rdx` set, and the routine returns to its caller as if it
    // had finished. The routines lie between `start` and `end`, and nothing else does.
    std::arch::global_asm!(
        ".pushsection .text.dsmpi_win_access,\"ax\",@progbits",
        ".p2align 4",
        ".globl dsmpi_win_access_start",
        ".hidden dsmpi_win_access_start",
        "dsmpi_win_access_start:",
        ".globl dsmpi_win_load1",
        ".hidden dsmpi_win_load1",
        "dsmpi_win_load1:",
        "movzx edx, byte ptr [rdi]",
        "xor eax, eax",
        "ret",
        ".globl dsmpi_win_load2",
        ".hidden dsmpi_win_load2",
        "dsmpi_win_load2:",
        "movzx edx, word ptr [rdi]",
        "xor eax, eax",
        "ret",
        ".globl dsmpi_win_load4",
        ".hidden dsmpi_win_load4",
        "dsmpi_win_load4:",
        "mov edx, dword ptr [rdi]",
        "xor eax, eax",
        "ret",
        ".globl dsmpi_win_load8",
        ".hidden dsmpi_win_load8",
        "dsmpi_win_load8:",
        "mov rdx, qword ptr [rdi]",
        "xor eax, eax",
        "ret",
        ".globl dsmpi_win_store1",
        ".hidden dsmpi_win_store1",
        "dsmpi_win_store1:",
        "mov byte ptr [rdi], sil",
        "xor eax, eax",
        "xor edx, edx",
        "ret",
        ".globl dsmpi_win_store2",
        ".hidden dsmpi_win_store2",
        "dsmpi_win_store2:",
        "mov word ptr [rdi], si",
        "xor eax, eax",
        "xor edx, edx",
        "ret",
        ".globl dsmpi_win_store4",
        ".hidden dsmpi_win_store4",
        "dsmpi_win_store4:",
        "mov dword ptr [rdi], esi",
        "xor eax, eax",
        "xor edx, edx",
        "ret",
        ".globl dsmpi_win_store8",
        ".hidden dsmpi_win_store8",
        "dsmpi_win_store8:",
        "mov qword ptr [rdi], rsi",
        "xor eax, eax",
        "xor edx, edx",
        "ret",
        // (dst, src, len): the direction flag is clear at every call (SysV ABI).
        ".globl dsmpi_win_copy",
        ".hidden dsmpi_win_copy",
        "dsmpi_win_copy:",
        "mov rcx, rdx",
        "rep movsb",
        "xor eax, eax",
        "xor edx, edx",
        "ret",
        ".globl dsmpi_win_access_end",
        ".hidden dsmpi_win_access_end",
        "dsmpi_win_access_end:",
        ".globl dsmpi_win_access_fixup",
        ".hidden dsmpi_win_access_fixup",
        "dsmpi_win_access_fixup:",
        "ret",
        ".popsection",
    );

    unsafe extern "C" {
        fn dsmpi_win_access_start();
        fn dsmpi_win_access_end();
        fn dsmpi_win_access_fixup();
        fn dsmpi_win_load1(p: *const u8) -> Ret;
        fn dsmpi_win_load2(p: *const u8) -> Ret;
        fn dsmpi_win_load4(p: *const u8) -> Ret;
        fn dsmpi_win_load8(p: *const u8) -> Ret;
        fn dsmpi_win_store1(p: *mut u8, v: u64) -> Ret;
        fn dsmpi_win_store2(p: *mut u8, v: u64) -> Ret;
        fn dsmpi_win_store4(p: *mut u8, v: u64) -> Ret;
        fn dsmpi_win_store8(p: *mut u8, v: u64) -> Ret;
        fn dsmpi_win_copy(dst: *mut u8, src: *const u8, len: usize) -> Ret;
    }

    fn outcome<T>(r: Ret, done: impl FnOnce(u64) -> T) -> Outcome<T> {
        match r.status {
            0 => Outcome::Done(done(r.value)),
            s => Outcome::Fault {
                addr: r.value as usize,
                kind: FaultKind::from_u32(u32::try_from(s - 1).unwrap_or(u32::MAX)),
            },
        }
    }

    /// Reads the `T` at `p` with one access.
    ///
    /// # Safety
    /// `p` is valid for reads of `size_of::<T>()` bytes or lies in a registered window
    /// (where a fault comes back as [`Outcome::Fault`]).
    pub(crate) unsafe fn load<T: Pod>(p: *const T) -> Outcome<T> {
        let n = std::mem::size_of::<T>();
        let b = p as *const u8;
        // SAFETY (all arms): the caller's contract; each routine touches exactly the
        // `n` bytes at `b` (or, for the copy, writes `n` bytes into `v`).
        let r = unsafe {
            match n {
                1 => dsmpi_win_load1(b),
                2 => dsmpi_win_load2(b),
                4 => dsmpi_win_load4(b),
                8 => dsmpi_win_load8(b),
                _ => {
                    let mut v = T::zeroed();
                    let r = dsmpi_win_copy(bytemuck::bytes_of_mut(&mut v).as_mut_ptr(), b, n);
                    return outcome(r, |_| v);
                }
            }
        };
        // x86_64 is little-endian: the element is the low `n` bytes of the register.
        outcome(r, |v| bytemuck::pod_read_unaligned(&v.to_le_bytes()[..n]))
    }

    /// Writes `v` at `p` with one access.
    ///
    /// # Safety
    /// As [`load`], for writes.
    pub(crate) unsafe fn store<T: Pod>(p: *mut T, v: T) -> Outcome<()> {
        let n = std::mem::size_of::<T>();
        let b = p as *mut u8;
        let bytes = bytemuck::bytes_of(&v);
        let mut word = [0u8; 8];
        if n <= 8 {
            word[..n].copy_from_slice(bytes);
        }
        let w = u64::from_le_bytes(word);
        // SAFETY: as in `load`.
        let r = unsafe {
            match n {
                1 => dsmpi_win_store1(b, w),
                2 => dsmpi_win_store2(b, w),
                4 => dsmpi_win_store4(b, w),
                8 => dsmpi_win_store8(b, w),
                _ => dsmpi_win_copy(b, bytes.as_ptr(), n),
            }
        };
        outcome(r, |_| ())
    }

    /// Handler side: if the fault at `addr` was raised by one of the routines, makes
    /// the routine return [`Outcome::Fault`] and says true. Async-signal-safe: reads
    /// and writes three saved registers of the interrupted context.
    pub(crate) fn redirect(uctx: *mut libc::c_void, addr: usize, kind: FaultKind) -> bool {
        if uctx.is_null() {
            return false;
        }
        // SAFETY: the kernel passes a valid ucontext_t to SA_SIGINFO handlers, and the
        // registers written here are restored by sigreturn when the handler returns.
        // Sending the thread to `fixup` (a bare `ret`) is sound because every routine
        // faults before it has pushed anything, so `rsp` still holds its return address.
        unsafe {
            let g = &mut (*(uctx as *mut libc::ucontext_t)).uc_mcontext.gregs;
            let rip = g[libc::REG_RIP as usize] as usize;
            let (start, end) = (
                dsmpi_win_access_start as *const () as usize,
                dsmpi_win_access_end as *const () as usize,
            );
            if rip < start || rip >= end {
                return false;
            }
            g[libc::REG_RAX as usize] = 1 + i64::from(kind.to_u32());
            g[libc::REG_RDX as usize] = addr as i64;
            g[libc::REG_RIP as usize] = dsmpi_win_access_fixup as *const () as usize as i64;
        }
        true
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use super::{FaultKind, Outcome, Pod};

    pub(crate) unsafe fn load<T: Pod>(p: *const T) -> Outcome<T> {
        // SAFETY: the caller's contract; a fault here is served by the fault thread.
        Outcome::Done(unsafe { std::ptr::read_volatile(p) })
    }

    pub(crate) unsafe fn store<T: Pod>(p: *mut T, v: T) -> Outcome<()> {
        // SAFETY: as in `load`.
        unsafe { std::ptr::write_volatile(p, v) };
        Outcome::Done(())
    }

    pub(crate) fn redirect(_uctx: *mut libc::c_void, _addr: usize, _kind: FaultKind) -> bool {
        false
    }
}

pub(crate) use imp::{load, redirect, store};
