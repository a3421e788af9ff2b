//! What every tagfleet process shares: the versioned task and result schema, the [`Queue`]
//! and [`ObjectStore`] abstractions with their backends, pseudonyms and retention.

pub mod aws;
pub mod job;
pub mod keys;
pub mod netguard;
pub mod pseudonym;
pub mod queue;
pub mod retention;
pub mod schema;
pub mod secrets;
pub mod store;

pub use pseudonym::{Pseudonymiser, TenantKey};
pub use queue::{Delivery, Depth, Queue, QueueError};
pub use schema::{Analysis, ErrorKind, ImageError, ResultLine, TaskItem, TaskMessage, TaskOptions};
pub use secrets::Secrets;
pub use store::{ObjectStore, StoreError};
