//! The frame header every stream transport speaks.
//!
//! 40 bytes, little-endian: `kind u8, pad [u8; 3], tag i32, ctx u64, len u64, a u64,
//! b u64`. What `a` and `b` mean depends on the kind (request ids of the rendezvous).

/// Bytes in a frame header.
pub const HDR: usize = 40;

/// Kinds of frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A whole small message follows: `len` payload bytes.
    Eager = 1,
    /// Request to send `len` bytes; `a` = sender's request id. No payload.
    Rts = 2,
    /// Clear to send: `a` = sender's request id, `b` = receiver's request id, or
    /// [`NO_REQ`] when the receiver will not take the data (truncation).
    Cts = 3,
    /// Rendezvous payload for receive request `a`: `len` bytes follow.
    Data = 4,
    /// The peer finalized: nothing more will come on this link.
    Bye = 5,
}

/// "No request": the receiver declines the rendezvous data.
pub const NO_REQ: u64 = u64::MAX;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame kind.
    pub kind: Kind,
    /// Message tag.
    pub tag: i32,
    /// Communicator context.
    pub ctx: u64,
    /// Payload or message length in bytes.
    pub len: u64,
    /// First id field.
    pub a: u64,
    /// Second id field.
    pub b: u64,
}

impl Header {
    /// A header with zero ids.
    pub fn new(kind: Kind, ctx: u64, tag: i32, len: u64) -> Header {
        Header {
            kind,
            tag,
            ctx,
            len,
            a: 0,
            b: 0,
        }
    }

    /// Serializes into 40 bytes.
    pub fn encode(&self) -> [u8; HDR] {
        let mut h = [0u8; HDR];
        h[0] = self.kind as u8;
        h[4..8].copy_from_slice(&self.tag.to_le_bytes());
        h[8..16].copy_from_slice(&self.ctx.to_le_bytes());
        h[16..24].copy_from_slice(&self.len.to_le_bytes());
        h[24..32].copy_from_slice(&self.a.to_le_bytes());
        h[32..40].copy_from_slice(&self.b.to_le_bytes());
        h
    }

    /// Parses 40 bytes; `None` for an unknown kind (a corrupt stream).
    pub fn decode(h: &[u8; HDR]) -> Option<Header> {
        let kind = match h[0] {
            1 => Kind::Eager,
            2 => Kind::Rts,
            3 => Kind::Cts,
            4 => Kind::Data,
            5 => Kind::Bye,
            _ => return None,
        };
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(Header {
            kind,
            tag: i32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            ctx: u64_at(8),
            len: u64_at(16),
            a: u64_at(24),
            b: u64_at(32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut h = Header::new(Kind::Cts, 0xdead_beef_0000_0001, -7, 1 << 40);
        h.a = 3;
        h.b = NO_REQ;
        assert_eq!(Header::decode(&h.encode()), Some(h));
        let mut bad = h.encode();
        bad[0] = 99;
        assert_eq!(Header::decode(&bad), None);
    }
}
