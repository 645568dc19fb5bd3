//! Packing and unpacking: moving the selected bytes of `count` elements of a datatype
//! between a user buffer and a contiguous stream, a bounded piece at a time.

use super::Datatype;
use crate::error::Result;

/// A position in the packed stream of `count` elements (element, strided run, segment
/// within the run, byte within the segment), so packing can stop at a piece boundary
/// and resume there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    elem: usize,
    run: usize,
    k: usize,
    off: usize,
}

impl Cursor {
    /// The start of the stream.
    pub fn new() -> Cursor {
        Cursor::default()
    }
}

/// Copies one stretch. The common lengths of one primitive get a fixed-size copy
/// the compiler turns into a single move: a column of doubles is one 8-byte stretch
/// per element, and a `memcpy` call for each would cost more than the bytes.
#[inline(always)]
fn copy_stretch(dst: &mut [u8], src: &[u8]) {
    match src.len() {
        1 => dst[0] = src[0],
        2 => dst[..2].copy_from_slice(&src[..2]),
        4 => dst[..4].copy_from_slice(&src[..4]),
        8 => dst[..8].copy_from_slice(&src[..8]),
        16 => dst[..16].copy_from_slice(&src[..16]),
        _ => dst.copy_from_slice(src),
    }
}

impl Datatype {
    /// Walks the stream from `cur`, calling `f(buffer offset, stride, stream offset,
    /// len, n)` for each batch of `n` stretches of `len` bytes (the k-th at buffer
    /// offset `offset + k × stride`, packed contiguously from the stream offset), until
    /// `limit` bytes are covered or the data ends; returns the bytes covered.
    fn walk(
        &self,
        count: usize,
        cur: &mut Cursor,
        limit: usize,
        mut f: impl FnMut(usize, isize, usize, usize, usize),
    ) -> Result<usize> {
        let c = self.committed()?;
        let ext = self.extent();
        let mut done = 0;
        // Offsets are in range: `span` checked every element's bytes against the buffer.
        while done < limit && cur.elem < count {
            let Some(r) = c.strided.get(cur.run) else {
                cur.elem += 1;
                cur.run = 0;
                continue;
            };
            let base = cur.elem as isize * ext + r.disp;
            if cur.off == 0 {
                // As many whole segments as fit: the tight loop a column needs.
                let whole = ((limit - done) / r.len).min(r.n - cur.k);
                if whole > 0 {
                    let at = base + cur.k as isize * r.stride;
                    f(at as usize, r.stride, done, r.len, whole);
                    done += whole * r.len;
                    cur.k += whole;
                    if cur.k == r.n {
                        cur.k = 0;
                        cur.run += 1;
                    }
                    continue;
                }
            }
            // Part of one segment, at a piece boundary.
            let at = base + cur.k as isize * r.stride + cur.off as isize;
            let take = (r.len - cur.off).min(limit - done);
            f(at as usize, 0, done, take, 1);
            done += take;
            cur.off += take;
            if cur.off == r.len {
                cur.off = 0;
                cur.k += 1;
                if cur.k == r.n {
                    cur.k = 0;
                    cur.run += 1;
                }
            }
        }
        Ok(done)
    }

    /// Copies the next selected bytes of `count` elements in `buf` into `out`, from
    /// `cur` on; returns how many were written (fewer than `out.len()` only at the end).
    pub fn pack_into(
        &self,
        buf: &[u8],
        count: usize,
        cur: &mut Cursor,
        out: &mut [u8],
    ) -> Result<usize> {
        self.span(count, buf.len())?;
        self.walk(count, cur, out.len(), |at, stride, o, len, n| {
            for k in 0..n {
                let from = (at as isize + k as isize * stride) as usize;
                let to = o + k * len;
                copy_stretch(&mut out[to..to + len], &buf[from..from + len]);
            }
        })
    }

    /// Scatters the bytes of `data` into the selected bytes of `count` elements of
    /// `buf`, from `cur` on; returns how many were consumed.
    pub fn unpack_from(
        &self,
        data: &[u8],
        buf: &mut [u8],
        count: usize,
        cur: &mut Cursor,
    ) -> Result<usize> {
        self.span(count, buf.len())?;
        self.walk(count, cur, data.len(), |at, stride, o, len, n| {
            for k in 0..n {
                let to = (at as isize + k as isize * stride) as usize;
                let from = o + k * len;
                copy_stretch(&mut buf[to..to + len], &data[from..from + len]);
            }
        })
    }

    /// The selected bytes of `count` elements of `buf`, packed into a new vector.
    pub fn pack(&self, buf: &[u8], count: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; count * self.size()];
        let n = self.pack_into(buf, count, &mut Cursor::new(), &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Writes packed `data` into the selected bytes of `count` elements of `buf`.
    pub fn unpack(&self, data: &[u8], buf: &mut [u8], count: usize) -> Result<()> {
        self.unpack_from(data, buf, count, &mut Cursor::new())
            .map(|_| ())
    }
}
