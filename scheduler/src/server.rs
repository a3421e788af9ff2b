//! Serving the API to clients that may be hostile. Every open connection holds a file
//! descriptor and buffers, so their number is capped; a client gets a deadline for its
//! request headers and one for its body; and TLS, when configured, must be negotiated
//! within the header deadline too.
//!
//! At the cap the oldest idle connection (one with no request in progress: still sending
//! its headers, in a TLS handshake, or kept alive between requests) is closed to make
//! room, so idle connections cannot lock out a health probe or a real client. Only when
//! every connection is busy with a request does accepting wait for one to end; the body
//! deadline bounds that wait.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics;

/// How the API is served.
#[derive(Clone)]
pub struct ServeConfig {
    /// Names the listener in metrics: `api` or `operations`.
    pub listener: &'static str,
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// A client must send a request's headers (and finish the TLS handshake) within this.
    pub header_read_timeout: Duration,
    /// A client must send a request's body within this, counted from its headers.
    pub body_read_timeout: Duration,
    /// HTTPS when set (see [`crate::tls`]).
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listener", &self.listener)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A request body that was not sent in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not sent within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// Whether `error` (reading a request body) comes from the body's deadline: the API
/// answers those with 408.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(c) = cause {
        if c.is::<BodyTimedOut>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Serves `app` on `listener` until `shutdown`, then lets the requests in progress end
/// and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServeConfig,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Connections::new(
        config.listener,
        config.max_connections.max(1),
    ));
    let config = Arc::new(config);
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = connections.admit(&shutdown).await else {
            break;
        };
        let (app, config, shutdown) = (app.clone(), config.clone(), shutdown.clone());
        tokio::spawn(async move {
            match &config.tls {
                None => serve_connection(stream, slot, app, &config, shutdown).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        () = slot.evicted.cancelled() => return,
                        done = tokio::time::timeout(config.header_read_timeout, acceptor.accept(stream)) => done,
                    };
                    match handshake {
                        Ok(Ok(tls)) => serve_connection(tls, slot, app, &config, shutdown).await,
                        Ok(Err(e)) => {
                            metrics::HTTP_CONNECTIONS_CLOSED
                                .with_label_values(&[config.listener, "tls_failed"])
                                .inc();
                            tracing::debug!(error = %e, "a TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::HTTP_CONNECTIONS_CLOSED
                                .with_label_values(&[config.listener, "timeout"])
                                .inc();
                        }
                    }
                }
            }
        });
    }
    connections.drained().await;
}

/// Serves one connection until the client closes it, it times out, it is evicted to make
/// room, or the server shuts down (after its request in progress).
async fn serve_connection<S>(
    io: S,
    slot: Slot,
    app: Router,
    config: &ServeConfig,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = slot.requests.clone();
    let body_timeout = config.body_read_timeout;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let busy = Busy::new(requests.clone());
        let request = request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap_or_else(|e| match e {});
            // Busy until the response body is gone: results stream for a while.
            Ok::<Response<Body>, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _busy = &busy;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = slot.evicted.cancelled() => return,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result
        && e.is_timeout()
    {
        metrics::HTTP_CONNECTIONS_CLOSED
            .with_label_values(&[config.listener, "timeout"])
            .inc();
    }
}

/// The open connections, oldest first.
struct Connections {
    listener: &'static str,
    max: usize,
    open: Mutex<Open>,
    /// Notified whenever a connection closes.
    closed: Notify,
}

#[derive(Default)]
struct Open {
    next: u64,
    by_age: BTreeMap<u64, Tracked>,
}

/// What the set knows of an open connection: how many requests it has in progress, and
/// its eviction switch.
#[derive(Clone)]
struct Tracked {
    requests: Arc<AtomicUsize>,
    evicted: CancellationToken,
}

/// An admitted connection, held by its task.
struct Slot {
    requests: Arc<AtomicUsize>,
    evicted: CancellationToken,
    /// Takes the connection out of the set when its task ends.
    _closer: Closer,
}

struct Closer {
    id: u64,
    connections: std::sync::Weak<Connections>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        if let Some(connections) = self.connections.upgrade() {
            let mut open = connections
                .open
                .lock()
                .expect("the connection set is not poisoned");
            open.by_age.remove(&self.id);
            metrics::HTTP_CONNECTIONS
                .with_label_values(&[connections.listener])
                .set(open.by_age.len() as i64);
            drop(open);
            connections.closed.notify_waiters();
        }
    }
}

impl Connections {
    fn new(listener: &'static str, max: usize) -> Self {
        Self {
            listener,
            max,
            open: Mutex::new(Open::default()),
            closed: Notify::new(),
        }
    }

    /// Room for one more connection: at once while under the cap, else by evicting the
    /// oldest idle connection, else once a busy one ends. `None` at shutdown.
    async fn admit(self: &Arc<Self>, shutdown: &CancellationToken) -> Option<Slot> {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if let Some(slot) = self.try_admit() {
                return Some(slot);
            }
            tokio::select! {
                () = closed => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    fn try_admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self
            .open
            .lock()
            .expect("the connection set is not poisoned");
        // Evicted connections are on their way out: they no longer count.
        let live = open
            .by_age
            .values()
            .filter(|s| !s.evicted.is_cancelled())
            .count();
        if live >= self.max {
            let idle = open
                .by_age
                .values()
                .find(|s| !s.evicted.is_cancelled() && s.requests.load(Ordering::SeqCst) == 0)?;
            idle.evicted.cancel();
            metrics::HTTP_CONNECTIONS_CLOSED
                .with_label_values(&[self.listener, "evicted"])
                .inc();
        }
        let id = open.next;
        open.next += 1;
        let tracked = Tracked {
            requests: Arc::new(AtomicUsize::new(0)),
            evicted: CancellationToken::new(),
        };
        open.by_age.insert(id, tracked.clone());
        metrics::HTTP_CONNECTIONS
            .with_label_values(&[self.listener])
            .set(open.by_age.len() as i64);
        Some(Slot {
            requests: tracked.requests,
            evicted: tracked.evicted,
            _closer: Closer {
                id,
                connections: Arc::downgrade(self),
            },
        })
    }

    /// Waits until every connection is closed.
    async fn drained(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self
                .open
                .lock()
                .expect("the connection set is not poisoned")
                .by_age
                .is_empty()
            {
                return;
            }
            closed.await;
        }
    }
}

/// A request in progress on a connection, from its headers to the end of its response.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(requests: Arc<AtomicUsize>) -> Self {
        requests.fetch_add(1, Ordering::SeqCst);
        Self(requests)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request body that fails with [`BodyTimedOut`] when it is not complete by its
/// deadline, however it trickles in.
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + limit)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    use axum::extract::rejection::BytesRejection;
    use axum::http::StatusCode;
    use axum::routing::{get, post};

    use super::*;

    /// `/` answers at once; `/hold` answers once released; `/body` reads its body.
    struct Server {
        addr: SocketAddr,
        holding: Arc<AtomicUsize>,
        release: Arc<Notify>,
        shutdown: CancellationToken,
    }

    async fn start(max_connections: usize, header_secs: u64, body_secs: u64) -> Server {
        let holding = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (h, r) = (holding.clone(), release.clone());
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/hold",
                get(move || async move {
                    let released = r.notified();
                    h.fetch_add(1, Ordering::SeqCst);
                    released.await;
                    "released"
                }),
            )
            .route(
                "/body",
                post(|body: Result<Bytes, BytesRejection>| async move {
                    match body {
                        Ok(_) => StatusCode::OK,
                        Err(e) if is_body_timeout(&e) => StatusCode::REQUEST_TIMEOUT,
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let config = ServeConfig {
            listener: "api",
            max_connections,
            header_read_timeout: Duration::from_secs(header_secs),
            body_read_timeout: Duration::from_secs(body_secs),
            tls: None,
        };
        tokio::spawn(serve(listener, app, config, shutdown.clone()));
        Server {
            addr,
            holding,
            release,
            shutdown,
        }
    }

    /// A connection that sent `head` and nothing more.
    fn half_sent(addr: SocketAddr, head: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream
    }

    /// What the server sends until it closes the connection: `None` if it is still open
    /// after a generous wait.
    fn read_to_close(stream: &mut TcpStream) -> Option<String> {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut out = Vec::new();
        match stream.read_to_end(&mut out) {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                Some(String::from_utf8_lossy(&out).into_owned())
            }
            Err(_) => None,
        }
    }

    fn get_once(addr: SocketAddr, path: &str) -> String {
        let mut stream = half_sent(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        );
        read_to_close(&mut stream).expect("an answer")
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let server = start(4, 600, 600).await;
        let addr = server.addr;
        let mut idle: Vec<TcpStream> = (0..10)
            .map(|_| half_sent(addr, "GET / HTTP/1.1\r\nHost: t\r\n"))
            .collect();
        let answer = blocking(move || get_once(addr, "/")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Eleven connections came to a cap of four: the seven oldest idle ones were closed
        // (the header deadline is far away), the newest are still open.
        let newest = idle.split_off(7);
        let oldest = blocking(move || {
            idle.iter_mut()
                .map(|s| read_to_close(s).is_some())
                .collect::<Vec<_>>()
        })
        .await;
        assert_eq!(oldest, vec![true; 7]);
        for mut s in newest {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 1];
            let still_open =
                matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            assert!(still_open, "a newer idle connection was closed");
        }
        server.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_busy_with_a_request_are_never_evicted() {
        let server = start(2, 600, 600).await;
        let addr = server.addr;
        let held: Vec<_> = (0..2)
            .map(|_| tokio::task::spawn_blocking(move || get_once(addr, "/hold")))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while server.holding.load(Ordering::SeqCst) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the requests never arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Both slots busy: a third client waits for one of them...
        let third = tokio::task::spawn_blocking(move || get_once(addr, "/"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished(), "served past the cap");
        // ...and is served once a request ends; the busy ones were not cut off.
        server.release.notify_waiters();
        assert!(third.await.unwrap().starts_with("HTTP/1.1 200"));
        for answer in held {
            let answer = answer.await.unwrap();
            assert!(answer.ends_with("released"), "{answer}");
        }
        server.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn headers_or_a_body_not_sent_in_time_end_the_request() {
        let server = start(16, 1, 1).await;
        let addr = server.addr;
        let closed = blocking(move || {
            let mut nothing = TcpStream::connect(addr).unwrap();
            let mut half = half_sent(addr, "GET / HTTP/1.1\r\nHost: t\r\n");
            (read_to_close(&mut nothing), read_to_close(&mut half))
        })
        .await;
        assert!(closed.0.is_some(), "a silent connection stayed open");
        assert!(closed.1.is_some(), "a half-sent request stayed open");
        let answer = blocking(move || {
            let mut slow = half_sent(
                addr,
                "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"a\":",
            );
            read_to_close(&mut slow).expect("an answer")
        })
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        server.shutdown.cancel();
    }
}
