//! The tagfleet worker: the pipeline of DESIGN.md, from queue to result object.

pub mod batcher;
pub mod budget;
mod consume;
pub mod executor;
pub mod fetch;
pub mod gate;
pub mod gpu;
pub mod health;
pub mod https;
pub mod metrics;
pub mod pipeline;
pub mod prepare;
mod settle;
pub mod task;
pub mod writer;

pub use batcher::BatchPolicy;
pub use budget::DEFAULT_PIXEL_BUDGET;
pub use fetch::{FileRoots, Sources};
pub use health::Health;
pub use pipeline::{Pipeline, PipelineConfig};
pub use task::{LiveTenants, Tenants};
pub use writer::{Event, Summary};
