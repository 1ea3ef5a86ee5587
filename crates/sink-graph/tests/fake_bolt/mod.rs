//! A fake Bolt 4.4 server, to test the Bolt transport at the message level.
//!
//! What it is: a TCP listener on `127.0.0.1:0` that performs the Bolt
//! handshake (it accepts 4.4 only), reads chunked messages, decodes their
//! PackStream values and answers each request the way a Neo4j 4.4 server
//! does — `HELLO`, `BEGIN`, `RUN`, `PULL`, `DISCARD`, `COMMIT`, `ROLLBACK`,
//! `RESET`, `GOODBYE` — including the failed state (after a `FAILURE`, every
//! request but `RESET` is `IGNORED`). Every request is recorded, with the
//! connection it came on, for the test to assert on.
//!
//! What it is not: a database. It does not parse Cypher; a `RUN` succeeds
//! with no result columns unless the test scripted an outcome for a query
//! containing some text ([`FakeBolt::script`]): result rows, a `FAILURE`
//! with a Neo4j error code, or a dropped connection. It speaks no TLS, no
//! routing and no Bolt 5, and its PackStream covers the value types the
//! transport can send or read (no temporal or spatial structures).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A PackStream value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
    /// Tag byte and fields.
    Struct(u8, Vec<Value>),
}

impl Value {
    /// A map from `(key, value)` pairs.
    pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
        Value::Map(entries.into_iter().map(|(key, value)| (key.to_owned(), value)).collect())
    }

    pub fn string(text: &str) -> Value {
        Value::String(text.to_owned())
    }
}

/// PackStream decoding of one value from the front of `input`; `None` when
/// the bytes are not a complete, known value.
pub fn decode(input: &mut &[u8]) -> Option<Value> {
    let marker = take(input, 1)?[0];
    let value = match marker {
        0x00..=0x7F => Value::Int(i64::from(marker)),
        0xF0..=0xFF => Value::Int(i64::from(marker as i8)),
        0xC0 => Value::Null,
        0xC1 => Value::Float(f64::from_be_bytes(take(input, 8)?.try_into().ok()?)),
        0xC2 => Value::Bool(false),
        0xC3 => Value::Bool(true),
        0xC8 => Value::Int(i64::from(i8::from_be_bytes(take(input, 1)?.try_into().ok()?))),
        0xC9 => Value::Int(i64::from(i16::from_be_bytes(take(input, 2)?.try_into().ok()?))),
        0xCA => Value::Int(i64::from(i32::from_be_bytes(take(input, 4)?.try_into().ok()?))),
        0xCB => Value::Int(i64::from_be_bytes(take(input, 8)?.try_into().ok()?)),
        0xCC..=0xCE => {
            let len = size(input, marker - 0xCC)?;
            Value::Bytes(take(input, len)?.to_vec())
        }
        0x80..=0x8F | 0xD0..=0xD2 => {
            let len = if marker <= 0x8F { usize::from(marker & 0x0F) } else { size(input, marker - 0xD0)? };
            Value::String(String::from_utf8(take(input, len)?.to_vec()).ok()?)
        }
        0x90..=0x9F | 0xD4..=0xD6 => {
            let len = if marker <= 0x9F { usize::from(marker & 0x0F) } else { size(input, marker - 0xD4)? };
            Value::List((0..len).map(|_| decode(input)).collect::<Option<_>>()?)
        }
        0xA0..=0xAF | 0xD8..=0xDA => {
            let len = if marker <= 0xAF { usize::from(marker & 0x0F) } else { size(input, marker - 0xD8)? };
            let mut map = BTreeMap::new();
            for _ in 0..len {
                let Value::String(key) = decode(input)? else { return None };
                map.insert(key, decode(input)?);
            }
            Value::Map(map)
        }
        0xB0..=0xBF => {
            let tag = take(input, 1)?[0];
            Value::Struct(tag, (0..marker & 0x0F).map(|_| decode(input)).collect::<Option<_>>()?)
        }
        _ => return None,
    };
    Some(value)
}

fn take<'a>(input: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if input.len() < len {
        return None;
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Some(head)
}

/// A big-endian size of 1, 2 or 4 bytes (`width_code` 0, 1, 2).
fn size(input: &mut &[u8], width_code: u8) -> Option<usize> {
    let bytes = take(input, 1 << width_code)?;
    Some(bytes.iter().fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte)))
}

/// PackStream encoding of `value`, in the smallest form.
pub fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xC0),
        Value::Bool(b) => out.push(if *b { 0xC3 } else { 0xC2 }),
        Value::Int(i) => match *i {
            -16..=127 => out.push(*i as u8),
            -128..=-17 => out.extend([0xC8, *i as u8]),
            -32_768..=32_767 => {
                out.push(0xC9);
                out.extend((*i as i16).to_be_bytes());
            }
            -2_147_483_648..=2_147_483_647 => {
                out.push(0xCA);
                out.extend((*i as i32).to_be_bytes());
            }
            _ => {
                out.push(0xCB);
                out.extend(i.to_be_bytes());
            }
        },
        Value::Float(f) => {
            out.push(0xC1);
            out.extend(f.to_be_bytes());
        }
        Value::Bytes(bytes) => {
            header(out, None, 0xCC, bytes.len());
            out.extend(bytes);
        }
        Value::String(text) => {
            header(out, Some(0x80), 0xD0, text.len());
            out.extend(text.as_bytes());
        }
        Value::List(items) => {
            header(out, Some(0x90), 0xD4, items.len());
            items.iter().for_each(|item| encode(item, out));
        }
        Value::Map(entries) => {
            header(out, Some(0xA0), 0xD8, entries.len());
            for (key, item) in entries {
                encode(&Value::String(key.clone()), out);
                encode(item, out);
            }
        }
        Value::Struct(tag, fields) => {
            out.extend([0xB0 | fields.len() as u8, *tag]);
            fields.iter().for_each(|field| encode(field, out));
        }
    }
}

/// The marker of a sized value: tiny (`len < 16`) when the type has a tiny
/// form, else the 8/16/32-bit size form starting at `sized`.
fn header(out: &mut Vec<u8>, tiny: Option<u8>, sized: u8, len: usize) {
    match (tiny, len) {
        (Some(tiny), 0..=15) => out.push(tiny | len as u8),
        (_, 0..=0xFF) => out.extend([sized, len as u8]),
        (_, 0..=0xFFFF) => {
            out.push(sized + 1);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(sized + 2);
            out.extend((len as u32).to_be_bytes());
        }
    }
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Hello(BTreeMap<String, Value>),
    Begin(BTreeMap<String, Value>),
    Run {
        query: String,
        params: BTreeMap<String, Value>,
        extra: BTreeMap<String, Value>,
    },
    Pull(BTreeMap<String, Value>),
    Discard(BTreeMap<String, Value>),
    Commit,
    Rollback,
    Reset,
    Goodbye,
    /// Bytes that are not a request this server knows; it hangs up.
    Unknown(Vec<u8>),
}

/// What the server does for a scripted `RUN`.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `FAILURE {code, message}`.
    Fail { code: &'static str, message: &'static str },
    /// Closes the socket without answering.
    Hangup,
}

struct Rule {
    query_contains: String,
    outcome: Outcome,
}

#[derive(Default)]
struct Shared {
    /// (connection number, request), in arrival order.
    log: Vec<(usize, Request)>,
    /// One-shot outcomes, the first matching one applies.
    rules: Vec<Rule>,
    connections: usize,
}

/// The running fake server; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct FakeBolt {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
}

impl FakeBolt {
    pub async fn start() -> FakeBolt {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake Bolt server");
        let url = format!("bolt://{}", listener.local_addr().expect("local address"));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let connection = {
                    let mut shared = accepting.lock().unwrap();
                    shared.connections += 1;
                    shared.connections
                };
                tokio::spawn(serve(socket, connection, accepting.clone()));
            }
        });
        FakeBolt { url, shared }
    }

    /// The next `RUN` whose query contains `query_contains` gets `outcome`.
    pub fn script(&self, query_contains: &str, outcome: Outcome) {
        self.shared.lock().unwrap().rules.push(Rule { query_contains: query_contains.to_owned(), outcome });
    }

    /// Every request so far, with its connection number.
    pub fn log(&self) -> Vec<(usize, Request)> {
        self.shared.lock().unwrap().log.clone()
    }

    /// Requests so far, without the connection bookkeeping (`HELLO`, and the
    /// `RESET` the driver's pool sends before reusing a connection).
    pub fn work(&self) -> Vec<Request> {
        self.log()
            .into_iter()
            .map(|(_, request)| request)
            .filter(|request| !matches!(request, Request::Hello(_) | Request::Reset))
            .collect()
    }

    /// Forgets the requests so far.
    pub fn clear_log(&self) {
        self.shared.lock().unwrap().log.clear();
    }

    fn take_outcome(&self, query: &str) -> Option<Outcome> {
        let mut shared = self.shared.lock().unwrap();
        let index = shared.rules.iter().position(|rule| query.contains(&rule.query_contains))?;
        Some(shared.rules.remove(index).outcome)
    }
}

const SUCCESS: u8 = 0x70;
const IGNORED: u8 = 0x7E;
const FAILURE: u8 = 0x7F;

#[derive(PartialEq)]
enum State {
    Ready,
    InTransaction,
    Failed,
}

async fn serve(mut socket: TcpStream, connection: usize, shared: Arc<Mutex<Shared>>) {
    let server = FakeBolt { url: String::new(), shared };
    let mut handshake = [0u8; 20];
    if socket.read_exact(&mut handshake).await.is_err() || handshake[..4] != [0x60, 0x60, 0xB0, 0x17] {
        return;
    }
    let offers_4_4 = handshake[4..].chunks(4).any(|offer| offer == [0, 0, 4, 4]);
    let answer: [u8; 4] = if offers_4_4 { [0, 0, 4, 4] } else { [0; 4] };
    if socket.write_all(&answer).await.is_err() || !offers_4_4 {
        return;
    }
    let mut state = State::Ready;
    let mut transactions = 0u32;
    while let Some(bytes) = read_message(&mut socket).await {
        let request = parse_request(&bytes);
        server.shared.lock().unwrap().log.push((connection, request.clone()));
        let mut replies: Vec<(u8, Value)> = Vec::new();
        if state == State::Failed && !matches!(request, Request::Reset | Request::Goodbye) {
            replies.push((IGNORED, Value::Null));
        } else {
            match request {
                Request::Hello(_) => replies.push((
                    SUCCESS,
                    Value::map([
                        ("server", Value::string("Neo4j/4.4.0")),
                        ("connection_id", Value::String(format!("bolt-{connection}"))),
                    ]),
                )),
                Request::Begin(_) => {
                    state = State::InTransaction;
                    replies.push((SUCCESS, Value::map([])));
                }
                Request::Run { query, .. } => match server.take_outcome(&query) {
                    Some(Outcome::Hangup) => return,
                    Some(Outcome::Fail { code, message }) => {
                        state = State::Failed;
                        let metadata = Value::map([("code", Value::string(code)), ("message", Value::string(message))]);
                        replies.push((FAILURE, metadata));
                    }
                    // No rows: what the tests read (the checkpoint) is not there yet.
                    None => replies.push((SUCCESS, run_success(&[]))),
                },
                Request::Pull(_) | Request::Discard(_) => {
                    let mut summary = BTreeMap::from([("has_more".to_owned(), Value::Bool(false))]);
                    if state == State::Ready {
                        // An auto-commit query ends with its commit's summary.
                        summary.insert("type".into(), Value::string("w"));
                        summary.insert("t_last".into(), Value::Int(0));
                        summary.insert("db".into(), Value::string("neo4j"));
                        summary.insert("bookmark".into(), Value::string("FB:auto"));
                    }
                    replies.push((SUCCESS, Value::Map(summary)));
                }
                Request::Commit => {
                    transactions += 1;
                    state = State::Ready;
                    let bookmark = format!("FB:kcwQ{connection}:{transactions}");
                    replies.push((SUCCESS, Value::map([("bookmark", Value::String(bookmark))])));
                }
                Request::Rollback | Request::Reset => {
                    state = State::Ready;
                    replies.push((SUCCESS, Value::map([])));
                }
                Request::Goodbye | Request::Unknown(_) => return,
            }
        }
        for (tag, metadata) in replies {
            let fields = if tag == IGNORED { vec![] } else { vec![metadata] };
            if write_message(&mut socket, &Value::Struct(tag, fields)).await.is_err() {
                return;
            }
        }
    }
}

fn run_success(fields: &[&str]) -> Value {
    Value::map([
        ("fields", Value::List(fields.iter().map(|field| Value::string(field)).collect())),
        ("t_first", Value::Int(0)),
    ])
}

fn parse_request(bytes: &[u8]) -> Request {
    let mut input = bytes;
    let unknown = || Request::Unknown(bytes.to_vec());
    let Some(Value::Struct(tag, fields)) = decode(&mut input).filter(|_| input.is_empty()) else { return unknown() };
    let map = |index: usize| match fields.get(index) {
        Some(Value::Map(map)) => Some(map.clone()),
        _ => None,
    };
    let request = match (tag, fields.len()) {
        (0x01, 1) => map(0).map(Request::Hello),
        (0x11, 1) => map(0).map(Request::Begin),
        (0x10, 3) => match &fields[0] {
            Value::String(query) => {
                map(1).zip(map(2)).map(|(params, extra)| Request::Run { query: query.clone(), params, extra })
            }
            _ => None,
        },
        (0x3F, 1) => map(0).map(Request::Pull),
        (0x2F, 1) => map(0).map(Request::Discard),
        (0x12, 0) => Some(Request::Commit),
        (0x13, 0) => Some(Request::Rollback),
        (0x0F, 0) => Some(Request::Reset),
        (0x02, 0) => Some(Request::Goodbye),
        _ => None,
    };
    request.unwrap_or_else(unknown)
}

/// One message: chunks (2-byte big-endian size, then the bytes) until an
/// empty chunk. Empty chunks before a message are no-op keep-alives.
async fn read_message(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    loop {
        let size = usize::from(socket.read_u16().await.ok()?);
        if size == 0 {
            if message.is_empty() {
                continue;
            }
            return Some(message);
        }
        let start = message.len();
        message.resize(start + size, 0);
        socket.read_exact(&mut message[start..]).await.ok()?;
    }
}

/// `message` in chunks; small ones so that long records span several.
async fn write_message(socket: &mut TcpStream, message: &Value) -> std::io::Result<()> {
    const CHUNK: usize = 1024;
    let mut bytes = Vec::new();
    encode(message, &mut bytes);
    let mut framed = Vec::with_capacity(bytes.len() + 8);
    for chunk in bytes.chunks(CHUNK) {
        framed.extend((chunk.len() as u16).to_be_bytes());
        framed.extend(chunk);
    }
    framed.extend([0, 0]);
    socket.write_all(&framed).await
}
