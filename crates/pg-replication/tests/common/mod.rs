//! Helpers shared by the live-server test files: SQL sessions on the local
//! stack's PostgreSQL, roles, and throwaway databases.
//!
//! Each test binary uses a different subset of these, hence the allow.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use pgoutput::Lsn;
use tokio_postgres::{Client, NoTls};

pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; run the tests with `make test`"))
}

/// The URL of the stack's trusted superuser, on `database`.
pub fn admin_url(database: &str) -> String {
    with_database(&required_env("PGFANOUT_TEST_PG_URL"), database)
}

/// A SQL session as the stack's superuser, on `database`.
pub async fn admin(database: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(&admin_url(database), NoTls).await.expect("cannot reach the test PostgreSQL");
    tokio::spawn(connection);
    client
}

pub fn with_database(url: &str, database: &str) -> String {
    let base = url.rsplit_once('/').map(|(base, _)| base).unwrap_or(url);
    format!("{base}/{database}")
}

pub fn pg_port() -> u16 {
    required_env("PGFANOUT_TEST_PG_PORT").parse().expect("PGFANOUT_TEST_PG_PORT is a port number")
}

/// Creates (or resets) a login role with the given password and attributes.
pub async fn create_role(role: &str, password: &str, attributes: &str, encryption: &str) {
    let client = admin("postgres").await;
    client.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await.unwrap();
    client.batch_execute(&format!("SET password_encryption = '{encryption}'")).await.unwrap();
    client.batch_execute(&format!("CREATE ROLE {role} LOGIN {attributes} PASSWORD '{password}'")).await.unwrap();
}

/// Creates a fresh database `name` with a table `cities (id int primary key,
/// name text)` published as `publication`; returns a SQL session on it.
pub async fn database_with_table(name: &str, publication: &str) -> Client {
    let postgres = admin("postgres").await;
    postgres
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
            &[&name],
        )
        .await
        .unwrap();
    postgres.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    postgres.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let client = admin(name).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE cities (id int PRIMARY KEY, name text NOT NULL);
             CREATE PUBLICATION {publication} FOR TABLE cities;"
        ))
        .await
        .unwrap();
    client
}

pub async fn confirmed_flush(client: &Client, slot: &str) -> Option<Lsn> {
    let row = client
        .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .unwrap();
    row.get::<_, Option<String>>(0).map(|text| text.parse().unwrap())
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
