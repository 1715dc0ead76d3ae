//! Thread priorities: pag0's background threads (the stock refill thread of the signing
//! pool, the state runtime and the database workers it starts) give way to Pingora's worker
//! threads when the CPU is contended, so proxying comes first. Their work does not hold up a
//! request: refills only stock signatures ahead (a call finding the stock empty is signed on a
//! normal-priority pool thread), journal rows are group-committed after the response. With idle
//! cores the priority changes nothing.

/// Nice value of background threads (Linux: a per-thread setting; higher is lower priority).
/// Moderate on purpose: under full load they still get about a quarter of a contended core.
pub const BACKGROUND_NICE: i32 = 5;

/// Lowers the calling thread to [`BACKGROUND_NICE`]. Best effort: lowering one's own priority
/// needs no privilege, and where it is not supported nothing happens.
pub fn background_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's id, no memory is passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::getpriority(libc::PRIO_PROCESS, tid) < BACKGROUND_NICE {
            libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_background_thread_runs_at_the_background_nice_value() {
        let nice = std::thread::spawn(|| {
            super::background_thread();
            // SAFETY: as above.
            unsafe {
                libc::getpriority(
                    libc::PRIO_PROCESS,
                    libc::syscall(libc::SYS_gettid) as libc::id_t,
                )
            }
        })
        .join()
        .unwrap();
        // At least that low (a runner started under `nice` is lower already and stays so).
        assert!(nice >= super::BACKGROUND_NICE, "nice {nice}");
    }
}
