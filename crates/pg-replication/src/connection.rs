//! The replication connection in command mode: connecting, authenticating,
//! and the replication commands that answer like queries.
//!
//! A [`ReplicationConnection`] is owned by one task. [`ReplicationConnection::start_replication`]
//! consumes it and returns a [`ReplicationStream`].
//!
//! Connecting over TCP first settles TLS as `sslmode` says (see [`crate::tls`]);
//! the startup message and everything after go through the TLS session when
//! there is one. Unix-domain sockets are always plain, as with libpq.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use pgoutput::Lsn;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ScramSha256, SCRAM_SHA_256_PLUS};
use postgres_protocol::escape::escape_literal;
use postgres_protocol::message::{backend, frontend};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{Host, SslNegotiation};

use crate::auth::{choose_scram, ChannelBindingMode, TlsBinding};
use crate::conninfo::split_tls_params;
use crate::error::{ReplicationError, Result};
use crate::slot::{slot_state_query, SlotOptions};
use crate::stream::{ReplicationStream, StreamSettings};
use crate::tls::{session_end_point, Negotiated, SslMode, TlsPolicy};
use crate::wire::{server_error, server_notice, FrameReader, Incoming, StreamFrame, Transport};

/// Session settings sent at startup. pgoutput renders text values with the
/// walsender session's settings, so they are pinned to what the value parsers expect.
const SESSION_OPTIONS: &str =
    "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC -c bytea_output=hex";

/// Where and as whom to connect; parsed from a libpq-style URL or key/value string.
#[derive(Clone)]
pub struct ConnectOptions {
    endpoint: Endpoint,
    user: String,
    password: Option<Vec<u8>>,
    database: String,
    application_name: String,
    connect_timeout: Duration,
    tls: TlsPolicy,
    channel_binding: ChannelBindingMode,
}

#[derive(Clone, Debug)]
enum Endpoint {
    /// `host` is the name certificates are checked against; `address`
    /// (libpq's `hostaddr`), when given, is where to connect instead of
    /// resolving `host`.
    Tcp {
        host: String,
        address: Option<IpAddr>,
        port: u16,
    },
    Unix {
        socket: PathBuf,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            Endpoint::Unix { socket } => write!(f, "{}", socket.display()),
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is deliberately left out.
        f.debug_struct("ConnectOptions")
            .field("endpoint", &self.endpoint)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .field("sslmode", &self.tls.mode())
            .field("channel_binding", &self.channel_binding)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Parses `postgres://user@host:port/db` or `host=… user=… dbname=…`.
    /// A host starting with `/` is a unix-socket directory, as in libpq.
    ///
    /// TLS settings follow libpq: `sslmode` (`disable`, `prefer` — the
    /// default —, `require`, `verify-ca`, `verify-full`), `sslrootcert`
    /// (a PEM file of trusted CAs, or `system`), `sslcert`/`sslkey` (a client
    /// certificate) and `channel_binding` (`disable`, `prefer`, `require`);
    /// see [`crate::tls`] for what each mode checks. The certificate files
    /// are read here, once. `hostaddr` connects to that address while the
    /// certificate is checked against `host`.
    pub fn parse(url: &str) -> Result<Self> {
        let (rest, tls_params) = split_tls_params(url)?;
        let tls = TlsPolicy::from_params(&tls_params)?;
        let config = tokio_postgres::Config::from_str(&rest)
            .map_err(|err| ReplicationError::Config(format!("cannot parse source url: {err}")))?;
        if config.get_ssl_negotiation() == SslNegotiation::Direct {
            return Err(ReplicationError::Config(
                "sslnegotiation=direct is not supported; remove it to negotiate TLS the classic way".into(),
            ));
        }
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let address = config.get_hostaddrs().first().copied();
        let endpoint = match (config.get_hosts().first(), address) {
            (Some(Host::Tcp(host)), _) => Endpoint::Tcp { host: host.clone(), address, port },
            (Some(Host::Unix(dir)), _) => Endpoint::Unix { socket: dir.join(format!(".s.PGSQL.{port}")) },
            (None, Some(address)) => Endpoint::Tcp { host: address.to_string(), address: Some(address), port },
            (None, None) => Endpoint::Unix { socket: PathBuf::from(format!("/var/run/postgresql/.s.PGSQL.{port}")) },
        };
        let user = config
            .get_user()
            .ok_or_else(|| {
                ReplicationError::Config("source url has no user; add one, e.g. postgres://pgfanout@host/db".into())
            })?
            .to_owned();
        let database = config.get_dbname().unwrap_or(&user).to_owned();
        Ok(ConnectOptions {
            endpoint,
            user,
            password: config.get_password().map(<[u8]>::to_vec),
            database,
            application_name: config.get_application_name().unwrap_or("pgfanout").to_owned(),
            connect_timeout: config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10)),
            tls,
            channel_binding: config.get_channel_binding().into(),
        })
    }

    /// The `sslmode` in force (`prefer` unless the URL says otherwise).
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode()
    }

    /// Sets the password (from a secret store, never from the URL in config files).
    pub fn with_password(mut self, password: impl Into<Vec<u8>>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets `application_name`, shown in `pg_stat_replication`.
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// The database this connection decodes.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The role this connection logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `host:port` or the socket path, for logs.
    pub fn endpoint(&self) -> String {
        self.endpoint.to_string()
    }
}

/// Opens the socket and settles TLS on it as `tls` says; unix sockets are always plain.
async fn open_transport(options: &ConnectOptions, tls: &TlsPolicy) -> Result<(Transport, TlsBinding)> {
    let endpoint = options.endpoint.to_string();
    let io_error = |source| ReplicationError::Io { endpoint: endpoint.clone(), source };
    let opening = async {
        match &options.endpoint {
            Endpoint::Tcp { host, address, port } => {
                let tcp = match address {
                    Some(address) => TcpStream::connect((*address, *port)).await,
                    None => TcpStream::connect((host.as_str(), *port)).await,
                }
                .map_err(io_error)?;
                tcp.set_nodelay(true).map_err(io_error)?;
                match tls.negotiate(tcp, host, &endpoint).await? {
                    Negotiated::Tls(session) => {
                        let binding = TlsBinding::Encrypted(session_end_point(&session));
                        Ok((Transport::Tls(session), binding))
                    }
                    Negotiated::Plain(tcp) => Ok((Transport::Tcp(tcp), TlsBinding::Plaintext)),
                }
            }
            Endpoint::Unix { socket } => {
                let stream = UnixStream::connect(socket).await.map_err(io_error)?;
                Ok((Transport::Unix(stream), TlsBinding::Plaintext))
            }
        }
    };
    tokio::time::timeout(options.connect_timeout, opening)
        .await
        .map_err(|_| io_error(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))?
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// Cluster identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_position: Lsn,
    /// Database of this connection.
    pub database: Option<String>,
}

/// The answer to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Name of the slot.
    pub slot_name: String,
    /// First LSN the slot can stream from.
    pub consistent_point: Lsn,
    /// Name of the exported snapshot, with [`SnapshotAction::Export`](crate::SnapshotAction::Export) only.
    pub snapshot_name: Option<String>,
}

/// A row of `pg_replication_slots`, the parts pgfanout uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// Output plugin (`pgoutput` for slots pgfanout can use).
    pub plugin: Option<String>,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Database the slot decodes.
    pub database: Option<String>,
    /// Whether a walsender is streaming from it right now.
    pub active: bool,
    /// Whether the slot disappears when its creating session ends.
    pub temporary: bool,
    /// Whether prepared transactions are decoded at `PREPARE` time (always false before PostgreSQL 14).
    pub two_phase: bool,
    /// Whether standbys synchronize the slot (always false before PostgreSQL 17).
    pub failover: bool,
    /// Position the slot resumes from.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL the slot keeps.
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before this slot risks losing
    /// what it needs (`lost`); `None` when `max_slot_wal_keep_size` is unlimited.
    pub safe_wal_size: Option<i64>,
}

/// Rows of a simple query, all values as text.
#[derive(Debug, Default, Clone)]
pub struct QueryResult {
    /// Column names in order.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// The value of `column` in row `row`, if both exist and it is not NULL.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(index)?.as_deref()
    }
}

/// What one statement of [`ReplicationConnection::simple_query_sets`] returned.
#[derive(Debug, Clone)]
pub enum StatementOutput {
    /// A query's rows.
    Rows(QueryResult),
    /// A `COPY … TO STDOUT`'s data messages (in text format, one line each).
    CopyOut(Vec<Bytes>),
}

/// A connection opened with `replication=database`, in command mode.
pub struct ReplicationConnection {
    reader: FrameReader<tokio::io::ReadHalf<Transport>>,
    writer: tokio::io::WriteHalf<Transport>,
    options: ConnectOptions,
    server_version: u32,
    tls_binding: TlsBinding,
    channel_bound: bool,
}

impl ReplicationConnection {
    /// Connects, settles TLS, authenticates and waits until the server is
    /// ready for commands.
    ///
    /// Under `sslmode=prefer` a failed TLS handshake (a certificate that does
    /// not pass an `sslrootcert` check, say) is followed by one plain
    /// attempt, as libpq does; a warning says so.
    pub async fn connect(options: &ConnectOptions) -> Result<Self> {
        let (transport, tls_binding) = match open_transport(options, &options.tls).await {
            Err(err @ ReplicationError::Tls { .. }) if options.tls.mode() == SslMode::Prefer => {
                tracing::warn!(endpoint = %options.endpoint, error = %err, "TLS failed under sslmode=prefer; connecting without TLS");
                open_transport(options, &options.tls.without_tls()).await?
            }
            other => other?,
        };
        let (read_half, write_half) = tokio::io::split(transport);
        let mut connection = ReplicationConnection {
            reader: FrameReader::new(read_half, options.endpoint.to_string()),
            writer: write_half,
            options: options.clone(),
            server_version: 0,
            tls_binding,
            channel_bound: false,
        };
        if let Err(err) = connection.startup().await {
            return Err(connection.explain_rejection(err));
        }
        Ok(connection)
    }

    /// `server_version_num`-style number, e.g. 150004.
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    /// Whether this connection runs over TLS.
    pub fn uses_tls(&self) -> bool {
        matches!(self.tls_binding, TlsBinding::Encrypted(_))
    }

    /// Whether the login used SCRAM-SHA-256-PLUS, binding the password proof
    /// to this TLS session (so no man in the middle can have relayed it).
    pub fn channel_bound(&self) -> bool {
        self.channel_bound
    }

    async fn startup(&mut self) -> Result<()> {
        let mut buf = BytesMut::new();
        let params = [
            ("user", self.options.user.as_str()),
            ("database", self.options.database.as_str()),
            ("replication", "database"),
            ("application_name", self.options.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("options", SESSION_OPTIONS),
        ];
        frontend::startup_message(params, &mut buf).map_err(|e| ReplicationError::Config(e.to_string()))?;
        self.send(&buf).await?;
        self.authenticate().await?;
        loop {
            match self.next_message().await? {
                backend::Message::ParameterStatus(status) => {
                    if status.name().ok() == Some("server_version") {
                        self.server_version = status.value().map(parse_server_version).unwrap_or(0);
                    }
                }
                backend::Message::BackendKeyData(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                _ => return Err(ReplicationError::Protocol("unexpected message during startup".into())),
            }
        }
    }

    async fn authenticate(&mut self) -> Result<()> {
        let user = self.options.user.clone();
        let auth_error = |reason: String| ReplicationError::Auth { user: user.clone(), reason };
        let configured_password = self.options.password.clone();
        let password = || {
            configured_password.clone().ok_or_else(|| {
                auth_error(
                    "the server asks for a password and none is configured; set PGFANOUT_SOURCE__PASSWORD".into(),
                )
            })
        };
        // Under channel_binding=require, only SCRAM-SHA-256-PLUS may log in:
        // the password must not go out by any other method, and a server
        // that skips authentication (trust) may be an impostor.
        let binding_required = self.options.channel_binding == ChannelBindingMode::Require;
        let refuse_unbound = |method: &str| {
            auth_error(format!(
                "channel_binding=require, but the server asks for {method}, which cannot be bound to the TLS \
                 session; use the scram-sha-256 method in pg_hba.conf, or set channel_binding=prefer"
            ))
        };
        let mut buf = BytesMut::new();
        match self.next_message().await? {
            backend::Message::AuthenticationOk if binding_required => {
                return Err(refuse_unbound("no authentication at all (trust)"))
            }
            backend::Message::AuthenticationOk => return Ok(()),
            backend::Message::AuthenticationCleartextPassword if binding_required => {
                return Err(refuse_unbound("a cleartext password"))
            }
            backend::Message::AuthenticationCleartextPassword => {
                frontend::password_message(&password()?, &mut buf).map_err(|e| auth_error(e.to_string()))?;
            }
            backend::Message::AuthenticationMd5Password(_) if binding_required => {
                return Err(refuse_unbound("an md5 password"))
            }
            backend::Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(user.as_bytes(), &password()?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut buf).map_err(|e| auth_error(e.to_string()))?;
            }
            backend::Message::AuthenticationSasl(body) => {
                let offered = body
                    .mechanisms()
                    .map(|mechanism| Ok(mechanism.to_owned()))
                    .collect::<Vec<_>>()
                    .map_err(|e| auth_error(e.to_string()))?;
                let plan = choose_scram(&offered, &self.tls_binding, self.options.channel_binding).map_err(auth_error)?;
                let mut scram = ScramSha256::new(&password()?, plan.channel_binding());
                frontend::sasl_initial_response(plan.mechanism(), scram.message(), &mut buf)
                    .map_err(|e| auth_error(e.to_string()))?;
                self.send(&buf).await?;
                buf.clear();
                let server_first = match self.next_message().await? {
                    backend::Message::AuthenticationSaslContinue(body) => body,
                    _ => return Err(auth_error("expected SASL continue from the server".into())),
                };
                scram.update(server_first.data()).map_err(|e| auth_error(e.to_string()))?;
                frontend::sasl_response(scram.message(), &mut buf).map_err(|e| auth_error(e.to_string()))?;
                self.send(&buf).await?;
                let server_final = match self.next_message().await? {
                    backend::Message::AuthenticationSaslFinal(body) => body,
                    _ => return Err(auth_error("expected SASL final from the server".into())),
                };
                scram
                    .finish(server_final.data())
                    .map_err(|e| auth_error(format!("server signature did not verify: {e}")))?;
                self.expect_auth_ok().await?;
                self.channel_bound = plan.mechanism() == SCRAM_SHA_256_PLUS;
                return Ok(());
            }
            _ => {
                return Err(auth_error(
                    "the server asks for an authentication method this client does not speak (GSS/SSPI); use scram-sha-256, md5 or trust in pg_hba.conf".into(),
                ))
            }
        }
        self.send(&buf).await?;
        self.expect_auth_ok().await
    }

    /// Turns the server's refusals at login (SQLSTATE class 28: wrong
    /// password, no `pg_hba.conf` entry, role without LOGIN/REPLICATION)
    /// into an [`ReplicationError::Auth`] that says what to fix.
    fn explain_rejection(&self, err: ReplicationError) -> ReplicationError {
        match err {
            // 42501: "must be superuser or replication role to start walsender".
            ReplicationError::Server(server) if server.code.starts_with("28") || server.code == "42501" => {
                ReplicationError::Auth {
                    user: self.options.user.clone(),
                    reason: format!(
                        "the server refused the login ({server}); check the password, that pg_hba.conf admits \
                     this user and host for database {:?}, and that the role has LOGIN and REPLICATION",
                        self.options.database
                    ),
                }
            }
            other => other,
        }
    }

    async fn expect_auth_ok(&mut self) -> Result<()> {
        match self.next_message().await? {
            backend::Message::AuthenticationOk => Ok(()),
            _ => Err(ReplicationError::Auth {
                user: self.options.user.clone(),
                reason: "expected AuthenticationOk".into(),
            }),
        }
    }

    /// Next message; an `ErrorResponse` becomes an error and notices are logged.
    async fn next_message(&mut self) -> Result<backend::Message> {
        loop {
            let incoming = self.reader.next().await?;
            if let Some(message) = self.command_message(incoming).await? {
                return Ok(message);
            }
        }
    }

    /// Like [`ReplicationConnection::next_message`], but a CopyData
    /// message's body comes split off the read buffer as it is (one slice
    /// per message, where parsing the whole message makes two): a chunk
    /// read by `COPY … TO STDOUT` is one such message per row.
    async fn next_message_or_copy_data(&mut self) -> Result<StreamFrame> {
        loop {
            let incoming = match self.reader.next_stream_frame().await? {
                StreamFrame::CopyData(body) => return Ok(StreamFrame::CopyData(body)),
                StreamFrame::Other(incoming) => incoming,
            };
            if let Some(message) = self.command_message(incoming).await? {
                return Ok(StreamFrame::Other(Incoming::Message(message)));
            }
        }
    }

    /// What a message read in command mode means: an `ErrorResponse`
    /// becomes an error, a notice is logged (`None`), any other message is
    /// returned.
    async fn command_message(&mut self, incoming: Incoming) -> Result<Option<backend::Message>> {
        match incoming {
            Incoming::CopyBothResponse => {
                Err(ReplicationError::Protocol("unexpected CopyBothResponse in command mode".into()))
            }
            Incoming::Message(backend::Message::ErrorResponse(body)) => {
                let error = server_error(&body);
                // After an error in command mode the server sends ReadyForQuery;
                // consume it so the connection stays usable.
                if error.severity != "FATAL" {
                    self.drain_until_ready().await?;
                }
                Err(ReplicationError::Server(error))
            }
            Incoming::Message(backend::Message::NoticeResponse(body)) => {
                let notice = server_notice(&body);
                tracing::info!(code = %notice.code, message = %notice.message, "server notice");
                Ok(None)
            }
            Incoming::Message(message) => Ok(Some(message)),
        }
    }

    async fn drain_until_ready(&mut self) -> Result<()> {
        loop {
            if let Incoming::Message(backend::Message::ReadyForQuery(_)) = self.reader.next().await? {
                return Ok(());
            }
        }
    }

    /// Sends `bytes` and flushes them: over TLS, `write_all` may leave the
    /// tail of a message in the TLS session's buffer (when the socket would
    /// block), and the server would then wait for the rest of a query while
    /// the client waits for its answer.
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let io_error = |source| ReplicationError::Io { endpoint: self.options.endpoint.to_string(), source };
        self.writer.write_all(bytes).await.map_err(io_error)?;
        self.writer.flush().await.map_err(io_error)
    }

    /// Runs one statement or replication command with the simple query protocol.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(|e| ReplicationError::Config(e.to_string()))?;
        self.send(&buf).await?;
        let mut result = QueryResult::default();
        loop {
            match self.next_message().await? {
                backend::Message::RowDescription(body) => result.columns = column_names(&body)?,
                backend::Message::DataRow(body) => result.rows.push(row_texts(&body)?),
                backend::Message::ReadyForQuery(_) => return Ok(result),
                _ => {}
            }
        }
    }

    /// Runs several `;`-separated statements in one simple query message,
    /// one round trip: one output per statement that returns rows (a
    /// `SELECT` even of no rows, a `COPY … TO STDOUT`), in order. An error
    /// stops the statements after it (an explicit transaction it was in
    /// stays aborted until `ROLLBACK`).
    pub async fn simple_query_sets(&mut self, sql: &str) -> Result<Vec<StatementOutput>> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(|e| ReplicationError::Config(e.to_string()))?;
        self.send(&buf).await?;
        let mut results: Vec<StatementOutput> = Vec::new();
        loop {
            let message = match self.next_message_or_copy_data().await? {
                StreamFrame::CopyData(body) => match results.last_mut() {
                    Some(StatementOutput::CopyOut(lines)) => {
                        lines.push(body);
                        continue;
                    }
                    _ => return Err(ReplicationError::Protocol("copy data outside a COPY TO STDOUT".into())),
                },
                StreamFrame::Other(Incoming::Message(message)) => message,
                StreamFrame::Other(Incoming::CopyBothResponse) => {
                    return Err(ReplicationError::Protocol("unexpected CopyBothResponse in command mode".into()))
                }
            };
            match message {
                backend::Message::RowDescription(body) => {
                    results
                        .push(StatementOutput::Rows(QueryResult { columns: column_names(&body)?, rows: Vec::new() }));
                }
                backend::Message::CopyOutResponse(_) => results.push(StatementOutput::CopyOut(Vec::new())),
                backend::Message::DataRow(body) => {
                    let Some(StatementOutput::Rows(result)) = results.last_mut() else {
                        return Err(ReplicationError::Protocol("a data row before its row description".into()));
                    };
                    result.rows.push(row_texts(&body)?);
                }
                backend::Message::ReadyForQuery(_) => return Ok(results),
                _ => {}
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let result = self.simple_query("IDENTIFY_SYSTEM").await?;
        let missing = |what: &str| ReplicationError::Protocol(format!("IDENTIFY_SYSTEM answer lacks {what}"));
        Ok(SystemIdentity {
            system_id: result.get(0, "systemid").ok_or_else(|| missing("systemid"))?.to_owned(),
            timeline: result.get(0, "timeline").and_then(|t| t.parse().ok()).ok_or_else(|| missing("timeline"))?,
            xlog_position: result.get(0, "xlogpos").and_then(|l| l.parse().ok()).ok_or_else(|| missing("xlogpos"))?,
            database: result.get(0, "dbname").map(str::to_owned),
        })
    }

    /// State of a slot from `pg_replication_slots`, `None` if it does not exist.
    pub async fn slot_state(&mut self, slot: &str) -> Result<Option<SlotState>> {
        let result = self.simple_query(&slot_state_query(slot, self.server_version)).await?;
        if result.rows.is_empty() {
            return Ok(None);
        }
        let lsn = |column| result.get(0, column).and_then(|l| l.parse::<Lsn>().ok());
        Ok(Some(SlotState {
            slot_type: result.get(0, "slot_type").unwrap_or_default().to_owned(),
            plugin: result.get(0, "plugin").map(str::to_owned),
            database: result.get(0, "database").map(str::to_owned),
            active: result.get(0, "active") == Some("true"),
            temporary: result.get(0, "temporary") == Some("true"),
            two_phase: result.get(0, "two_phase") == Some("true"),
            failover: result.get(0, "failover") == Some("true"),
            confirmed_flush_lsn: lsn("confirmed_flush_lsn"),
            restart_lsn: lsn("restart_lsn"),
            wal_status: result.get(0, "wal_status").map(str::to_owned),
            safe_wal_size: result.get(0, "safe_wal_size").and_then(|size| size.parse().ok()),
        }))
    }

    /// Creates a permanent logical slot using `pgoutput`, without exporting a snapshot.
    pub async fn create_slot(&mut self, slot: &str) -> Result<CreatedSlot> {
        self.create_slot_with(slot, &SlotOptions::new()).await
    }

    /// Creates a logical slot using `pgoutput` with the given options.
    ///
    /// With [`SnapshotAction::Export`](crate::SnapshotAction::Export) the
    /// returned [`CreatedSlot::snapshot_name`] can be imported by other
    /// sessions only while this connection stays open and sends no further
    /// command; copy the tables first, then start streaming.
    pub async fn create_slot_with(&mut self, slot: &str, options: &SlotOptions) -> Result<CreatedSlot> {
        validate_slot_name(slot)?;
        let command = options.create_command(slot, self.server_version)?;
        let result = self.simple_query(&command).await?;
        Ok(CreatedSlot {
            slot_name: result.get(0, "slot_name").unwrap_or(slot).to_owned(),
            consistent_point: result.get(0, "consistent_point").and_then(|l| l.parse().ok()).ok_or_else(|| {
                ReplicationError::Protocol("CREATE_REPLICATION_SLOT answer lacks consistent_point".into())
            })?,
            snapshot_name: result.get(0, "snapshot_name").map(str::to_owned),
        })
    }

    /// Drops a slot; waits for it to be released when `wait` is set.
    pub async fn drop_slot(&mut self, slot: &str, wait: bool) -> Result<()> {
        validate_slot_name(slot)?;
        let suffix = if wait { " WAIT" } else { "" };
        self.simple_query(&format!("DROP_REPLICATION_SLOT {slot}{suffix}")).await.map(drop)
    }

    /// Sends `START_REPLICATION` and switches to streaming.
    ///
    /// Output starts at the later of `start` and the slot's `confirmed_flush_lsn`.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &StartOptions,
        settings: StreamSettings,
    ) -> Result<ReplicationStream> {
        validate_slot_name(slot)?;
        options.validate(self.server_version)?;
        let command = options.command(slot, start);
        tracing::debug!(%command, "starting replication");
        let mut buf = BytesMut::new();
        frontend::query(&command, &mut buf).map_err(|e| ReplicationError::Config(e.to_string()))?;
        self.send(&buf).await?;
        loop {
            match self.reader.next().await? {
                Incoming::CopyBothResponse => break,
                Incoming::Message(backend::Message::ErrorResponse(body)) => {
                    return Err(ReplicationError::Server(server_error(&body)))
                }
                Incoming::Message(backend::Message::NoticeResponse(body)) => {
                    let notice = server_notice(&body);
                    tracing::info!(code = %notice.code, message = %notice.message, "server notice");
                }
                Incoming::Message(_) => {
                    return Err(ReplicationError::Protocol("expected CopyBothResponse after START_REPLICATION".into()))
                }
            }
        }
        if matches!(self.options.endpoint, Endpoint::Tcp { .. }) {
            self.reader.pause_after_busy_reads(settings.busy_read_pause);
        }
        let endpoint = self.options.endpoint.to_string();
        Ok(ReplicationStream::new(self.reader, self.writer, endpoint, settings))
    }

    /// Sends `Terminate` and closes the socket.
    pub async fn close(mut self) -> Result<()> {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        self.send(&buf).await?;
        let _ = self.writer.shutdown().await;
        Ok(())
    }
}

/// How pgoutput should send transactions that are still in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    /// Only committed transactions are sent, each between Begin and Commit.
    Off,
    /// Large in-progress transactions are sent in Stream Start … Stream Stop
    /// blocks as the server decodes them (protocol 2+), then committed or
    /// aborted by Stream Commit / Stream Abort.
    On,
    /// As `On`, and Stream Abort carries the abort LSN and time (protocol 4+,
    /// PostgreSQL 16+).
    Parallel,
}

/// Options of `START_REPLICATION` passed to pgoutput.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOptions {
    /// pgoutput protocol version, 1–4.
    pub proto_version: u32,
    /// Publications to stream.
    pub publication_names: Vec<String>,
    /// Whether to request `pg_logical_emit_message` output.
    pub messages: bool,
    /// Whether column values come in the types' binary send format
    /// (PostgreSQL 14+) instead of their text output.
    pub binary: bool,
    /// Whether in-progress transactions are streamed (needs protocol 2+).
    pub streaming: Streaming,
    /// Whether prepared transactions are sent at PREPARE time (protocol 3+).
    /// Only takes effect on a slot created with two-phase enabled.
    pub two_phase: bool,
}

impl StartOptions {
    /// Protocol v1 for the given publication, every option off.
    pub fn new(publication: impl Into<String>) -> Self {
        StartOptions {
            proto_version: 1,
            publication_names: vec![publication.into()],
            messages: false,
            binary: false,
            streaming: Streaming::Off,
            two_phase: false,
        }
    }

    /// The highest pgoutput protocol version a server speaks, from its
    /// `server_version_num` (see [`ReplicationConnection::server_version`]):
    /// 1 before PostgreSQL 14, 2 on 14, 3 on 15, 4 from 16.
    pub fn highest_proto_version(server_version: u32) -> u32 {
        match server_version {
            0..=139_999 => 1,
            140_000..=149_999 => 2,
            150_000..=159_999 => 3,
            _ => 4,
        }
    }

    /// Checks the options against each other and against the server, so a
    /// mismatch fails here with a clear message instead of as a server error.
    pub fn validate(&self, server_version: u32) -> Result<()> {
        let highest = Self::highest_proto_version(server_version);
        let problem = if !(1..=4).contains(&self.proto_version) {
            Some(format!("proto_version {} does not exist; use 1 to 4", self.proto_version))
        } else if self.proto_version > highest {
            Some(format!(
                "proto_version {} needs a newer server; this one ({server_version}) speaks up to {highest}",
                self.proto_version
            ))
        } else if self.publication_names.is_empty() {
            Some("no publication given".to_owned())
        } else if self.streaming != Streaming::Off && self.proto_version < 2 {
            Some("streaming needs proto_version 2 or later".to_owned())
        } else if self.streaming == Streaming::Parallel && self.proto_version < 4 {
            Some("parallel streaming needs proto_version 4 (PostgreSQL 16 or later)".to_owned())
        } else if self.two_phase && self.proto_version < 3 {
            Some("two_phase needs proto_version 3 or later".to_owned())
        } else if self.binary && server_version < 140_000 {
            Some("binary needs PostgreSQL 14 or later".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(ReplicationError::Config(format!("START_REPLICATION options: {problem}"))),
            None => Ok(()),
        }
    }

    fn command(&self, slot: &str, start: Lsn) -> String {
        // Publication names are parsed like SQL identifiers inside the literal,
        // so each is double-quoted to keep its case.
        let publications = self
            .publication_names
            .iter()
            .map(|name| format!("\"{}\"", name.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(",");
        let mut command = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {start} (proto_version '{}', publication_names {}",
            self.proto_version,
            escape_literal(&publications)
        );
        let mut flag = |name: &str, value: &str| command.push_str(&format!(", {name} '{value}'"));
        if self.messages {
            flag("messages", "true");
        }
        if self.binary {
            flag("binary", "true");
        }
        match self.streaming {
            Streaming::Off => {}
            Streaming::On => flag("streaming", "on"),
            Streaming::Parallel => flag("streaming", "parallel"),
        }
        if self.two_phase {
            flag("two_phase", "true");
        }
        command.push(')');
        command
    }
}

/// Slot names are restricted by the server to `[a-z0-9_]{1,63}`; checking here
/// gives a clear error and keeps them safe to splice into commands unquoted.
pub fn validate_slot_name(slot: &str) -> Result<()> {
    let valid = !slot.is_empty()
        && slot.len() <= 63
        && slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ReplicationError::Config(format!(
            "slot name {slot:?} is invalid: use 1 to 63 characters from a-z, 0-9 and _"
        )))
    }
}

/// `15.4 (Debian 15.4-1)` → 150004; `9.6.2` → 90602.
fn parse_server_version(text: &str) -> u32 {
    let numeric: String = text.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let second = parts.next().unwrap_or(0);
    if major >= 10 {
        major * 10_000 + second
    } else {
        major * 10_000 + second * 100 + parts.next().unwrap_or(0)
    }
}

/// The column names of a query's row description.
fn column_names(body: &backend::RowDescriptionBody) -> Result<Vec<String>> {
    body.fields().map(|f| Ok(f.name().to_owned())).collect().map_err(|e| ReplicationError::Protocol(e.to_string()))
}

/// A data row's values as text (`None` for NULL).
fn row_texts(body: &backend::DataRowBody) -> Result<Vec<Option<String>>> {
    let buffer = body.buffer();
    body.ranges()
        .map(|range| Ok(range.and_then(|r| buffer.get(r)).map(|v| String::from_utf8_lossy(v).into_owned())))
        .collect()
        .map_err(|e| ReplicationError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_version_numbers() {
        assert_eq!(parse_server_version("15.4 (Debian 15.4-1.pgdg120+1)"), 150004);
        assert_eq!(parse_server_version("17.0"), 170000);
        assert_eq!(parse_server_version("9.6.2"), 90602);
    }

    #[test]
    fn slot_names_are_checked() {
        assert!(validate_slot_name("pgfanout_1").is_ok());
        assert!(validate_slot_name("").is_err());
        assert!(validate_slot_name("Upper").is_err());
        assert!(validate_slot_name("x; DROP").is_err());
        assert!(validate_slot_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn start_command_quotes_publications() {
        let options = StartOptions {
            publication_names: vec!["MyPub".into(), "o'x".into()],
            messages: true,
            ..StartOptions::new("unused")
        };
        assert_eq!(
            options.command("slot", Lsn(0x16_0000_0010)),
            "START_REPLICATION SLOT slot LOGICAL 16/10 (proto_version '1', publication_names '\"MyPub\",\"o''x\"', messages 'true')"
        );
    }

    #[test]
    fn start_command_carries_every_option() {
        let options = StartOptions {
            proto_version: 4,
            binary: true,
            streaming: Streaming::Parallel,
            two_phase: true,
            ..StartOptions::new("p")
        };
        assert_eq!(
            options.command("s", Lsn(0)),
            "START_REPLICATION SLOT s LOGICAL 0/0 (proto_version '4', publication_names '\"p\"', binary 'true', \
             streaming 'parallel', two_phase 'true')"
        );
    }

    #[test]
    fn proto_version_follows_the_server() {
        assert_eq!(StartOptions::highest_proto_version(130_011), 1);
        assert_eq!(StartOptions::highest_proto_version(140_000), 2);
        assert_eq!(StartOptions::highest_proto_version(150_004), 3);
        assert_eq!(StartOptions::highest_proto_version(170_002), 4);
    }

    #[test]
    fn incompatible_start_options_are_refused_before_the_server_sees_them() {
        let streaming_v1 = StartOptions { streaming: Streaming::On, ..StartOptions::new("p") };
        assert!(streaming_v1.validate(150_000).unwrap_err().to_string().contains("streaming needs proto_version 2"));
        let v4_on_15 = StartOptions { proto_version: 4, ..StartOptions::new("p") };
        assert!(v4_on_15.validate(150_004).unwrap_err().to_string().contains("speaks up to 3"));
        let parallel_v3 = StartOptions { proto_version: 3, streaming: Streaming::Parallel, ..StartOptions::new("p") };
        assert!(parallel_v3.validate(150_004).is_err());
        let two_phase_v2 = StartOptions { proto_version: 2, two_phase: true, ..StartOptions::new("p") };
        assert!(two_phase_v2.validate(150_004).is_err());
        let fine = StartOptions { proto_version: 3, streaming: Streaming::On, binary: true, ..StartOptions::new("p") };
        assert!(fine.validate(150_004).is_ok());
    }

    #[test]
    fn unix_socket_hosts_resolve_to_the_socket_file() {
        let options = ConnectOptions::parse("host=/tmp/pg port=5433 user=u dbname=d").unwrap();
        assert_eq!(options.endpoint(), "/tmp/pg/.s.PGSQL.5433");
        let options = ConnectOptions::parse("postgres://u:secret@db:6000/app").unwrap();
        assert_eq!(options.endpoint(), "db:6000");
        assert_eq!(options.database(), "app");
        assert!(!format!("{options:?}").contains("secret"));
    }
}
