//! Thread scheduling: background work (zone file writes) yields the core
//! to the threads that answer and decide.

/// Lowers the calling thread's scheduling priority (nice 10), so that on a
/// busy core it runs only when the others wait. Best effort: a failure
/// leaves the priority as it was.
pub fn lower_priority() -> std::io::Result<()> {
    // SAFETY: setpriority has no memory-safety preconditions; with
    // PRIO_PROCESS and who = 0 it changes the calling thread on Linux.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_can_step_back() {
        std::thread::spawn(|| {
            super::lower_priority().unwrap();
            // SAFETY: getpriority has no memory-safety preconditions.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            assert!(nice >= 10, "nice {nice}");
        })
        .join()
        .unwrap();
    }
}
