//! `--ship`: running a program on a host that does not have it.
//!
//! dsmexec sends the program's bytes over the daemon link; the daemon keeps them in a
//! private cache directory, `$TMPDIR/dsmpi-ship-UID` (mode 0700, owned by the user,
//! checked with `lstat` so a symlink or another user's directory is refused), under
//! the name of their SHA-256. A file there is only ever created with `O_EXCL |
//! O_NOFOLLOW` under a temporary name, checked against the hash, then renamed into
//! place, so no other user can swap it and no half-written file is ever executed.
//!
//! Each job runs its own hard link (`HASH.PID`) to the cached file, so it can be
//! removed at the end without pulling the file from under a concurrent job; the
//! shared `HASH` entry goes when no other job holds a link to it (link count).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// SHA-256 of `data`, as 64 lowercase hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finish().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's contents, read in pieces.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish().iter().map(|b| format!("{b:02x}")).collect())
}

/// A small SHA-256 (FIPS 180-4): the launcher needs a collision-resistant name for
/// content it executes, and one hash does not justify a dependency.
struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    used: usize,
    len: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Sha256 {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            used: 0,
            len: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let n = (64 - self.used).min(data.len());
            self.block[self.used..self.used + n].copy_from_slice(&data[..n]);
            self.used += n;
            data = &data[n..];
            if self.used == 64 {
                self.compress();
                self.used = 0;
            }
        }
    }

    fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        self.update(&[0x80]);
        while self.used != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }

    fn compress(&mut self) {
        let mut w = [0u32; 64];
        for (i, c) in self.block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// The per-user cache directory, created 0700 if missing; refused if it is a
/// symlink, not a directory, not ours, or open to others.
pub fn cache_dir() -> io::Result<PathBuf> {
    let uid = nix::unistd::geteuid().as_raw();
    let dir = std::env::temp_dir().join(format!("dsmpi-ship-{uid}"));
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(&dir)?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("not a directory");
    }
    if meta.uid() != uid {
        return refuse("owned by another user");
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return refuse("accessible to other users");
    }
    Ok(dir)
}

/// A shipped program in use by this job; removed (its link, and the cache entry if
/// no other job uses it) on drop.
#[derive(Debug)]
pub struct Shipped {
    /// The path to execute (this job's own link).
    pub path: PathBuf,
    cached: PathBuf,
}

impl Drop for Shipped {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        // Link count 1: only the cache entry itself is left, no job runs it.
        if fs::symlink_metadata(&self.cached).is_ok_and(|m| m.nlink() == 1) {
            let _ = fs::remove_file(&self.cached);
        }
    }
}

/// The cached program for `hash`, if present, ours and intact: linked for this job.
pub fn lookup(dir: &Path, hash: &str) -> io::Result<Option<Shipped>> {
    check_hash_name(hash)?;
    let cached = dir.join(hash);
    match fs::symlink_metadata(&cached) {
        Ok(m) if m.file_type().is_file() && m.uid() == nix::unistd::geteuid().as_raw() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: not a regular file of ours", cached.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let mine = dir.join(format!("{hash}.{}", std::process::id()));
    let _ = fs::remove_file(&mine);
    match fs::hard_link(&cached, &mine) {
        Ok(()) => {}
        // Removed by a job ending right now: ship it again.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let shipped = Shipped { path: mine, cached };
    // Verify what will run, through our own link, which nobody else can replace.
    if sha256_file(&shipped.path)? != hash {
        return Ok(None);
    }
    Ok(Some(shipped))
}

/// Stores `bytes` as the cached program `hash` and links it for this job.
pub fn store(dir: &Path, hash: &str, bytes: &[u8]) -> io::Result<Shipped> {
    check_hash_name(hash)?;
    if sha256_hex(bytes) != hash {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the shipped program does not match its hash",
        ));
    }
    let tmp = dir.join(format!("{hash}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let cached = dir.join(hash);
    // rename replaces an entry left by a crashed job; content is the same by name.
    if let Err(e) = fs::rename(&tmp, &cached) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let mine = dir.join(format!("{hash}.{}", std::process::id()));
    let _ = fs::remove_file(&mine);
    fs::hard_link(&cached, &mine)?;
    Ok(Shipped { path: mine, cached })
}

/// A hash used as a file name must be exactly 64 hex digits: nothing like `../x`.
fn check_hash_name(hash: &str) -> io::Result<()> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad program hash",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            sha256_hex(&vec![b'a'; 1_000_000]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn store_lookup_and_cleanup() {
        let dir = std::env::temp_dir().join(format!("dsmpi-ship-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let bytes = b"#!/bin/sh\necho shipped\n";
        let hash = sha256_hex(bytes);
        assert!(lookup(&dir, &hash).expect("lookup").is_none());
        assert!(store(&dir, &sha256_hex(b"other"), bytes).is_err());
        let first = store(&dir, &hash, bytes).expect("store");
        let mode = fs::metadata(&first.path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(first);
        assert!(!dir.join(&hash).exists(), "removed when no job uses it");
        let kept = store(&dir, &hash, bytes).expect("store");
        // Another job finds the cached copy intact and runs it without a new transfer.
        let again = lookup(&dir, &hash).expect("lookup").expect("cached");
        assert_eq!(fs::read(&again.path).expect("read"), bytes);
        drop(again);
        drop(kept);
        assert!(!dir.join(&hash).exists());
        // A cached file whose bytes changed is not trusted.
        fs::write(dir.join(&hash), b"tampered").expect("write");
        assert!(lookup(&dir, &hash).expect("lookup").is_none());
        assert!(lookup(&dir, "../../etc/passwd").is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
