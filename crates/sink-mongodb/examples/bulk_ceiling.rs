//! The store's own ceiling for the MongoDB sink benchmark: how fast the server takes
//! documents like the benchmark's rows when a client does nothing but bulk inserts.
//!
//! ```text
//! cargo run --release -p pgfanout-sink-mongodb --example bulk_ceiling -- mongodb://127.0.0.1:27017 200000 1000
//! ```
//!
//! Arguments: URL, documents (default 200000), documents per command (default 1000, the
//! pipeline's batch size), and the mode: `insert` (`insert_many`, default) or `guarded`
//! (the sink's own statement: one unordered `update` command of version-guarded upserts,
//! `{_id, v: {$lt: V}}`), which shows what the server charges for the guard itself. Prints `documents=N seconds=S documents_per_second=R`.

use std::time::Instant;

use bson::{doc, spec::BinarySubtype, Binary, DateTime, Document};
use pgfanout_core::{Lsn, Version};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("usage: bulk_ceiling URL [DOCUMENTS] [BATCH]")?;
    let total: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(200_000);
    let batch: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1000);
    let guarded = args.next().as_deref() == Some("guarded");
    let client = mongodb::Client::with_uri_str(&url).await?;
    let collection = client.database("bench_ceiling").collection::<Document>("orders");
    collection.drop().await?;
    let start = Instant::now();
    let mut next = 1u64;
    while next <= total {
        let last = (next + batch - 1).min(total);
        // The fields and BSON types the sink writes for a benchmark row (numeric as text,
        // as the benchmark configures for nx-27017), including the version field.
        let documents: Vec<Document> = (next..=last)
            .map(|g| {
                let id = i64::try_from(g).unwrap_or(i64::MAX);
                doc! {
                    "_id": id, "id": id, "customer": format!("customer {g}"), "amount": format!("{}.99", g % 1000),
                    "quantity": (g % 7) as i32, "paid": g % 2 == 0, "placed_at": DateTime::now(),
                    "reference": Binary { subtype: BinarySubtype::Uuid, bytes: g.to_be_bytes().repeat(2) },
                    "attributes": { "channel": "web", "n": id },
                    "_pgfanout_version": Version { commit_lsn: Lsn(g / 1000), ordinal: (g % 1000) as u32 }
                        .to_sortable_string(),
                }
            })
            .collect();
        if guarded {
            let updates: Vec<Document> = documents
                .into_iter()
                .map(|mut document| {
                    let id = document.remove("_id").unwrap_or_default();
                    let version = document.get_str("_pgfanout_version").unwrap_or_default().to_owned();
                    doc! { "q": { "_id": id, "_pgfanout_version": { "$lt": &version } },
                    "u": { "$set": document }, "upsert": true }
                })
                .collect();
            let command = doc! { "update": "orders", "updates": updates, "ordered": false };
            client.database("bench_ceiling").run_command(command).await?;
        } else {
            collection.insert_many(documents).ordered(false).await?;
        }
        next = last + 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("documents={total} seconds={seconds:.2} documents_per_second={:.0}", total as f64 / seconds);
    client.database("bench_ceiling").drop().await?;
    Ok(())
}
