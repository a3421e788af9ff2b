//! `tagfleet`: the one binary of the fleet.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cgroup;
mod client;
mod core_dumps;
mod decode_threads;
mod engine;
mod erase;
mod fd_limit;
mod http;
mod inputs;
mod io_args;
mod join;
mod logging;
mod malloc;
mod pipeline_args;
mod run;
mod run_printer;
mod scheduler;
mod signals;
mod status;
mod submit;
mod terminal;
mod worker;

/// Batch image analysis: tags and embeddings for many images, on one machine or a fleet.
///
/// Images are named in results by a keyed pseudonym, never by their path or URL; results
/// expire after the retention (24 h by default).
#[derive(Debug, Parser)]
#[command(name = "tagfleet", version, about, long_about)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug) and per-module levels
    /// (`info,tagfleet_worker=debug`). ONNX Runtime logs under `ort`. Other libraries
    /// (AWS SDK, hyper, rustls, lapin, ...) log at info at most, whatever the filter says:
    /// their debug output names objects and credentials.
    #[arg(
        long,
        global = true,
        env = "TAGFLEET_LOG",
        default_value = "info,ort=warn"
    )]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse a folder or manifest of photos on this machine, with no services (the
    /// embedded mode). Exit code 0 when every image succeeded, 3 when some failed.
    Run(Box<run::RunArgs>),
    /// Run a worker of the fleet: take tasks from RabbitMQ or SQS, write results to S3.
    /// Stops cleanly on SIGTERM, finishing what is in flight.
    Worker(Box<worker::WorkerArgs>),
    /// Run the scheduler: the job API (/v1/jobs, /v1/schedules), progress counting, job
    /// records and schedules. See /openapi.json on its port for the API.
    Scheduler(Box<scheduler::SchedulerArgs>),
    /// Publish a job's tasks (from a folder, a manifest or an S3 prefix) to the queue and
    /// print the job id.
    Submit(Box<submit::SubmitArgs>),
    /// Erase all of a tenant's data at once: results, job records, schedules.
    Erase(erase::EraseArgs),
    /// Show jobs and their progress, from the scheduler.
    Status(status::StatusArgs),
    /// Add a tenant to a secrets file: prints its new bearer token (keep it; only its hash
    /// is stored) and appends the tenant with a fresh pseudonym key.
    Tenant(join::TenantArgs),
    /// Print the pseudonyms of refs under a tenant key (what results call those images).
    Pseudonym(join::PseudonymArgs),
    /// Join result lines back to your own refs with your tenant key, on your machine:
    /// prints each result line with a "ref" field added.
    Join(join::JoinArgs),
    /// Measure the engine bound, the decode bound and end-to-end throughput on the same
    /// photos in one run, and print how close end-to-end comes to the bound.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> ExitCode {
    malloc::tune();
    // ONNX Runtime's telemetry, unless told otherwise, writes a device id and an event
    // database under ~/.cache and a session file in $TMPDIR, and sends usage events.
    // The worker writes nothing to disk and sends nothing anywhere, so it is off.
    // SAFETY: no other thread exists yet; nothing reads the environment concurrently.
    unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    let cli = Cli::parse();
    logging::init(&cli.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tagfleet: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::main(*args).await,
            Command::Bench(args) => bench::main(*args).await,
            Command::Worker(args) => worker::main(*args).await,
            Command::Scheduler(args) => scheduler::main(*args).await,
            Command::Pseudonym(args) => join::pseudonym(args),
            Command::Status(args) => status::main(args).await,
            Command::Erase(args) => erase::main(args).await,
            Command::Tenant(args) => join::tenant(args),
            Command::Join(args) => join::join(args),
            Command::Submit(args) => submit::main(*args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("tagfleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
