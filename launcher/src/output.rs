//! Forwarding rank output to the launcher's stdout and stderr, one whole line at a time.
//!
//! Every rank writes into its own pipes, so bytes can only get mixed where the launcher
//! merges them. It therefore buffers each rank's stream, emits only complete lines, and
//! writes each line (tag prefix included) with a single `write(2)` call from its single
//! thread: two ranks' bytes never share a line. A line that never ends is cut into
//! [`MAX_LINE`]-byte lines so a rank cannot make the launcher's memory grow without
//! bound.

use std::fmt::Display;
use std::io::{self, Stderr, Stdout};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// The longest line forwarded in one piece; longer ones are split into lines this long.
pub const MAX_LINE: usize = 64 * 1024;

/// Which of a rank's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The rank's stdout, forwarded to the launcher's stdout.
    Stdout,
    /// The rank's stderr, forwarded to the launcher's stderr.
    Stderr,
}

/// Splits a byte stream into lines, holding back an unfinished last line.
///
/// Lines are passed to the callback without their `\n`. No line longer than
/// `max_line` bytes is ever emitted or kept: longer ones are cut, on a UTF-8 character
/// boundary when the bytes are UTF-8.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    /// A splitter cutting lines longer than `max_line` bytes (at least 4, so a cut
    /// can always step back to a UTF-8 boundary and still make progress).
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            max_line: max_line.max(4),
        }
    }

    /// Feeds bytes; `emit` receives every line they complete.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8])) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&data[..nl], &data[nl + 1..]);
            if self.partial.is_empty() {
                // Common case: the whole line is in this read, no copy needed.
                emit_cut(line, self.max_line, emit);
            } else {
                self.partial.extend_from_slice(line);
                emit_cut(&self.partial, self.max_line, emit);
                self.partial.clear();
            }
            data = rest;
        }
        self.partial.extend_from_slice(data);
        // Keep at most one line's worth; `>` so a line of exactly `max_line` bytes whose
        // newline is in the next read still comes out whole.
        while self.partial.len() > self.max_line {
            let cut = utf8_cut(&self.partial, self.max_line);
            emit(&self.partial[..cut]);
            self.partial.drain(..cut);
        }
    }

    /// End of stream: emits the unfinished last line, if there is one.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit_cut(&self.partial, self.max_line, emit);
            self.partial.clear();
        }
    }
}

/// Emits `line` in pieces of at most `max` bytes.
fn emit_cut(mut line: &[u8], max: usize, emit: &mut impl FnMut(&[u8])) {
    while line.len() > max {
        let cut = utf8_cut(line, max);
        emit(&line[..cut]);
        line = &line[cut..];
    }
    emit(line);
}

/// Where to cut `buf` (longer than `max`) so the first piece has at most `max` bytes
/// and, if `buf` is UTF-8, no character is split. Falls back to `max` for non-UTF-8.
fn utf8_cut(buf: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    // A UTF-8 character has at most 3 continuation bytes.
    (max.saturating_sub(3).max(1)..=max)
        .rev()
        .find(|&cut| !is_continuation(buf[cut]))
        .unwrap_or(max)
}

/// The prefix `--tag-output` puts before each of `rank`'s lines.
pub fn tag_prefix(rank: u32) -> Vec<u8> {
    format!("[{rank}] ").into_bytes()
}

/// One of the launcher's own output streams, written a whole record at a time.
///
/// After a write fails (typically `EPIPE` once the reader of `dsmexec | head` is gone)
/// the sink is closed and drops everything; the job then closes the ranks' pipes for
/// that stream so they learn it too.
///
/// A sink is direct (the caller's thread writes, and blocks while the reader is slow)
/// or threaded ([`Sink::threaded`]): lines are queued for a writer thread, so the
/// caller's event loop keeps running (and sending heartbeats) while a reader such as
/// a paused `less` holds the output back; [`Sink::backlog`] tells it when to stop
/// reading more.
#[derive(Debug)]
pub struct Sink<F: AsFd> {
    fd: F,
    open: bool,
    scratch: Vec<u8>,
    writer: Option<Writer>,
}

/// The queue between a threaded sink and its writer thread.
#[derive(Debug, Default)]
struct Queue {
    lines: std::collections::VecDeque<Vec<u8>>,
    bytes: usize,
    /// The write error that stopped the thread.
    error: Option<Errno>,
    /// No more lines will come: the thread exits once the queue is empty.
    closed: bool,
}

type Shared = std::sync::Arc<(std::sync::Mutex<Queue>, std::sync::Condvar)>;

#[derive(Debug)]
struct Writer {
    shared: Shared,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Locks the queue; a panic elsewhere while holding it (impossible in this module's
/// code, which does not panic under the lock) would still leave usable data.
fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn writer_thread(fd: std::os::fd::OwnedFd, shared: Shared) {
    loop {
        let line = {
            let mut q = lock(&shared);
            loop {
                if let Some(line) = q.lines.pop_front() {
                    q.bytes -= line.len();
                    break line;
                }
                if q.closed {
                    return;
                }
                q = shared
                    .1
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        if let Err(e) = write_all(&fd, &line) {
            let mut q = lock(&shared);
            q.error = Some(e);
            q.lines.clear();
            q.bytes = 0;
            return;
        }
    }
}

impl<F: AsFd> Sink<F> {
    /// A sink writing to `fd`.
    pub fn new(fd: F) -> Sink<F> {
        Sink {
            fd,
            open: true,
            scratch: Vec::new(),
            writer: None,
        }
    }

    /// A sink whose writes are done by a thread of its own on a duplicate of `fd`.
    ///
    /// Create it after the process has blocked the signals it reads through a
    /// signalfd: the thread inherits the mask, so it never takes those signals.
    pub fn threaded(fd: F) -> io::Result<Sink<F>> {
        let dup = fd.as_fd().try_clone_to_owned()?;
        let shared: Shared = Default::default();
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dsmexec-output".into())
            .spawn(move || writer_thread(dup, for_thread))?;
        Ok(Sink {
            fd,
            open: true,
            scratch: Vec::new(),
            writer: Some(Writer {
                shared,
                thread: Some(thread),
            }),
        })
    }

    /// Bytes queued for the writer thread and not yet written (0 for a direct sink).
    pub fn backlog(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| lock(&w.shared).bytes)
    }

    /// Waits until a threaded sink's queue is written (or its reader is gone).
    pub fn drain(&mut self) {
        if let Some(w) = &mut self.writer {
            lock(&w.shared).closed = true;
            w.shared.1.notify_all();
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Whether output still goes anywhere.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Writes `prefix`, `line` and a newline as one `write(2)` (more only if the
    /// kernel accepts part of it, which cannot interleave anything: this launcher is
    /// the only writer and has one thread).
    ///
    /// Returns the error that closed the sink, if this write closed it.
    pub fn write_line(&mut self, prefix: &[u8], line: &[u8]) -> Option<Errno> {
        if !self.open {
            return None;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(prefix);
        self.scratch.extend_from_slice(line);
        self.scratch.push(b'\n');
        if let Some(w) = &self.writer {
            let mut q = lock(&w.shared);
            if let Some(e) = q.error {
                drop(q);
                self.open = false;
                return Some(e);
            }
            q.bytes += self.scratch.len();
            q.lines.push_back(std::mem::take(&mut self.scratch));
            w.shared.1.notify_one();
            return None;
        }
        match write_all(&self.fd, &self.scratch) {
            Ok(()) => None,
            Err(e) => {
                self.open = false;
                Some(e)
            }
        }
    }
}

impl<F: AsFd> Drop for Sink<F> {
    fn drop(&mut self) {
        // Let the writer thread finish what is queued and exit; not joined, so a
        // reader that never reads cannot hang the drop.
        if let Some(w) = &self.writer {
            lock(&w.shared).closed = true;
            w.shared.1.notify_all();
        }
    }
}

/// Writes all of `buf` to `fd`, waiting for writability if the descriptor we
/// inherited happens to be non-blocking.
fn write_all(fd: &impl AsFd, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                match nix::poll::poll(&mut pfd, PollTimeout::NONE) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Forwards one rank's stream: splits it into lines and writes them, tagged or not.
#[derive(Debug)]
pub struct LineForwarder {
    splitter: LineSplitter,
    prefix: Vec<u8>,
}

impl LineForwarder {
    /// A forwarder for `rank`'s lines; `tag` adds the `[rank] ` prefix.
    pub fn new(rank: u32, tag: bool) -> LineForwarder {
        LineForwarder {
            splitter: LineSplitter::new(MAX_LINE),
            prefix: if tag { tag_prefix(rank) } else { Vec::new() },
        }
    }

    /// A forwarder that puts `prefix` before each line (`[host:rank] `, or nothing).
    pub fn with_prefix(prefix: Vec<u8>) -> LineForwarder {
        LineForwarder {
            splitter: LineSplitter::new(MAX_LINE),
            prefix,
        }
    }

    /// Forwards the complete lines in `data` to `sink`.
    pub fn feed<F: AsFd>(&mut self, data: &[u8], sink: &mut Sink<F>) -> Option<Errno> {
        let mut failed = None;
        if sink.is_open() {
            let prefix = &self.prefix;
            self.splitter.feed(data, &mut |line| {
                failed = failed.or(sink.write_line(prefix, line));
            });
        }
        failed
    }

    /// End of the rank's stream: forwards the unfinished last line, newline added.
    pub fn finish<F: AsFd>(&mut self, sink: &mut Sink<F>) -> Option<Errno> {
        let mut failed = None;
        let prefix = &self.prefix;
        self.splitter.finish(&mut |line| {
            failed = failed.or(sink.write_line(prefix, line));
        });
        failed
    }
}

/// The launcher's stdout and stderr as sinks.
#[derive(Debug)]
pub struct Sinks {
    /// Where ranks' stdout goes.
    pub stdout: Sink<Stdout>,
    /// Where ranks' stderr goes.
    pub stderr: Sink<Stderr>,
}

impl Sinks {
    /// Sinks on this process's own stdout and stderr.
    pub fn std() -> Sinks {
        Sinks {
            stdout: Sink::new(io::stdout()),
            stderr: Sink::new(io::stderr()),
        }
    }

    /// Threaded sinks on this process's stdout and stderr (see [`Sink::threaded`]).
    pub fn threaded() -> io::Result<Sinks> {
        Ok(Sinks {
            stdout: Sink::threaded(io::stdout())?,
            stderr: Sink::threaded(io::stderr())?,
        })
    }

    /// Bytes waiting to be written on either stream.
    pub fn backlog(&self) -> usize {
        self.stdout.backlog() + self.stderr.backlog()
    }

    /// Writes out everything queued (threaded sinks).
    pub fn drain(&mut self) {
        self.stdout.drain();
        self.stderr.drain();
    }
}

/// Writes `tool: msg` as one line on stderr, ignoring failure: a launcher whose stderr
/// is gone has nowhere left to complain, and must not panic the way `eprintln!` does.
pub fn diag(tool: &str, msg: impl Display) {
    let line = format!("{tool}: {msg}\n");
    let _ = write_all(&io::stderr(), line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn split_all(chunks: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut |l| out.push(l.to_vec()));
        }
        s.finish(&mut |l| out.push(l.to_vec()));
        out
    }

    fn lines(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn whole_lines_regardless_of_read_boundaries() {
        let text = b"alpha\nbeta\n\ngamma\n";
        let want = lines(&["alpha", "beta", "", "gamma"]);
        assert_eq!(split_all(&[text], 100), want);
        // Every possible split into two reads, and byte by byte.
        for i in 0..text.len() {
            assert_eq!(
                split_all(&[&text[..i], &text[i..]], 100),
                want,
                "split at {i}"
            );
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(split_all(&bytes, 100), want);
    }

    #[test]
    fn partial_last_line_is_flushed_at_eof() {
        assert_eq!(
            split_all(&[b"a\nno newline"], 100),
            lines(&["a", "no newline"])
        );
        assert_eq!(split_all(&[b""], 100), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn long_lines_are_cut_and_memory_stays_bounded() {
        let mut s = LineSplitter::new(8);
        let mut out = Vec::new();
        for _ in 0..1000 {
            s.feed(b"0123456789", &mut |l| out.push(l.to_vec()));
            assert!(s.partial.len() <= 8);
        }
        s.finish(&mut |l| out.push(l.to_vec()));
        assert!(out.iter().all(|l| l.len() <= 8));
        assert_eq!(out.concat().len(), 10_000);
        // A complete line in one read is cut too, and exactly max fits whole.
        assert_eq!(split_all(&[b"abcdefghij\n"], 8), lines(&["abcdefgh", "ij"]));
        assert_eq!(split_all(&[b"abcdefgh", b"\n"], 8), lines(&["abcdefgh"]));
    }

    #[test]
    fn cuts_respect_utf8_characters() {
        // "aaaaaa" then a 3-byte character straddling the 8-byte limit.
        let text = "aaaaaa€bb\n";
        let out = split_all(&[text.as_bytes()], 8);
        assert_eq!(out, lines(&["aaaaaa", "€bb"]));
        // Not UTF-8 at all: cut at the limit.
        let junk = [0x80u8; 20];
        let out = split_all(&[&junk], 8);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [8, 8, 4]);
    }

    #[test]
    fn forwarder_tags_and_writes_whole_lines() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut sink = Sink::new(w);
        let mut fwd = LineForwarder::new(3, true);
        assert_eq!(fwd.feed(b"hello\nwor", &mut sink), None);
        assert_eq!(fwd.feed(b"ld\ntail", &mut sink), None);
        assert_eq!(fwd.finish(&mut sink), None);
        drop(sink);
        let mut got = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut got)
            .expect("read pipe");
        assert_eq!(got, "[3] hello\n[3] world\n[3] tail\n");
    }

    #[test]
    fn threaded_sink_writes_in_order_and_reports_a_gone_reader() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut sink = Sink::threaded(w).expect("threaded sink");
        let mut fwd = LineForwarder::new(1, true);
        for i in 0..100 {
            assert_eq!(fwd.feed(format!("line {i}\n").as_bytes(), &mut sink), None);
        }
        sink.drain();
        drop(sink);
        let mut got = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut got)
            .expect("read pipe");
        let want: String = (0..100).map(|i| format!("[1] line {i}\n")).collect();
        assert_eq!(got, want);

        let (r, w) = nix::unistd::pipe().expect("pipe");
        drop(r);
        let mut sink = Sink::threaded(w).expect("threaded sink");
        let mut fwd = LineForwarder::new(0, false);
        let mut failed = None;
        for _ in 0..1000 {
            failed = failed.or(fwd.feed(b"x\n", &mut sink));
            if failed.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(failed, Some(Errno::EPIPE));
        assert!(!sink.is_open());
    }

    #[test]
    fn closed_reader_closes_the_sink() {
        // SIGPIPE is ignored in the test harness, as in dsmexec, so this is EPIPE.
        let (r, w) = nix::unistd::pipe().expect("pipe");
        drop(r);
        let mut sink = Sink::new(w);
        let mut fwd = LineForwarder::new(0, false);
        assert_eq!(fwd.feed(b"x\n", &mut sink), Some(Errno::EPIPE));
        assert!(!sink.is_open());
        assert_eq!(fwd.feed(b"y\n", &mut sink), None);
    }
}
