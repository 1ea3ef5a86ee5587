//! A store's own write ceiling, for the end-to-end benchmarks
//! (benches/e2e/scylla_sink.sh, graph_sink.sh): the same rows pgfanout
//! writes, written straight to the store as fast as a plain client can, so
//! a benchmark can say how close the sink comes.
//!
//! ```text
//! store_ceiling cassandra HOST:PORT N IN_FLIGHT   # prepared inserts, two tables a row
//! store_ceiling neo4j bolt://HOST:PORT N BATCH     # UNWIND batches of MERGEs
//! ```
//!
//! Prints the rows per second; writes into keyspace `bench_ceiling` or
//! the `CeilingReservation` label, dropped first.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, address, n, width] = &args[..] else {
        bail!("usage: store_ceiling cassandra|neo4j ADDRESS N IN_FLIGHT_OR_BATCH");
    };
    let n: i64 = n.parse().context("N must be a number")?;
    let width: usize = width.parse().context("IN_FLIGHT_OR_BATCH must be a number")?;
    let rate = match store.as_str() {
        "cassandra" => cassandra(address, n, width).await?,
        "neo4j" => neo4j(address, n, width).await?,
        other => bail!("unknown store {other:?}: cassandra or neo4j"),
    };
    println!("{rate:.0}");
    Ok(())
}

/// Rows per second of prepared inserts into a table keyed by id and one
/// keyed by guest, with write timestamps, `in_flight` rows at a time.
async fn cassandra(address: &str, n: i64, in_flight: usize) -> Result<f64> {
    let session = scylla::client::session_builder::SessionBuilder::new().known_node(address).build().await?;
    session.query_unpaged("DROP KEYSPACE IF EXISTS bench_ceiling", ()).await?;
    session
        .query_unpaged(
            "CREATE KEYSPACE bench_ceiling WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            (),
        )
        .await?;
    session
        .query_unpaged(
            "CREATE TABLE bench_ceiling.reservations (id bigint PRIMARY KEY, guest_id int, status text, \
             total_price decimal, check_in date)",
            (),
        )
        .await?;
    session
        .query_unpaged(
            "CREATE TABLE bench_ceiling.reservations_by_guest (guest_id int, id bigint, status text, \
             total_price decimal, check_in date, PRIMARY KEY ((guest_id), id))",
            (),
        )
        .await?;
    let by_id = session
        .prepare(
            "INSERT INTO bench_ceiling.reservations (id, guest_id, status, total_price, check_in) \
             VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
        )
        .await?;
    let by_guest = session
        .prepare(
            "INSERT INTO bench_ceiling.reservations_by_guest (guest_id, id, status, total_price, check_in) \
             VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
        )
        .await?;
    let start = Instant::now();
    stream::iter(0..n)
        .map(|id| {
            let (session, by_id, by_guest) = (&session, &by_id, &by_guest);
            async move {
                let guest = i32::try_from(id % 1000).unwrap_or_default();
                let price = scylla::value::CqlDecimal::from_signed_be_bytes_and_exponent(vec![0x03, 0xE7], 2);
                let day = scylla::value::CqlDate((1u32 << 31) + 20_454 + u32::try_from(id % 365).unwrap_or_default());
                let values = (id, guest, "pending", price, day, 1_800_000_000_000_000 + id);
                session.execute_unpaged(by_id, values.clone()).await?;
                session.execute_unpaged(by_guest, (guest, id, values.2, values.3, values.4, values.5)).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<()>()
        .await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Rows per second of `UNWIND` batches that merge a reservation node and its
/// two relationships (to its guest and its property), `batch` rows a query.
async fn neo4j(url: &str, n: i64, batch: usize) -> Result<f64> {
    let config = neo4rs::ConfigBuilder::default().uri(url).user("neo4j").password("").build()?;
    let graph = neo4rs::Graph::connect(config)?;
    graph.run(neo4rs::query("MATCH (n:CeilingReservation) DETACH DELETE n")).await?;
    graph.run(neo4rs::query("MATCH (n:CeilingUser) DETACH DELETE n")).await?;
    graph.run(neo4rs::query("MATCH (n:CeilingProperty) DETACH DELETE n")).await?;
    for label in ["CeilingReservation", "CeilingUser", "CeilingProperty"] {
        graph.run(neo4rs::query(&format!("CREATE INDEX IF NOT EXISTS FOR (n:{label}) ON (n.id)"))).await?;
    }
    let start = Instant::now();
    let ids: Vec<i64> = (0..n).collect();
    for chunk in ids.chunks(batch.max(1)) {
        let rows: Vec<neo4rs::BoltType> = chunk
            .iter()
            .map(|&id| {
                let mut row = neo4rs::BoltMap::new();
                row.put("id".into(), id.into());
                row.put("guest".into(), (id % 5000).into());
                row.put("property".into(), (id % 500).into());
                row.put("status".into(), "confirmed".into());
                neo4rs::BoltType::Map(row)
            })
            .collect();
        graph
            .run(
                neo4rs::query(
                    "UNWIND $rows AS row \
                     MERGE (r:CeilingReservation {id: row.id}) SET r.status = row.status \
                     MERGE (u:CeilingUser {id: row.guest}) MERGE (r)-[:BOOKED_BY]->(u) \
                     MERGE (p:CeilingProperty {id: row.property}) MERGE (r)-[:FOR]->(p)",
                )
                .param("rows", rows),
            )
            .await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
