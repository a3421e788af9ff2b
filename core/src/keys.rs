//! Object keys. One place decides the layout, so writers and readers cannot drift apart.
//! Keys hold tenant, job and task ids only: never a ref, file name or URL.

/// Where the result object of one task message lives. Deterministic, so a redelivered
/// message overwrites its own earlier result instead of adding a second one.
pub fn result_key(tenant: &str, job_id: &str, task_id: &str) -> String {
    format!("results/{tenant}/{job_id}/{task_id}.jsonl")
}

/// The prefix under which all results of one job live.
pub fn job_results_prefix(tenant: &str, job_id: &str) -> String {
    format!("results/{tenant}/{job_id}/")
}

/// Where a job record lives.
pub fn job_key(tenant: &str, job_id: &str) -> String {
    format!("jobs/{tenant}/{job_id}.json")
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
    fn result_keys_are_deterministic_and_scoped() {
        assert_eq!(
            result_key("acme", "j1", "t000003"),
            "results/acme/j1/t000003.jsonl"
        );
        assert!(result_key("acme", "j1", "t1").starts_with(&job_results_prefix("acme", "j1")));
        assert_eq!(job_key("acme", "j1"), "jobs/acme/j1.json");
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
