//! Logging: `--log` decides what tagfleet's own crates log; every other target (the AWS
//! SDK, hyper, rustls, lapin, tokio, ...) logs at info at most, whatever `--log` says.
//! Client libraries log request URIs (S3 keys, that is image refs), headers and signing
//! inputs (the access key id) at debug and trace, and an `EnvFilter` lets a more specific
//! directive (`aws_smithy_runtime::client=trace`) or a span directive (`[{uri}]=trace`)
//! override any cap written as directives. So the cap is a filter of its own, and-ed with
//! `--log`, that lists what may be verbose rather than what may not: a library added
//! tomorrow is capped too.

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, layer::SubscriberExt};

/// Targets that may log below info: tagfleet's crates, and ONNX Runtime (`ort`), which
/// sees tensors and model files, never a ref.
const VERBOSE_TARGETS: &[&str] = &["tagfleet", "ort"];

/// Whether `target` is one of [`VERBOSE_TARGETS`] or a module under it
/// (`tagfleet_worker::fetch`, `tagfleet::access`, `ort::session`).
fn may_be_verbose(target: &str) -> bool {
    VERBOSE_TARGETS.iter().any(|own| {
        target.strip_prefix(own).is_some_and(|rest| {
            rest.is_empty()
                || rest.starts_with("::")
                || (*own == "tagfleet" && rest.starts_with('_'))
        })
    })
}

/// The cap: other targets' events at info or above only, and none of their spans (a
/// span's fields would be printed around our own events).
fn capped(meta: &Metadata<'_>) -> bool {
    may_be_verbose(meta.target()) || (meta.is_event() && *meta.level() <= Level::INFO)
}

/// The log layer: `directives` (an `EnvFilter`; an invalid one falls back to `info` with
/// a warning on stderr) and'ed with the cap, written by `writer`.
fn layer<S, W>(directives: &str, writer: W, ansi: bool) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(directives).unwrap_or_else(|e| {
        eprintln!("tagfleet: invalid --log filter {directives:?} ({e}); using info");
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_filter(filter.and(filter_fn(capped)))
}

/// Logs to stderr at the levels `directives` asks for, client libraries capped at info.
pub fn init(directives: &str) {
    // Colour codes only on a terminal: log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::registry()
        .with(layer(directives, std::io::stderr, ansi))
        .init();
    tracing::debug!(
        filter = directives,
        "logging as asked; libraries other than tagfleet's and ort at info at most"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    /// What is logged under `directives` when libraries and tagfleet log at every level.
    fn logged(directives: &str) -> String {
        let buffer = Buffer::default();
        let subscriber =
            tracing_subscriber::registry().with(layer(directives, buffer.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "aws_sigv4::http_request::sign", "SigningMarker AKIDMARKER");
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "UriMarker");
            tracing::trace!(target: "hyper_util::client::legacy", "HyperMarker");
            tracing::debug!(target: "lapin::channel", "LapinMarker");
            tracing::debug!(target: "tagfleetish", "LookalikeMarker");
            tracing::warn!(target: "aws_smithy_runtime::client", "library warning");
            tracing::trace!(target: "tagfleet_worker::fetch", "own trace");
            tracing::debug!(target: "tagfleet::access", "own debug");
            let span = tracing::info_span!(target: "aws_smithy_runtime::client", "invoke", uri = "s3://b/SpanMarker");
            let _entered = span.enter();
            tracing::info!(target: "tagfleet_io::store", "own info in a library span");
            tracing::trace!(target: "aws_smithy_runtime::client::http", "InSpanMarker");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn libraries_log_at_info_at_most_whatever_the_filter_says() {
        for directives in [
            "trace",
            "info,aws_smithy_runtime::client=trace,aws_sigv4=trace",
            "info,hyper_util::client::legacy=trace,lapin::channel=debug,tagfleetish=debug",
            "info,[invoke]=trace",
            "info,[{uri}]=trace,tagfleet_worker=trace,tagfleet=debug",
            "off,aws_sigv4=trace",
        ] {
            let text = logged(directives);
            for marker in [
                "SigningMarker",
                "AKIDMARKER",
                "UriMarker",
                "HyperMarker",
                "LapinMarker",
                "LookalikeMarker",
                "SpanMarker",
                "InSpanMarker",
            ] {
                assert!(!text.contains(marker), "{directives}: {marker} in\n{text}");
            }
            if directives != "off,aws_sigv4=trace" {
                assert!(text.contains("library warning"), "{directives}:\n{text}");
                assert!(
                    text.contains("own info in a library span"),
                    "{directives}:\n{text}"
                );
            }
        }
        // tagfleet's own crates still log at the levels asked for.
        let text = logged("trace");
        assert!(
            text.contains("own trace") && text.contains("own debug"),
            "{text}"
        );
        let text = logged("info,tagfleet_worker=trace");
        assert!(
            text.contains("own trace") && !text.contains("own debug"),
            "{text}"
        );
    }

    #[test]
    fn only_tagfleet_and_ort_targets_may_be_verbose() {
        for target in [
            "tagfleet",
            "tagfleet::access",
            "tagfleet_worker::fetch",
            "ort",
            "ort::session",
        ] {
            assert!(may_be_verbose(target), "{target}");
        }
        for target in [
            "tagfleetish",
            "aws_sigv4",
            "orthanc",
            "hyper",
            "log",
            "tokio::task",
            "sort",
        ] {
            assert!(!may_be_verbose(target), "{target}");
        }
    }
}
