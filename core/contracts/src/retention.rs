//! Retention: results and job records live for `retention` (24 h by default) and are then
//! deleted. Three guards keep that promise: stores refuse to serve an expired object, a
//! sweeper deletes them (`tagfleet_io::sweep`), and (on S3) a lifecycle rule is the
//! backstop. This is the rule all three apply, to the same objects
//! ([`crate::keys::Area::SWEPT`]: results and job records, not schedules).

use std::time::{Duration, SystemTime};

/// How long results are kept unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Whether an object written at `modified` is past `retention` at `now`. Without a
/// retention nothing expires. A clock that went backwards keeps the object.
pub fn is_expired(modified: SystemTime, retention: Option<Duration>, now: SystemTime) -> bool {
    match (retention, now.duration_since(modified)) {
        (Some(retention), Ok(age)) => age >= retention,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_boundaries() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Some(DEFAULT_RETENTION);
        assert!(!is_expired(
            t0,
            day,
            t0 + Duration::from_secs(24 * 3600 - 1)
        ));
        assert!(is_expired(t0, day, t0 + Duration::from_secs(24 * 3600)));
        assert!(!is_expired(
            t0,
            None,
            t0 + Duration::from_secs(365 * 24 * 3600)
        ));
        assert!(
            !is_expired(t0, day, t0 - Duration::from_secs(5)),
            "clock went backwards"
        );
    }
}
