//! Object keys: the one place that builds and parses them, so writers, readers, the
//! sweeper and erasure cannot drift apart. Keys hold tenant, job, task and schedule ids
//! only: never a ref, file name or URL.
//!
//! ```text
//! results/<tenant>/<job>/<task>.jsonl    one task's result lines
//! jobs/<tenant>/<job>.json               a job record (or its erasure tombstone)
//! jobs/<tenant>/<job>/state.json         the job's state, all a worker reads of a job
//! jobs/<tenant>/<job>/source.json        a job's source when it lists refs (for retries)
//! schedules/<tenant>/<schedule>.json     a cron schedule
//! ```

use std::fmt;

/// The top-level areas of the store, each holding one kind of object per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    Results,
    Jobs,
    Schedules,
}

impl Area {
    pub const ALL: [Area; 3] = [Area::Results, Area::Jobs, Area::Schedules];

    /// What the retention applies to: everything derived from users' images. The sweeper
    /// deletes it, the lifecycle rule expires it and stores refuse to serve it once it is
    /// past the retention. Schedules are not in it: they live until deleted (or until
    /// their own, longer retention), so a weekly schedule must still read back after a day.
    pub const SWEPT: [Area; 2] = [Area::Results, Area::Jobs];

    /// The area a store key lies in, if any.
    pub fn of(key: &str) -> Option<Area> {
        Area::ALL.into_iter().find(|a| key.starts_with(a.prefix()))
    }

    /// Whether the retention applies to the object at `key` (see [`Area::SWEPT`]).
    pub fn is_swept(key: &str) -> bool {
        Area::of(key).is_some_and(|a| Area::SWEPT.contains(&a))
    }

    /// The area's prefix, `results/`.
    pub fn prefix(self) -> &'static str {
        match self {
            Area::Results => "results/",
            Area::Jobs => "jobs/",
            Area::Schedules => "schedules/",
        }
    }

    /// Everything of one tenant in this area, `results/<tenant>/`.
    pub fn of_tenant(self, tenant: &str) -> String {
        format!("{}{tenant}/", self.prefix())
    }

    fn suffix(self) -> &'static str {
        match self {
            Area::Results => ".jsonl",
            Area::Jobs | Area::Schedules => ".json",
        }
    }
}

/// The key of one object the fleet writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// The result object of one task message. Deterministic, so a redelivered message
    /// overwrites its own earlier result instead of adding a second one.
    Result {
        tenant: String,
        job: String,
        task: String,
    },
    /// A job record.
    Job { tenant: String, job: String },
    /// A job's state object: small, so workers can read it often (a record is bigger).
    /// Under the job's own folder, so sweeping and erasing the tenant's job records take
    /// it too.
    JobState { tenant: String, job: String },
    /// A job's source when it lists refs (an inline manifest, URLs): kept apart from the
    /// record so the scheduler holds only small records in memory, and read back only for
    /// a retry. Under the job's own folder, so it is swept and erased with the job.
    JobSource { tenant: String, job: String },
    /// A cron schedule.
    Schedule { tenant: String, schedule: String },
}

impl Key {
    pub fn result(tenant: &str, job: &str, task: &str) -> Self {
        Key::Result {
            tenant: tenant.to_owned(),
            job: job.to_owned(),
            task: task.to_owned(),
        }
    }

    pub fn job(tenant: &str, job: &str) -> Self {
        Key::Job {
            tenant: tenant.to_owned(),
            job: job.to_owned(),
        }
    }

    pub fn job_state(tenant: &str, job: &str) -> Self {
        Key::JobState {
            tenant: tenant.to_owned(),
            job: job.to_owned(),
        }
    }

    pub fn job_source(tenant: &str, job: &str) -> Self {
        Key::JobSource {
            tenant: tenant.to_owned(),
            job: job.to_owned(),
        }
    }

    pub fn schedule(tenant: &str, schedule: &str) -> Self {
        Key::Schedule {
            tenant: tenant.to_owned(),
            schedule: schedule.to_owned(),
        }
    }

    /// Reads a store key back; `None` for anything that is not one of ours or whose ids
    /// are not valid ids.
    pub fn parse(key: &str) -> Option<Self> {
        let area = Area::of(key)?;
        let rest = key[area.prefix().len()..].strip_suffix(area.suffix())?;
        let parts: Vec<&str> = rest.split('/').collect();
        if !parts.iter().all(|p| is_valid_id(p)) {
            return None;
        }
        match (area, parts.as_slice()) {
            (Area::Results, [tenant, job, task]) => Some(Key::result(tenant, job, task)),
            (Area::Jobs, [tenant, job]) => Some(Key::job(tenant, job)),
            (Area::Jobs, [tenant, job, STATE]) => Some(Key::job_state(tenant, job)),
            (Area::Jobs, [tenant, job, SOURCE]) => Some(Key::job_source(tenant, job)),
            (Area::Schedules, [tenant, schedule]) => Some(Key::schedule(tenant, schedule)),
            _ => None,
        }
    }

    pub fn area(&self) -> Area {
        match self {
            Key::Result { .. } => Area::Results,
            Key::Job { .. } | Key::JobState { .. } | Key::JobSource { .. } => Area::Jobs,
            Key::Schedule { .. } => Area::Schedules,
        }
    }

    pub fn tenant(&self) -> &str {
        match self {
            Key::Result { tenant, .. }
            | Key::Job { tenant, .. }
            | Key::JobState { tenant, .. }
            | Key::JobSource { tenant, .. }
            | Key::Schedule { tenant, .. } => tenant,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self.area().prefix();
        let suffix = self.area().suffix();
        match self {
            Key::Result { tenant, job, task } => write!(f, "{prefix}{tenant}/{job}/{task}{suffix}"),
            Key::Job { tenant, job } => write!(f, "{prefix}{tenant}/{job}{suffix}"),
            Key::JobState { tenant, job } => write!(f, "{prefix}{tenant}/{job}/{STATE}{suffix}"),
            Key::JobSource { tenant, job } => write!(f, "{prefix}{tenant}/{job}/{SOURCE}{suffix}"),
            Key::Schedule { tenant, schedule } => write!(f, "{prefix}{tenant}/{schedule}{suffix}"),
        }
    }
}

/// The name of a job's state object in its folder.
const STATE: &str = "state";

/// The name of a job's source object in its folder.
const SOURCE: &str = "source";

/// The prefix under which all results of one job live.
pub fn job_results_prefix(tenant: &str, job: &str) -> String {
    format!("{}{job}/", Area::Results.of_tenant(tenant))
}

/// Where a task's result object goes under a client's own output location: the client
/// already knows the tenant, so the key is `<job>/<task>.jsonl`.
pub fn output_key(job: &str, task: &str) -> String {
    format!("{job}/{task}{}", Area::Results.suffix())
}

/// Whether `id` is safe as one path segment of a key: letters, digits, `-`, `_`, `.`
/// (not only dots). Ids come from users in some modes, so they are checked, not trusted.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.chars().all(|c| c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_scoped() {
        let result = Key::result("acme", "j1", "t000003");
        assert_eq!(result.to_string(), "results/acme/j1/t000003.jsonl");
        assert!(
            result
                .to_string()
                .starts_with(&job_results_prefix("acme", "j1"))
        );
        assert!(
            result
                .to_string()
                .starts_with(&Area::Results.of_tenant("acme"))
        );
        assert_eq!(Key::job("acme", "j1").to_string(), "jobs/acme/j1.json");
        assert_eq!(
            Key::job_state("acme", "j1").to_string(),
            "jobs/acme/j1/state.json"
        );
        assert_eq!(
            Key::job_source("acme", "j1").to_string(),
            "jobs/acme/j1/source.json"
        );
        assert_eq!(
            Key::schedule("acme", "s1").to_string(),
            "schedules/acme/s1.json"
        );
        assert_eq!(output_key("j1", "t000003"), "j1/t000003.jsonl");
    }

    #[test]
    fn keys_read_back_as_themselves() {
        for key in [
            Key::result("acme", "j1", "r2-t000031"),
            Key::job("acme", "j1"),
            Key::job_state("acme", "j1"),
            Key::job_source("acme", "j1"),
            Key::schedule("a.b", "nightly"),
        ] {
            assert_eq!(Key::parse(&key.to_string()), Some(key.clone()), "{key}");
            assert_eq!(key.tenant(), Key::parse(&key.to_string()).unwrap().tenant());
        }
        for foreign in [
            "jobs/acme/j1.jsonl",
            "jobs/acme/x/j1.json",
            "jobs/acme/j1/other.json",
            "results/acme/j1.jsonl",
            "results/acme/../j1/t1.jsonl",
            "config/acme.toml",
            "jobs/acme/.json",
        ] {
            assert_eq!(Key::parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn the_retention_applies_to_results_and_jobs_only() {
        assert!(Area::is_swept("results/acme/j1/t000001.jsonl"));
        assert!(Area::is_swept("jobs/acme/j1.json"));
        assert!(Area::is_swept("jobs/acme/j1/state.json"));
        assert!(!Area::is_swept("schedules/acme/weekly.json"));
        assert!(!Area::is_swept("elsewhere/x.json"));
    }

    #[test]
    fn ids_that_could_escape_a_prefix_are_invalid() {
        for bad in ["", ".", "..", "a/b", "a b", "../x", "é"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
        for good in ["local", "job-2026_11", "t000001", "v1.2"] {
            assert!(is_valid_id(good), "{good:?}");
        }
    }
}
