//! Test support: `tp_fail RANK HOW` — every rank prints `PID <rank> <pid>`, then
//! rank RANK fails (HOW = `panic`, `exit3`, `segv`, or `vanish`: it closes every
//! socket it holds and stays alive) while every other rank blocks in a receive from
//! it that will never be satisfied.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let args: Vec<String> = std::env::args().collect();
    let victim: usize = args.get(1).ok_or("usage: tp_fail RANK HOW")?.parse()?;
    let how = args.get(2).map(String::as_str).unwrap_or("panic");
    println!("PID {} {}", world.rank(), std::process::id());
    if world.rank() == victim {
        // Give the others time to block in their receive.
        std::thread::sleep(std::time::Duration::from_millis(200));
        match how {
            "exit3" => std::process::exit(3),
            // A real invalid write, as a buggy program makes. (raise(SIGSEGV) would
            // not do: std's stack-overflow handler catches it and simply returns.)
            // SAFETY: deliberately unsound; the process dies on this write.
            "segv" => unsafe {
                std::ptr::null_mut::<u64>().write_volatile(1);
            },
            "vanish" => {
                // Links gone without a goodbye, the process still there (a hung rank
                // whose connections were cut): the launcher must stop it.
                for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
                    let is_socket = std::fs::read_link(entry.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
                    let fd = entry.file_name().to_string_lossy().parse::<i32>();
                    if let (true, Ok(fd)) = (is_socket, fd) {
                        // SAFETY: closing a descriptor; nothing in this thread uses it
                        // again (the rank only sleeps from here on).
                        unsafe { libc::close(fd) };
                    }
                }
                std::thread::sleep(std::time::Duration::from_secs(60));
                return Err("the launcher did not stop a vanished rank".into());
            }
            _ => panic!("rank {victim} fails on purpose"),
        }
    }
    let mut x = [0u8];
    world.recv_into(&mut x, victim, 0)?;
    Err("received a message that was never sent".into())
}
