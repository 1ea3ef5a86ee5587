//! A CQL server for tests, demos and benchmarks: the in-memory `kassandra`
//! engine (CQL protocol v4) served on an address of the caller's choosing.
//!
//! What it owns: one [`KassandraSession`] (the data) and, while serving, one
//! thread running a single-threaded tokio runtime that accepts connections
//! and answers their frames. [`CqlDevServer::stop`] closes the listener and
//! every open connection but keeps the data; [`CqlDevServer::resume`] serves
//! the same data on the same address again — an outage and recovery of the
//! store as a client sees it.
//!
//! Not a database: one node, in memory, no `USING TIMESTAMP`, no TTL, no
//! `TRUNCATE`, no `ALTER TABLE`, several native types unimplemented (the
//! engine panics on `decimal`, `smallint`, `time`...). A request that makes
//! the engine panic is answered with a server error instead of killing the
//! connection, so a client sees a rejected statement.
//!
//! Invariant: requests are processed one at a time under one lock, in the
//! order each connection sent them.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures_util::{SinkExt, StreamExt};
use kassandra::error::DbError;
use kassandra::frame::request::Request;
use kassandra::frame::response::error::Error as CqlError;
use kassandra::frame::response::Response;
use kassandra::frame::{request_stream, response_sink};
use kassandra::KassandraSession;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// An in-memory CQL server on a fixed address.
pub struct CqlDevServer {
    address: SocketAddr,
    session: Arc<Shared>,
    serving: Option<Serving>,
}

/// The data and a count of the requests that reached it.
struct Shared {
    session: Mutex<KassandraSession>,
    /// Query, prepare, execute and batch requests answered: the round trips
    /// clients made (connection setup excluded), for benchmarks.
    requests: AtomicU64,
}

/// The thread serving connections and the way to stop it.
struct Serving {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl CqlDevServer {
    /// Serves an empty database on `address` (port 0 picks a free port; see
    /// [`address`](Self::address)).
    pub fn start(address: SocketAddr) -> std::io::Result<CqlDevServer> {
        let listener = StdTcpListener::bind(address)?;
        let address = listener.local_addr()?;
        let session = Arc::new(Shared { session: Mutex::new(KassandraSession::new()), requests: AtomicU64::new(0) });
        let serving = serve(listener, session.clone())?;
        Ok(CqlDevServer { address, session, serving: Some(serving) })
    }

    /// The address clients connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Query, prepare, execute and batch requests answered so far.
    pub fn requests(&self) -> u64 {
        self.session.requests.load(Ordering::Relaxed)
    }

    /// Whether connections are being accepted.
    pub fn is_serving(&self) -> bool {
        self.serving.is_some()
    }

    /// Closes the listener and every connection; the data stays.
    pub fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            // The thread may already have ended; either way it is joined next.
            let _ = serving.stop.send(());
            let _ = serving.thread.join();
        }
    }

    /// Serves the data again on the same address.
    pub fn resume(&mut self) -> std::io::Result<()> {
        if self.serving.is_none() {
            let listener = StdTcpListener::bind(self.address)?;
            self.serving = Some(serve(listener, self.session.clone())?);
        }
        Ok(())
    }
}

impl Drop for CqlDevServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the serving thread on `listener`.
fn serve(listener: StdTcpListener, session: Arc<Shared>) -> std::io::Result<Serving> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new().name("cql-dev-server".into()).spawn(move || {
        // Connections run as local tasks: dropping the set when the accept
        // loop ends closes every one of them.
        let connections = tokio::task::LocalSet::new();
        connections.block_on(&runtime, async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            tokio::select! {
                _ = stopped => {}
                _ = accept_forever(listener, session) => {}
            }
        });
    })?;
    Ok(Serving { stop, thread })
}

async fn accept_forever(listener: TcpListener, session: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(answer(stream, session.clone()));
            }
            Err(err) => tracing::warn!(error = %err, "cql dev server: accept failed"),
        }
    }
}

/// Answers one connection's frames in order until it closes.
async fn answer(mut stream: TcpStream, session: Arc<Shared>) {
    let (reader, writer) = stream.split();
    let mut requests = request_stream(reader);
    let mut responses = response_sink(writer);
    while let Some(frame) = requests.next().await {
        let Ok((header, opcode, body)) = frame else { break };
        let response = match Request::deserialize(opcode, &body, header.flags) {
            Ok(request) => respond(&session, request),
            Err(err) => Response::Error(err),
        };
        if responses.send((response, header.stream)).await.is_err() {
            break;
        }
    }
}

/// The engine's answer to one request; a panic in the engine becomes a
/// server error.
fn respond(shared: &Shared, request: Request<'_>) -> Response {
    if matches!(request, Request::Query(_) | Request::Prepare(_) | Request::Execute(_) | Request::Batch(_)) {
        shared.requests.fetch_add(1, Ordering::Relaxed);
    }
    let mut session = shared.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match request {
        Request::StartUp(_) | Request::Register { .. } => Ok(Response::Ready),
        Request::Options => Ok(Response::options()),
        Request::Query(query) => session.process(query).map(Response::Result),
        Request::Prepare(query) => session.prepare(query).map(Response::Result),
        Request::Execute(execute) => session.execute(execute).map(Response::Result),
        Request::Batch(batch) => session.process_batch(batch).map(Response::Result),
        Request::AuthResponse => Err(CqlError::new(DbError::ProtocolError, "the dev server does not authenticate")),
    }));
    match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => Response::Error(error),
        Err(_) => Response::Error(CqlError::new(DbError::ServerError, "the in-memory engine does not support this")),
    }
}
