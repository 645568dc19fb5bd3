//! The window's wire protocol on its private communicator.
//!
//! Every request to a rank's service thread is one message with tag [`TAG_REQ`]: a
//! 48-byte header of six little-endian `u64` words — kind, reply tag, offset, length,
//! code, extra — followed by a payload. Requests from one origin are served in the
//! order sent (MPI's non-overtaking rule on one tag), which is what makes `flush` and
//! `unlock` a single acknowledged message: when the target answers them, everything
//! the origin sent before has been applied. Replies go to a tag chosen per call
//! (so that several threads of a rank may wait at once) and start with a status byte
//! (0 = ok, then data; 1 = error, then a UTF-8 reason).
//!
//! Small requests that need no answer (put, accumulate) are aggregated per target
//! into one [`Kind::Batch`] message of at most [`BATCH_MAX`] bytes, shipped before any
//! other request to that target (so order is kept) or when full.

use crate::error::{Result, WinError};

/// Requests to a service thread.
pub(crate) const TAG_REQ: i32 = 1;
/// Allocation handshake (region sizes).
pub(crate) const TAG_SETUP: i32 = 2;
/// PSCW: a target's `post` to an origin.
pub(crate) const TAG_POST: i32 = 3;
/// PSCW: an origin's `complete` to a target.
pub(crate) const TAG_COMPLETE: i32 = 4;
/// Fence: a page's bytes, from its old owner to its new one.
pub(crate) const TAG_MIGRATE: i32 = 5;
/// Dissemination barrier (an all-gather of page reports at fences), round `k` uses
/// `TAG_BARRIER + k`.
pub(crate) const TAG_BARRIER: i32 = 16;
/// First reply tag.
pub(crate) const TAG_REPLY0: i32 = 1024;

pub(crate) const HDR: usize = 48;

/// Largest aggregated message (below the runtime's 64 KiB eager limit, so shipping a
/// batch never waits for the target).
pub(crate) const BATCH_MAX: usize = 32 * 1024;

/// Request kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Kind {
    /// Write payload at region offset. Data requests (put, get, accumulates,
    /// compare-and-swap) carry the rank whose region they address in `extra`: the
    /// target is the owner of the pages, not necessarily their home.
    Put = 1,
    /// Read `len` bytes at region offset.
    Get,
    /// Combine payload into region (code = op | elem << 8).
    Acc,
    /// Combine and return the old contents.
    GetAcc,
    /// payload = compare ++ new.
    Cas,
    /// Acknowledge once everything sent before is applied.
    Flush,
    /// Passive-target lock (extra: 1 = exclusive).
    Lock,
    /// Passive-target unlock.
    Unlock,
    /// Byte-range lock of the segment (extra: 1 = write), served by rank 0.
    RangeLock,
    /// Byte-range unlock.
    RangeUnlock,
    /// Apply diff runs (segment offsets) to pages owned by the target.
    Diff,
    /// Send one page the target owns (segment offset).
    GetPage,
    /// Stop the service thread (only from the same rank).
    Stop,
    /// Several fire-and-forget requests in one message: each is a little-endian u64
    /// length then a whole request (header and payload).
    Batch,
    /// Vectored put (derived datatypes): payload = piece list (see
    /// [`decode_list`]) then the pieces' bytes in list order; `len` = their total.
    PutV,
    /// Vectored get: payload = piece list; the reply is the pieces' bytes in order.
    GetV,
    /// Vectored accumulate (code as [`Kind::Acc`]): piece list then data.
    AccV,
    /// Vectored get-accumulate: piece list then data; replies the old bytes.
    GetAccV,
}

impl Kind {
    fn from_u64(v: u64) -> Option<Kind> {
        use Kind::*;
        [
            Put,
            Get,
            Acc,
            GetAcc,
            Cas,
            Flush,
            Lock,
            Unlock,
            RangeLock,
            RangeUnlock,
            Diff,
            GetPage,
            Stop,
            Batch,
            PutV,
            GetV,
            AccV,
            GetAccV,
        ]
        .get((v as usize).wrapping_sub(1))
        .copied()
    }
}

/// A request header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub kind: Kind,
    pub reply: i32,
    pub off: u64,
    pub len: u64,
    pub code: u64,
    pub extra: u64,
}

impl Header {
    pub(crate) fn new(kind: Kind, off: usize, len: usize) -> Header {
        Header {
            kind,
            reply: 0,
            off: off as u64,
            len: len as u64,
            code: 0,
            extra: 0,
        }
    }

    /// The whole message: header then payload.
    pub(crate) fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HDR + payload.len());
        for w in [
            self.kind as u64,
            self.reply as u64,
            self.off,
            self.len,
            self.code,
            self.extra,
        ] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    /// Splits a message into header and payload.
    pub(crate) fn decode(msg: &[u8]) -> Result<(Header, &[u8])> {
        if msg.len() < HDR {
            return Err(WinError::Protocol(format!(
                "a {}-byte request is shorter than its header",
                msg.len()
            )));
        }
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&msg[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let kind = Kind::from_u64(w(0))
            .ok_or_else(|| WinError::Protocol(format!("unknown request kind {}", w(0))))?;
        let reply = i32::try_from(w(1))
            .map_err(|_| WinError::Protocol(format!("reply tag {} out of range", w(1))))?;
        Ok((
            Header {
                kind,
                reply,
                off: w(2),
                len: w(3),
                code: w(4),
                extra: w(5),
            },
            &msg[HDR..],
        ))
    }
}

/// A successful reply carrying `data`.
pub(crate) fn ok_reply(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + data.len());
    v.push(0);
    v.extend_from_slice(data);
    v
}

/// A failed reply with a reason.
pub(crate) fn err_reply(reason: &str) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(reason.as_bytes());
    v
}

/// Checks a reply's status byte; returns the data part.
pub(crate) fn parse_reply(rank: usize, v: &[u8]) -> Result<&[u8]> {
    match v.split_first() {
        Some((0, data)) => Ok(data),
        Some((_, reason)) => Err(WinError::Remote {
            rank,
            reason: String::from_utf8_lossy(reason).into_owned(),
        }),
        None => Err(WinError::Protocol(format!("empty reply from rank {rank}"))),
    }
}

/// Reads little-endian u64 at `at` of `b`, if there.
pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// (region offset, length) pairs of a vectored request.
pub(crate) type PieceList = Vec<(usize, usize)>;

/// Splits a vectored request's payload into its piece list — a little-endian u64
/// count, then that many (region offset, length) u64 pairs — and the data after it.
pub(crate) fn decode_list(b: &[u8]) -> Result<(PieceList, &[u8])> {
    let bad = || WinError::Protocol("malformed piece list".into());
    let n = usize::try_from(u64_at(b, 0).ok_or_else(bad)?).map_err(|_| bad())?;
    let end = n
        .checked_mul(16)
        .and_then(|x| x.checked_add(8))
        .filter(|&e| e <= b.len())
        .ok_or_else(bad)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = 8 + 16 * i;
        let o = u64_at(b, at).ok_or_else(bad)?;
        let l = u64_at(b, at + 8).ok_or_else(bad)?;
        out.push((
            usize::try_from(o).map_err(|_| bad())?,
            usize::try_from(l).map_err(|_| bad())?,
        ));
    }
    Ok((out, &b[end..]))
}
