//! The tagfleet scheduler: the service users talk to. It turns job specs into task messages
//! on each model's task queue, counts what workers report, keeps job records in the store, fires
//! schedules, cancels and erases, and serves all of it over an HTTP API (see [`api`]).

pub mod api;
mod background;
pub mod error;
mod jobs;
pub mod legacy;
pub mod metrics;
pub mod record;
pub mod schedules;
pub mod server;
mod sources;
pub mod spec;
pub mod tls;

pub use api::{SchedulerConfig, Service, operations_router, router};
pub use background::{Intervals, run_background};
pub use schedules::ScheduleLimits;
