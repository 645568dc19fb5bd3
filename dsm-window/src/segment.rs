//! The shared segment's memory: one anonymous memory file mapped twice.
//!
//! The *application view* is what [`View`](crate::View) reads and writes; pages that
//! are not valid locally are `PROT_NONE` there. The *service view* maps the same file
//! read-write and is what the runtime's threads use to fill pages, serve remote
//! requests and compute diffs, so the runtime never touches a protected page (and
//! never hands one to a syscall). The file is a `memfd`: it has no name in `/dev/shm`
//! or `/tmp`, and disappears with the last mapping.
//!
//! Ranks of one host linked through shared memory also map each other's regions
//! ([`Segment::share`]): the pages of a same-host home are then that home's own memory
//! file, mapped read-write in both views, and never fault.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Result, WinError};

/// Page protection of the application view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prot {
    None,
    Read,
    ReadWrite,
}

impl Prot {
    fn bits(self) -> libc::c_int {
        match self {
            Prot::None => libc::PROT_NONE,
            Prot::Read => libc::PROT_READ,
            Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The two mappings of one window's segment on this rank.
pub(crate) struct Segment {
    _fd: OwnedFd,
    app: *mut u8,
    svc: *mut u8,
    len: usize,
    page: usize,
}

// SAFETY: the pointers refer to mappings owned by this struct and unmapped only in
// `drop`; every access through them goes through `read`/`write`, which copy bytes with
// bounds checks, so sharing the struct between threads shares no Rust references.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`.
unsafe impl Sync for Segment {}

impl Segment {
    /// Maps `len` bytes (a whole number of pages, at least one): the application view
    /// all `PROT_NONE`, the service view read-write, both zero-filled.
    pub(crate) fn new(len: usize) -> Result<Segment> {
        let page = page_size();
        debug_assert!(len > 0 && len.is_multiple_of(page));
        // SAFETY: the name is a valid C string; memfd_create returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"dsmpi-window".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(WinError::last_os("memfd_create"));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(WinError::last_os("sizing the window's memory file"));
        }
        let map = |prot| {
            // SAFETY: a new shared mapping of our own file at an address the kernel
            // picks; it aliases no Rust object.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                Err(WinError::last_os("mapping the window"))
            } else {
                Ok(p as *mut u8)
            }
        };
        let app = map(libc::PROT_NONE)?;
        let svc = match map(libc::PROT_READ | libc::PROT_WRITE) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `app` is the mapping made just above, of `len` bytes.
                unsafe { libc::munmap(app as *mut libc::c_void, len) };
                return Err(e);
            }
        };
        Ok(Segment {
            _fd: fd,
            app,
            svc,
            len,
            page,
        })
    }

    /// The memory file's descriptor number, for a same-host rank to open through
    /// `/proc/<pid>/fd/<n>` (see [`Segment::share`]).
    pub(crate) fn raw_fd(&self) -> i32 {
        self._fd.as_raw_fd()
    }

    /// Opens another process's window memory (process `pid`'s descriptor `fd`) for
    /// [`Segment::share`]. Fails without side effects, e.g. when the kernel's ptrace
    /// rules forbid it.
    pub(crate) fn open_peer(pid: u32, fd: i32) -> Result<OwnedFd> {
        let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}"))
            .map_err(|_| WinError::InvalidArgument("a /proc path with a NUL".into()))?;
        // SAFETY: `path` is a valid C string; open returns a new fd or -1.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(WinError::last_os(format!(
                "opening /proc/{pid}/fd/{fd}, a same-host rank's window memory"
            )));
        }
        // SAFETY: `raw` was just returned by open and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Replaces `npages` pages from `first` of both views by the same pages of
    /// `file` (from [`Segment::open_peer`]: a same-host rank's segment of the same
    /// geometry, whose region lies at the same offsets as in ours), read-write: from
    /// then on this rank's loads, stores and copies there reach that memory directly.
    /// The mappings keep the file alive; the caller may close it.
    pub(crate) fn share(&self, first: usize, npages: usize, file: &OwnedFd) -> Result<()> {
        let end = first
            .checked_add(npages)
            .and_then(|e| e.checked_mul(self.page));
        if npages == 0 || end.is_none_or(|e| e > self.len) {
            return Err(WinError::InvalidArgument(format!(
                "sharing pages {first}..+{npages} of a {}-byte segment",
                self.len
            )));
        }
        let (off, len) = (first * self.page, npages * self.page);
        for base in [self.svc, self.app] {
            // SAFETY: MAP_FIXED over `len` bytes inside one of our own two mappings
            // (bounds checked above), which only this struct unmaps; Rust code holds
            // no reference into either view (views copy single elements with volatile
            // accesses, the service view is reached through `read`/`write`), so
            // replacing the pages under them invalidates nothing.
            let p = unsafe {
                libc::mmap(
                    base.add(off) as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    off as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(WinError::last_os(
                    "mapping a same-host rank's window memory",
                ));
            }
        }
        Ok(())
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Start of the application view (for the fault table and typed views).
    pub(crate) fn app_base(&self) -> *mut u8 {
        self.app
    }

    /// Sets the protection of `npages` pages of the application view from `first`.
    pub(crate) fn protect(&self, first: usize, npages: usize, prot: Prot) -> Result<()> {
        if npages == 0 {
            return Ok(());
        }
        let end = (first + npages) * self.page;
        if end > self.len {
            return Err(WinError::InvalidArgument(format!(
                "protecting pages {first}..{} of a {}-byte segment",
                first + npages,
                self.len
            )));
        }
        // SAFETY: the range lies inside the application view (checked above), which
        // Rust code only reaches through volatile accesses of `View`; changing its
        // protection can only make such an access fault, which the handler serves.
        let rc = unsafe {
            libc::mprotect(
                self.app.add(first * self.page) as *mut libc::c_void,
                npages * self.page,
                prot.bits(),
            )
        };
        if rc != 0 {
            return Err(WinError::last_os("mprotect on the window"));
        }
        Ok(())
    }

    fn check(&self, off: usize, len: usize) -> Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(WinError::OutOfRange {
                target: usize::MAX,
                offset: off,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies bytes out of the service view.
    pub(crate) fn read(&self, off: usize, buf: &mut [u8]) -> Result<()> {
        self.check(off, buf.len())?;
        // SAFETY: in bounds (checked); the service view is always readable; `buf` is a
        // distinct Rust allocation. Concurrent stores by the application to the same
        // bytes are racy by the window's contract (conflicting accesses in one epoch)
        // and yield unspecified bytes, never a fault.
        unsafe { std::ptr::copy_nonoverlapping(self.svc.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies bytes into the service view.
    pub(crate) fn write(&self, off: usize, data: &[u8]) -> Result<()> {
        self.check(off, data.len())?;
        // SAFETY: in bounds (checked); the service view is always writable and no Rust
        // reference to it exists.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.svc.add(off), data.len()) };
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: both mappings were made in `new` with `len` bytes and nothing refers
        // to them any more (views borrow the window that owns this segment).
        unsafe {
            libc::munmap(self.app as *mut libc::c_void, self.len);
            libc::munmap(self.svc as *mut libc::c_void, self.len);
        }
    }
}
