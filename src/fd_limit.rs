//! The process's file descriptor limit, raised to fit the API's connection cap: each
//! connection holds one, and running out stops every connection (and the store's and the
//! queue's) from opening, not only the attacker's.

use anyhow::bail;

/// Descriptors kept apart from API connections: the operations port's (64), the store's
/// and the queue's connections, the secrets file, the runtime's own.
const RESERVED: u64 = 256;

/// Raises the soft limit on open files, up to the hard limit, so `connections` API
/// connections fit beside the rest; fails when the hard limit is too low.
pub fn fit(connections: u64) -> anyhow::Result<()> {
    let needed = (connections + RESERVED) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!(
            "reading the open-files limit: {}",
            std::io::Error::last_os_error()
        );
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max < needed {
        bail!(
            "{connections} connections need {needed} file descriptors, but the open-files \
             limit is {}: lower --max-connections or raise the limit",
            limit.rlim_max
        );
    }
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        bail!(
            "raising the open-files limit to {needed}: {}",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!(
        from = limit.rlim_cur,
        to = needed,
        "open-files limit raised to fit the connection cap"
    );
    Ok(())
}
