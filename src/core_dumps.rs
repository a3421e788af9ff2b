//! No core dumps from the services: a worker holds image bytes in memory and a scheduler
//! holds refs and tenant keys, and a core file would write them to disk, where no
//! retention rule reaches.

/// Sets the core file size limit to 0 (soft and hard, so the process cannot raise it
/// again) and marks the process not dumpable, which also keeps other processes of the
/// same user, unless privileged, from reading its memory through /proc or ptrace. A
/// failure is logged in one line and is not fatal.
pub fn disable() {
    let mut failed = Vec::new();
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads the struct passed to it.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        failed.push(format!(
            "RLIMIT_CORE 0: {}",
            std::io::Error::last_os_error()
        ));
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_DUMPABLE takes integers only and changes no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        failed.push(format!(
            "PR_SET_DUMPABLE 0: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !failed.is_empty() {
        tracing::warn!(
            "core dumps could not be turned off ({}): a crash may write memory to disk",
            failed.join("; ")
        );
    }
}
