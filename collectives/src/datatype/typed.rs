//! Typed transfers: point-to-point and collectives on [`Datatype`]s.
//!
//! Point-to-point protocol (on the user's communicator and tag): a 32-byte header
//! (magic, packed length S, piece size P, signature hash), then ⌈S/P⌉ pieces. A
//! sender whose data is contiguous sends it as one piece straight from its buffer; a
//! non-contiguous sender packs [`CHUNK_BYTES`] at a time into two buffers it takes
//! turns with: while one piece is on the wire (a rendezvous, so straight from the
//! buffer, no second copy), the next is packed. A large strided send therefore costs
//! one packing copy and never allocates a copy of the whole message. The receiver
//! checks the signature hash against its own type's, then receives the pieces straight
//! into place (contiguous receive type, all pieces posted at once) or, two at a time,
//! into piece buffers it unpacks while the next piece arrives.
//!
//! Typed collectives pack each block, append the signature hash of the block, run the
//! byte-level algorithm chosen by the decision function, and check and unpack at the
//! receivers.

use bytemuck::Pod;
use dsmpi_runtime::{Communicator, Tag};

use super::{signature_hash, Cursor, Datatype};
use crate::bcast::{self, Bcast};
use crate::error::{Error, Result};
use crate::util::expect_bytes;
use crate::{alltoall, gather, scatter};

/// Size of the pieces a non-contiguous send is packed into: above the runtime's eager
/// limit (64 KiB), so a piece goes from the packing buffer to the socket without the
/// eager path's copy; two pieces in flight hide the rendezvous round trip.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Pieces of one typed message in flight at once (double buffering).
const PIPELINE_DEPTH: usize = 2;

const MAGIC: u64 = 0x4453_4d50_4954_5950;

/// What a typed receive got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypedStatus {
    /// Sender's rank.
    pub source: usize,
    /// The message's tag.
    pub tag: Tag,
    /// Packed bytes received (the data, without the protocol header).
    pub bytes: usize,
}

/// Typed point-to-point and collectives on a communicator.
///
/// Buffers are slices of any [`Pod`] type viewed as bytes; datatypes give byte
/// displacements into them and must be [committed](Datatype::commit). A message sent
/// with `send_typed` must be received with `recv_typed`.
pub trait TypedCommunication {
    /// Sends `count` elements of `dtype` from `buf` to `dest` (MPI_Send with a derived
    /// type).
    fn send_typed<T: Pod>(
        &self,
        buf: &[T],
        dtype: &Datatype,
        count: usize,
        dest: usize,
        tag: Tag,
    ) -> Result<()>;
    /// Receives up to `count` elements of `dtype` into `buf`; fails with
    /// [`Error::SignatureMismatch`] when the sender's type signature differs (the
    /// message is consumed either way).
    fn recv_typed<T: Pod>(
        &self,
        buf: &mut [T],
        dtype: &Datatype,
        count: usize,
        source: usize,
        tag: Tag,
    ) -> Result<TypedStatus>;
    /// Broadcasts `count` elements of `dtype` in `buf` from `root`.
    fn broadcast_typed<T: Pod>(
        &self,
        root: usize,
        buf: &mut [T],
        dtype: &Datatype,
        count: usize,
    ) -> Result<()>;
    /// Scatter: the root's element block r (`scount` elements of `stype`, starting
    /// `r × scount` extents into `send`) goes to rank r's `recv` as `rcount` × `rtype`.
    #[allow(clippy::too_many_arguments)]
    fn scatter_typed<T: Pod, U: Pod>(
        &self,
        root: usize,
        send: &[T],
        stype: &Datatype,
        scount: usize,
        recv: &mut [U],
        rtype: &Datatype,
        rcount: usize,
    ) -> Result<()>;
    /// Gather: rank r's `scount` × `stype` lands at block r (`r × rcount` extents of
    /// `rtype` into the root's `recv`).
    #[allow(clippy::too_many_arguments)]
    fn gather_typed<T: Pod, U: Pod>(
        &self,
        root: usize,
        send: &[T],
        stype: &Datatype,
        scount: usize,
        recv: &mut [U],
        rtype: &Datatype,
        rcount: usize,
    ) -> Result<()>;
    /// All-to-all: block j of `send` (`scount` × `stype` at `j × scount` extents) goes
    /// to rank j, landing at block i of its `recv` (`rcount` × `rtype`).
    #[allow(clippy::too_many_arguments)]
    fn all_to_all_typed<T: Pod, U: Pod>(
        &self,
        send: &[T],
        stype: &Datatype,
        scount: usize,
        recv: &mut [U],
        rtype: &Datatype,
        rcount: usize,
    ) -> Result<()>;
}

/// Hash of the whole signature of `count` × `t`.
fn full_hash(t: &Datatype, count: usize) -> Result<u64> {
    signature_hash(t, count, count * t.size())?
        .ok_or_else(|| Error::InvalidDatatype("inconsistent type signature".into()))
}

/// Packs blocks `0..nblocks` (block b = `count` elements starting `b × count` extents
/// into `buf`), each followed by the 8-byte signature hash.
fn pack_blocks(t: &Datatype, buf: &[u8], count: usize, nblocks: usize) -> Result<Vec<u8>> {
    let hash = full_hash(t, count)?.to_le_bytes();
    let blk = count * t.size();
    let stride = block_stride(t, count)?;
    let mut out = vec![0u8; nblocks * (blk + 8)];
    for (b, piece) in out.chunks_mut(blk + 8).enumerate() {
        let part = buf.get(b * stride..).unwrap_or(&[]);
        t.pack_into(part, count, &mut Cursor::new(), &mut piece[..blk])?;
        piece[blk..].copy_from_slice(&hash);
    }
    Ok(out)
}

/// Checks each block's trailing hash against `t`'s, then unpacks it into `buf`.
fn unpack_blocks(t: &Datatype, data: &[u8], buf: &mut [u8], count: usize, op: &str) -> Result<()> {
    let want = full_hash(t, count)?;
    let blk = count * t.size();
    let stride = block_stride(t, count)?;
    for (b, piece) in data.chunks(blk + 8).enumerate() {
        let mut h = [0u8; 8];
        h.copy_from_slice(&piece[blk..]);
        if u64::from_le_bytes(h) != want {
            return Err(Error::SignatureMismatch(format!(
                "{op}: block {b} was sent with a type signature that differs from the receive type's"
            )));
        }
        let len = buf.len();
        let part = buf.get_mut(b * stride..).ok_or_else(|| {
            Error::InvalidDatatype(format!("{op}: block {b} starts past a {len}-byte buffer"))
        })?;
        t.unpack(&piece[..blk], part, count)?;
    }
    Ok(())
}

/// Bytes between consecutive blocks of `count` elements.
fn block_stride(t: &Datatype, count: usize) -> Result<usize> {
    usize::try_from(t.extent() * count as isize).map_err(|_| {
        Error::InvalidDatatype("negative extents are not supported in collectives".into())
    })
}

impl TypedCommunication for Communicator {
    fn send_typed<T: Pod>(
        &self,
        buf: &[T],
        dtype: &Datatype,
        count: usize,
        dest: usize,
        tag: Tag,
    ) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(buf);
        let span = dtype.span(count, bytes.len())?;
        let total = count * dtype.size();
        let contiguous = dtype.is_contiguous(count);
        let piece = if contiguous {
            total.max(1)
        } else {
            CHUNK_BYTES
        };
        let header = [MAGIC, total as u64, piece as u64, full_hash(dtype, count)?];
        self.send(&header, dest, tag)?;
        if total == 0 {
            return Ok(());
        }
        if contiguous {
            return Ok(self.send(&bytes[span], dest, tag)?);
        }
        let mut spare: Vec<Vec<u8>> = (0..PIPELINE_DEPTH)
            .map(|_| vec![0u8; piece.min(total)])
            .collect();
        let mut inflight = std::collections::VecDeque::with_capacity(PIPELINE_DEPTH);
        let mut cur = Cursor::new();
        loop {
            let mut out = match spare.pop() {
                Some(b) => b,
                None => match inflight.pop_front() {
                    Some(r) => dsmpi_runtime::OwnedRequest::wait(r)?.0,
                    None => break,
                },
            };
            let n = dtype.pack_into(bytes, count, &mut cur, &mut out)?;
            if n == 0 {
                break;
            }
            // Only the last piece is short.
            out.truncate(n);
            inflight.push_back(self.isend_owned(out, dest, tag)?);
        }
        for r in inflight {
            r.wait()?;
        }
        Ok(())
    }

    fn recv_typed<T: Pod>(
        &self,
        buf: &mut [T],
        dtype: &Datatype,
        count: usize,
        source: usize,
        tag: Tag,
    ) -> Result<TypedStatus> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let span = dtype.span(count, bytes.len())?;
        let mut header = [0u64; 4];
        let st = self.recv_into(&mut header, source, tag)?;
        if st.bytes() != 32 || header[0] != MAGIC {
            return Err(Error::InvalidArgument(format!(
                "recv_typed from rank {} matched a message that was not sent with send_typed",
                st.source()
            )));
        }
        let (src, tag) = (st.source(), st.tag());
        let total = header[1] as usize;
        let piece = (header[2] as usize).max(1);
        let pieces = total.div_ceil(piece);
        let capacity = count * dtype.size();
        let problem = if total > capacity {
            Some(Error::Runtime(dsmpi_runtime::Error::Truncated {
                sender: src,
                tag,
                len: total,
                capacity,
            }))
        } else if signature_hash(dtype, count, total)? != Some(header[3]) {
            Some(Error::SignatureMismatch(format!(
                "{total} bytes from rank {src} (tag {tag}) were sent with a type signature that does not match the receive type"
            )))
        } else {
            None
        };
        if let Some(e) = problem {
            // Take the pieces off the wire so the next receive matches the next message.
            for _ in 0..pieces {
                self.recv_vec::<u8>(src, tag)?;
            }
            return Err(e);
        }
        let status = TypedStatus {
            source: src,
            tag,
            bytes: total,
        };
        if total == 0 {
            return Ok(status);
        }
        if dtype.is_contiguous(count) {
            // Post every piece at once, so each rendezvous is answered on arrival.
            let dst = &mut bytes[span.start..span.start + total];
            dsmpi_runtime::scope(|sc| -> Result<()> {
                let mut reqs = Vec::with_capacity(pieces);
                let mut sizes = Vec::with_capacity(pieces);
                for p in dst.chunks_mut(piece) {
                    sizes.push(p.len());
                    reqs.push(self.irecv_into(sc, p, src, tag)?);
                }
                for (st, want) in dsmpi_runtime::wait_all(reqs)?.iter().zip(sizes) {
                    expect_bytes("recv_typed", st.bytes(), want, src)?;
                }
                Ok(())
            })?;
            return Ok(status);
        }
        // Two pieces in flight: unpack one while the next arrives.
        let mut cur = Cursor::new();
        let mut posted = std::collections::VecDeque::with_capacity(PIPELINE_DEPTH);
        let mut next_piece = 0;
        let piece_len = |i: usize| piece.min(total - i * piece);
        while next_piece < pieces && posted.len() < PIPELINE_DEPTH {
            let buf = vec![0u8; piece_len(next_piece)];
            posted.push_back((next_piece, self.irecv_owned(buf, src, tag)?));
            next_piece += 1;
        }
        while let Some((i, req)) = posted.pop_front() {
            let (mut buf, st) = req.wait()?;
            expect_bytes("recv_typed", st.bytes(), piece_len(i), src)?;
            dtype.unpack_from(&buf, bytes, count, &mut cur)?;
            if next_piece < pieces {
                buf.truncate(piece_len(next_piece));
                posted.push_back((next_piece, self.irecv_owned(buf, src, tag)?));
                next_piece += 1;
            }
        }
        Ok(status)
    }

    fn broadcast_typed<T: Pod>(
        &self,
        root: usize,
        buf: &mut [T],
        dtype: &Datatype,
        count: usize,
    ) -> Result<()> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let mut packed = if self.rank() == root {
            pack_blocks(dtype, bytes, count, 1)?
        } else {
            vec![0u8; count * dtype.size() + 8]
        };
        let alg = Bcast::choose(packed.len(), self.size());
        bcast::run(&self.library(), alg, root, &mut packed)?;
        if self.rank() != root {
            unpack_blocks(dtype, &packed, bytes, count, "broadcast")?;
        }
        Ok(())
    }

    fn scatter_typed<T: Pod, U: Pod>(
        &self,
        root: usize,
        send: &[T],
        stype: &Datatype,
        scount: usize,
        recv: &mut [U],
        rtype: &Datatype,
        rcount: usize,
    ) -> Result<()> {
        let n = self.size();
        let packed = if self.rank() == root {
            pack_blocks(stype, bytemuck::cast_slice(send), scount, n)?
        } else {
            Vec::new()
        };
        let mut mine = vec![0u8; rcount * rtype.size() + 8];
        let alg = scatter::Scatter::choose(mine.len(), n);
        scatter::run(&self.library(), alg, root, &packed, &mut mine)?;
        unpack_blocks(
            rtype,
            &mine,
            bytemuck::cast_slice_mut(recv),
            rcount,
            "scatter",
        )
    }

    fn gather_typed<T: Pod, U: Pod>(
        &self,
        root: usize,
        send: &[T],
        stype: &Datatype,
        scount: usize,
        recv: &mut [U],
        rtype: &Datatype,
        rcount: usize,
    ) -> Result<()> {
        let n = self.size();
        let mine = pack_blocks(stype, bytemuck::cast_slice(send), scount, 1)?;
        let mut all = if self.rank() == root {
            vec![0u8; n * (rcount * rtype.size() + 8)]
        } else {
            Vec::new()
        };
        let alg = gather::Gather::choose(mine.len(), n);
        gather::run(&self.library(), alg, root, &mine, &mut all)?;
        if self.rank() == root {
            unpack_blocks(
                rtype,
                &all,
                bytemuck::cast_slice_mut(recv),
                rcount,
                "gather",
            )?;
        }
        Ok(())
    }

    fn all_to_all_typed<T: Pod, U: Pod>(
        &self,
        send: &[T],
        stype: &Datatype,
        scount: usize,
        recv: &mut [U],
        rtype: &Datatype,
        rcount: usize,
    ) -> Result<()> {
        let n = self.size();
        let packed = pack_blocks(stype, bytemuck::cast_slice(send), scount, n)?;
        let mut got = vec![0u8; n * (rcount * rtype.size() + 8)];
        let alg = alltoall::Alltoall::choose(got.len() / n, n);
        alltoall::run(&self.library(), alg, &packed, &mut got)?;
        unpack_blocks(
            rtype,
            &got,
            bytemuck::cast_slice_mut(recv),
            rcount,
            "alltoall",
        )
    }
}
