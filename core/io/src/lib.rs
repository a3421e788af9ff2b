//! tagfleet's I/O: the [`Queue`] abstraction with its in-memory, RabbitMQ and SQS
//! backends, the [`ObjectStore`] abstraction with its filesystem and S3 backends, AWS
//! set-up, the retention sweeper and the network guard for URLs. What these carry is
//! defined in `tagfleet-contracts`.

pub mod aws;
pub mod listing;
pub mod netguard;
pub mod queue;
pub mod store;
pub mod sweep;

pub use queue::{Delivery, Depth, Queue, QueueError};
pub use store::{ObjectStore, StoreError};
pub use sweep::{Swept, sweep};
