//! Packing and unpacking: moving the selected bytes of `count` elements of a datatype
//! between a user buffer and a contiguous stream, a bounded piece at a time.

use super::Datatype;
use crate::error::Result;

/// A position in the packed stream of `count` elements (element, segment, byte within
/// the segment), so packing can stop at a piece boundary and resume there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    elem: usize,
    seg: usize,
    off: usize,
}

impl Cursor {
    /// The start of the stream.
    pub fn new() -> Cursor {
        Cursor::default()
    }
}

impl Datatype {
    /// Walks the stream from `cur`, calling `f(buffer offset, stream offset, len)` for
    /// each stretch, until `limit` bytes are covered or the data ends; returns the
    /// bytes covered.
    fn walk(
        &self,
        count: usize,
        cur: &mut Cursor,
        limit: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) -> Result<usize> {
        let c = self.committed()?;
        let ext = self.extent();
        let mut done = 0;
        while done < limit && cur.elem < count {
            let Some(&(disp, len)) = c.segs.get(cur.seg) else {
                cur.elem += 1;
                cur.seg = 0;
                continue;
            };
            let take = (len - cur.off).min(limit - done);
            // In range: `span` checked every element's bytes against the buffer.
            let at = (cur.elem as isize * ext + disp) as usize + cur.off;
            f(at, done, take);
            done += take;
            cur.off += take;
            if cur.off == len {
                cur.off = 0;
                cur.seg += 1;
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
        self.walk(count, cur, out.len(), |at, o, n| {
            out[o..o + n].copy_from_slice(&buf[at..at + n])
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
        self.walk(count, cur, data.len(), |at, o, n| {
            buf[at..at + n].copy_from_slice(&data[o..o + n])
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
