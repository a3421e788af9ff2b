//! The integration tests, one binary: each module starts the real `tagfleet` binary and,
//! where it needs them, talks to the real services `scripts/with-services.sh` starts.
//! One binary rather than one per file: each links the whole AWS SDK, and a binary per
//! file multiplied the build's disk use and link time for nothing.

mod common;

mod abusive_client;
mod analyses;
mod api_tls;
mod decode_memory;
mod fence;
mod fleet;
mod hardening;
mod outages;
mod privacy;
mod privacy_edges;
mod reload;
mod routing;
mod run;
mod scheduler;
mod scheduler_outages;
mod schedules;
mod telemetry;
mod tenant;
