//! Two threads of one rank waiting in the engine at once, over shared memory: one
//! sleeps in `epoll_wait` as the poller, the other on the condition variable. A
//! doorbell that the second thread takes while it glances at the sockets must not
//! leave the poller asleep with no sleep flag raised (then later frames ring no bell,
//! and only the condition variable's 1 s timeout ends each wait). This is what a DSM
//! window does (a service thread beside the main thread), reduced to point-to-point.
//!
//! How the bell got lost: a quick reply is read by the main thread while it spins,
//! and the bell that came with it (for the sleeping thread) is still in the socket;
//! the main thread's next wait glances at the sockets and drains it before the
//! sleeper runs, whose `epoll_wait` then finds nothing and sleeps on, its flag gone.
//!
//! Alone in its file because it sets `DSMPI_SPIN_US=2` for the whole process: waiters
//! then sleep almost at once, which makes the lost bell frequent enough to see. The
//! check is the time bound below. It is 6–8× the 7–10 s the test takes with the fix, and without
//! the fix the test fails it.

use std::sync::mpsc;
use std::time::Duration;

use dsmpi_runtime::{run_local_with, LocalBackend};

const REQ: i32 = 1;
const REPLY: i32 = 2;
const DONE: i32 = 3;
const ROUNDS: u64 = 20000;

#[test]
fn a_taken_doorbell_does_not_leave_the_other_waiter_asleep() {
    // Before any engine exists (the only test of this process).
    std::env::set_var("DSMPI_SPIN_US", "2");
    let (tx, rx) = mpsc::channel();
    let job = std::thread::spawn(move || {
        let r = run_local_with(LocalBackend::Shm, 2, |w| {
            std::thread::scope(|s| {
                if w.rank() == 0 {
                    // A second waiter, blocked until the end (a window's service thread).
                    let idle = s.spawn(|| w.recv_vec::<u8>(1, DONE).map(|(v, _)| v));
                    for i in 0..ROUNDS {
                        w.send(&i.to_le_bytes(), 1, REQ).unwrap();
                        let (v, _) = w.recv_vec::<u8>(1, REPLY).unwrap();
                        assert_eq!(v, (i + 1).to_le_bytes(), "reply {i}");
                    }
                    w.send(&[0u8], 1, DONE).unwrap();
                    assert_eq!(idle.join().unwrap().unwrap(), vec![1u8]);
                } else {
                    // The serving thread answers every request; the main thread waits
                    // for the end meanwhile (as a rank in a collective does).
                    let server = s.spawn(|| {
                        for _ in 0..ROUNDS {
                            let (v, _) = w.recv_vec::<u8>(0, REQ).unwrap();
                            let i = u64::from_le_bytes(v.try_into().unwrap());
                            // Every other reply comes late: rank 0's main thread has
                            // then spun out and waits on the condition variable, behind
                            // its other thread asleep in epoll_wait.
                            if i % 2 == 1 {
                                std::thread::sleep(Duration::from_micros(300));
                            }
                            w.send(&(i + 1).to_le_bytes(), 0, REPLY).unwrap();
                        }
                    });
                    let (v, _) = w.recv_vec::<u8>(0, DONE).unwrap();
                    assert_eq!(v, vec![0u8]);
                    server.join().unwrap();
                    w.send(&[1u8], 0, DONE).unwrap();
                }
            });
        });
        let _ = tx.send(r.map(|_| ()));
    });
    // 20 000 round trips took 6.6–10.2 s on a 2-core VM; with the lost bell, 2 000 took
    // 12–22 s there (each lost bell costs the condition variable's full second).
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("{ROUNDS} round trips did not finish in 60 s: a waiter was left asleep"),
    }
    job.join().unwrap();
}
