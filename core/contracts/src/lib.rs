//! What every tagfleet process agrees on, with no I/O: the versioned task and result
//! schema, object keys, `s3://` locations, the manifest grammar, pseudonyms, tenants, the
//! retention rule and which task queue a model's tasks go to. Queues, stores and network
//! access live in `tagfleet-io`.

pub mod analyses;
pub mod job;
pub mod keys;
pub mod location;
pub mod manifest;
pub mod pseudonym;
pub mod refs;
pub mod retention;
pub mod routing;
pub mod schema;
pub mod secrets;
pub mod task_id;

pub use location::S3Location;
pub use pseudonym::{Pseudonymiser, TenantKey};
pub use schema::{Analysis, ErrorKind, ImageError, ResultLine, TaskItem, TaskMessage, TaskOptions};
pub use secrets::Secrets;
pub use task_id::TaskId;
