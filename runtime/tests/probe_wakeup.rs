//! A thread blocked in `probe` beside another thread of its rank, for a message that
//! the other thread may read: queued as unexpected, it completes no request, yet it
//! must end the probe.
//!
//! - Beside a sleeping thread: the frame wakes one of them, which must hand the news
//!   on to the other.
//! - Beside a spinning thread (a ping-pong keeps it busy): over shared memory the
//!   prober then sleeps in `epoll_wait` with no doorbell armed (the spinner moves
//!   every frame for it), so only the spinner can wake it; a prober left asleep
//!   would keep the ping-pong below going for ever.
//!
//! The check is the time bound (60 s): each case takes about a second at most.

use std::sync::mpsc;
use std::time::Duration;

use dsmpi_runtime::{run_local_with, Communicator, LocalBackend};

const PROBED: i32 = 1;
const ACK: i32 = 2;
const DONE: i32 = 3;
const PING: i32 = 4;
const ROUNDS: u64 = 100;

/// Runs `f` on 2 ranks over `backend`, failing if it takes more than 60 s.
fn bounded(backend: LocalBackend, what: &str, f: fn(&Communicator)) {
    let (tx, rx) = mpsc::channel();
    let job = std::thread::spawn(move || {
        let r = run_local_with(backend, 2, |w| f(&w));
        let _ = tx.send(r.map(|_| ()));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(r) => r.unwrap(),
        Err(_) => {
            panic!("{what} over {backend:?} did not finish in 60 s: a prober was left asleep")
        }
    }
    job.join().unwrap();
}

/// Rank 1's second thread: probes for each message, receives it, acknowledges it.
fn prober(w: &Communicator) {
    for i in 0..ROUNDS {
        let st = w.probe(0, PROBED).unwrap();
        assert_eq!(st.count::<u8>(), 8, "probe {i}");
        let (v, _) = w.recv_vec::<u8>(0, PROBED).unwrap();
        w.send(&v, 0, ACK).unwrap();
    }
}

fn beside_a_sleeper(w: &Communicator) {
    if w.rank() == 0 {
        for i in 0..ROUNDS {
            // Long enough for rank 1's threads to stop spinning and sleep.
            std::thread::sleep(Duration::from_millis(1));
            w.send(&i.to_le_bytes(), 1, PROBED).unwrap();
            let (v, _) = w.recv_vec::<u8>(1, ACK).unwrap();
            assert_eq!(v, i.to_le_bytes(), "ack {i}");
        }
        w.send(&[0u8], 1, DONE).unwrap();
    } else {
        std::thread::scope(|s| {
            let p = s.spawn(|| prober(w));
            let (v, _) = w.recv_vec::<u8>(0, DONE).unwrap();
            assert_eq!(v, vec![0u8]);
            p.join().unwrap();
        });
    }
}

fn beside_a_spinner(w: &Communicator) {
    if w.rank() == 0 {
        let ping = || {
            w.send(&[1u8], 1, PING).unwrap();
            w.recv_vec::<u8>(1, PING).unwrap();
        };
        for i in 0..ROUNDS {
            // Ping-pong for a while first: rank 1's prober stops spinning and sleeps,
            // while its main thread keeps spinning.
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_millis(1) {
                ping();
            }
            w.send(&i.to_le_bytes(), 1, PROBED).unwrap();
            // Ping-pong until the acknowledgement is there.
            loop {
                ping();
                if w.iprobe(1, ACK).unwrap().is_some() {
                    break;
                }
            }
            let (v, _) = w.recv_vec::<u8>(1, ACK).unwrap();
            assert_eq!(v, i.to_le_bytes(), "ack {i}");
        }
        // A ping of 0 ends rank 1's loop.
        w.send(&[0u8], 1, PING).unwrap();
    } else {
        std::thread::scope(|s| {
            let p = s.spawn(|| prober(w));
            loop {
                let (v, _) = w.recv_vec::<u8>(0, PING).unwrap();
                if v == [0u8] {
                    break;
                }
                w.send(&v, 0, PING).unwrap();
            }
            p.join().unwrap();
        });
    }
}

#[test]
fn a_probe_is_woken_beside_a_sleeping_thread() {
    for b in [LocalBackend::Shm, LocalBackend::Sockets] {
        bounded(b, "probes beside a sleeper", beside_a_sleeper);
    }
}

#[test]
fn a_probe_is_woken_beside_a_spinning_thread() {
    for b in [LocalBackend::Shm, LocalBackend::Sockets] {
        bounded(b, "probes beside a spinner", beside_a_spinner);
    }
}
