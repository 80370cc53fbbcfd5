//! Thread scheduling: background work (zone file writes) yields the core
//! to the threads that answer and decide.

/// Moves the calling thread to the idle scheduling class (SCHED_IDLE), so
/// that on a busy core it runs when nothing else wants the core, and is
/// preempted at once when something does; it still gets a small share, so
/// it is never starved outright. Best effort: a failure leaves the thread
/// as it was.
pub fn lower_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; with
    // pid 0 the call changes the calling thread only.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_can_step_back() {
        std::thread::spawn(|| {
            super::lower_priority().unwrap();
            // SAFETY: sched_getscheduler has no memory-safety preconditions.
            let policy = unsafe { libc::sched_getscheduler(0) };
            assert_eq!(policy, libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
    }
}
