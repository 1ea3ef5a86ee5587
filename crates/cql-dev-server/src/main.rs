//! `pgfanout-cql-dev-server [ADDRESS]`: serves an empty in-memory CQL
//! database (default `127.0.0.1:9042`) until killed, for `make demo` and the
//! end-to-end benchmark. Not for production data: see the library docs.
//!
//! Prints `requests=N` (query, prepare, execute and batch requests answered
//! so far) each second the count changed, for round-trip measurements.

fn main() {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9042".to_owned());
    let address: std::net::SocketAddr = match address.parse() {
        Ok(address) => address,
        Err(err) => {
            eprintln!("usage: pgfanout-cql-dev-server [HOST:PORT]: {address:?}: {err}");
            std::process::exit(2);
        }
    };
    let server = match pgfanout_cql_dev_server::CqlDevServer::start(address) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("cannot serve CQL on {address}: {err}");
            std::process::exit(1);
        }
    };
    println!("serving CQL on {}", server.address());
    let mut reported = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let requests = server.requests();
        if requests != reported {
            println!("requests={requests}");
            reported = requests;
        }
    }
}
