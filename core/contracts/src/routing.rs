//! Which task queue a task goes to: each model has its own, so a worker only ever receives
//! tasks it can run, and each model's workers scale on their own queue's length. The one
//! place that names them; the Helm chart's `tagfleet.taskQueue` helper and
//! `scripts/k8s_check.py` repeat the rule and are tested against the same names.
//!
//! ```text
//! <base>-<name>_<version>        efficientnet-lite0@1  ->  tagfleet-tasks-efficientnet-lite0_1
//!                                resnet50@2.1          ->  tagfleet-tasks-resnet50_2_1
//! <base>-<slug>__<hash>          any other id, or one too long (see below)
//! ```
//!
//! Names keep to what SQS allows (letters, digits, `-` and `_`, at most 80 characters), with
//! room for the dead-letter queue's suffix (`.dlq`, `-dlq`). The short form is used when
//! the name is letters, digits and `-`, and the version letters and digits in dot-separated
//! parts: it maps `@` and each `.` of the version to `_`, which neither part holds
//! otherwise, so two such ids never share a queue. Every other id gets a readable prefix
//! and the first 12 hex digits of its SHA-256 after a `__` that the short form never
//! holds. Neither form can end in `-dlq` or be `<base>-progress`, the names the backends
//! derive from a queue's.

use sha2::{Digest, Sha256};

/// The longest task queue name: SQS's 80 characters, less the dead-letter queue's suffix.
pub const MAX_TASK_QUEUE_NAME: usize = 80 - "-dlq".len();

/// Hex digits of the id's SHA-256 in the long form: 48 bits.
const HASH_DIGITS: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error(
        "the queue name {base:?} is too long to hold a model's part: at most {} characters",
        MAX_TASK_QUEUE_NAME - 1 - 2 - HASH_DIGITS
    )]
    BaseTooLong { base: String },
    #[error("the queue name {base:?} is empty or holds a character SQS refuses")]
    BadBase { base: String },
}

/// The task queue of the model `model_id` (`name@version`) in a fleet whose queues are
/// named after `base` (`--queue-name`, or the name in `sqs://NAME`). Fails only for a
/// base that is empty, holds other characters than letters, digits, `-`, `_` and `.`, or
/// leaves no room for the model's part.
pub fn task_queue(base: &str, model_id: &str) -> Result<String, RoutingError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if base.is_empty() || !base.chars().all(allowed) {
        return Err(RoutingError::BadBase {
            base: base.to_owned(),
        });
    }
    let room = MAX_TASK_QUEUE_NAME
        .checked_sub(base.len() + 1 + 2 + HASH_DIGITS)
        .ok_or_else(|| RoutingError::BaseTooLong {
            base: base.to_owned(),
        })?;
    if let Some(short) = short_slug(model_id) {
        let name = format!("{base}-{short}");
        if name.len() <= MAX_TASK_QUEUE_NAME {
            return Ok(name);
        }
    }
    let readable: String = model_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    let hash = hex::encode(Sha256::digest(model_id.as_bytes()));
    Ok(format!("{base}-{readable}__{}", &hash[..HASH_DIGITS]))
}

/// `name_version` (each `.` of the version as `_`), for ids of the short form only.
fn short_slug(model_id: &str) -> Option<String> {
    let (name, version) = model_id.split_once('@')?;
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let version_ok = version
        .split('.')
        .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()));
    (name_ok && version_ok).then(|| format!("{name}_{}", version.replace('.', "_")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Names the Helm chart's helper and scripts/k8s_check.py are tested against too.
    const SHARED: [(&str, &str); 6] = [
        (
            "efficientnet-lite0@1",
            "tagfleet-tasks-efficientnet-lite0_1",
        ),
        ("resnet50@2.1", "tagfleet-tasks-resnet50_2_1"),
        ("Clip-ViT@v2", "tagfleet-tasks-Clip-ViT_v2"),
        ("vit_base@1", "tagfleet-tasks-vit-base-1__9ffd6bcda7cb"),
        (
            "resnet50@2.1-rc1",
            "tagfleet-tasks-resnet50-2-1-rc1__40553bbc2cb0",
        ),
        (
            "a-model-name-that-goes-on-and-on-and-on-well-past-eighty@2024.1",
            "tagfleet-tasks-a-model-name-that-goes-on-and-on-and-on-well-pa__2980e786635f",
        ),
    ];

    #[test]
    fn names_are_the_ones_the_chart_and_checks_expect() {
        for (id, want) in SHARED {
            assert_eq!(task_queue("tagfleet-tasks", id).unwrap(), want, "{id}");
        }
    }

    #[test]
    fn names_keep_to_what_sqs_allows() {
        let ids = [
            "efficientnet-lite0@1",
            "résumé@1",
            "a b@c/d",
            "model@",
            "@1",
            "no-version",
            "x@1..2",
            &"m".repeat(300),
            &format!("{}@1", "n".repeat(70)),
        ];
        for base in ["tagfleet-tasks", "q", &"b".repeat(61)] {
            for id in ids {
                let name = task_queue(base, id).unwrap();
                assert!(name.len() <= MAX_TASK_QUEUE_NAME, "{name}");
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric()
                        || c == '-'
                        || c == '_'
                        || (c == '.' && base.contains('.'))),
                    "{name}"
                );
                assert!(name.starts_with(&format!("{base}-")), "{name}");
                assert!(
                    !name.ends_with(".fifo") && !name.ends_with("-dlq"),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn ids_that_slug_alike_get_queues_of_their_own() {
        let ids = [
            "a-b@1",
            "a@b-1",
            "a@b.1",
            "a@b_1",
            "a_b@1",
            "a.b@1",
            "a@b",
            "a-b@dlq",
            "a@b-dlq",
            "a@progress",
            "progress@x",
            "a@b.dlq",
            "a b@1",
            "a/b@1",
            "A@1",
        ];
        let mut names = HashSet::new();
        for id in ids {
            let name = task_queue("t", id).unwrap();
            assert!(names.insert(name.clone()), "{id} shares {name}");
            // No queue is another's dead-letter queue, nor the progress queue.
            assert!(
                name != "t-progress" && !name.ends_with("-dlq"),
                "{id}: {name}"
            );
        }
        let long = |n: usize| format!("{}@1", "m".repeat(n));
        assert_ne!(
            task_queue("t", &long(200)).unwrap(),
            task_queue("t", &long(201)).unwrap()
        );
    }

    #[test]
    fn a_base_without_room_or_with_odd_characters_is_refused() {
        assert!(task_queue(&"b".repeat(61), "m@1").is_ok());
        assert_eq!(
            task_queue(&"b".repeat(62), "m@1"),
            Err(RoutingError::BaseTooLong {
                base: "b".repeat(62)
            })
        );
        for base in ["", "tasks/x", "tasks x", "tâches"] {
            assert!(
                matches!(task_queue(base, "m@1"), Err(RoutingError::BadBase { .. })),
                "{base:?}"
            );
        }
    }
}
