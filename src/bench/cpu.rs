//! CPU time and memory from getrusage.

fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    }
}

fn seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6
}

/// User+system CPU-seconds of this thread.
pub fn thread_cpu() -> f64 {
    let u = rusage(libc::RUSAGE_THREAD);
    seconds(u.ru_utime) + seconds(u.ru_stime)
}

/// User+system CPU-seconds of the whole process (all of ONNX Runtime's threads).
pub fn process_cpu() -> f64 {
    let u = rusage(libc::RUSAGE_SELF);
    seconds(u.ru_utime) + seconds(u.ru_stime)
}

/// Largest RSS of any waited-for child, in bytes (Linux reports KiB).
pub fn children_peak_rss() -> u64 {
    rusage(libc::RUSAGE_CHILDREN).ru_maxrss as u64 * 1024
}
