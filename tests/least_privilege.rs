//! End-to-end: pgfanout replicates as the least-privilege role that
//! `sql/pgfanout_role.sql` creates (LOGIN, REPLICATION, SELECT on the
//! published tables only, no superuser), with the publication made by the
//! tables' owner through `sql/pgfanout_publication.sql`. Both scripts are run
//! twice, as an operator would after adding a table, to prove them idempotent.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const ROLE: &str = "e2e_lp_pgfanout";
const OWNER: &str = "e2e_lp_owner";
/// The role's password: the local server asks roles other than the
/// superuser for one over TCP, as a production server would.
const PASSWORD: &str = "lp-test-password";

/// `url` with its user replaced by `user`.
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

/// `pgfanout check` on `config`: whether it passed, and what it printed.
fn run_check(config: &str) -> (bool, String) {
    let config_path = std::env::temp_dir().join(format!("pgfanout-least-privilege-{}.toml", std::process::id()));
    std::fs::write(&config_path, config).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["--log-format", "json", "check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    std::fs::remove_file(&config_path).unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    (check.status.success(), output)
}

#[tokio::test(flavor = "multi_thread")]
async fn least_privilege_role_streams_into_redis() {
    let db = create_database("e2e_least_privilege").await;
    // Roles are cluster-wide: start from none, so the role script creates them.
    db.client
        .batch_execute(&format!(
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                 DROP OWNED BY {ROLE} CASCADE; DROP ROLE {ROLE}; END IF; END $$;
             DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}') THEN
                 CREATE ROLE {OWNER} LOGIN; END IF; END $$;
             GRANT CREATE ON DATABASE e2e_least_privilege TO {OWNER};
             CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
             CREATE TABLE secrets (id int PRIMARY KEY, token text);
             ALTER TABLE items OWNER TO {OWNER};
             ALTER TABLE secrets OWNER TO {OWNER};"
        ))
        .await
        .unwrap();
    run_sql_script(
        &db,
        "postgres",
        "pgfanout_role.sql",
        &[("role", ROLE), ("password", PASSWORD), ("tables", "public.items")],
    );
    let role_db = TestDatabase { name: db.name.clone(), url: as_user(&db.url, ROLE), client: connect(&db.url).await };
    let http = format!("127.0.0.1:{}", free_port());
    // The password from a file (a mounted secret), never from the config.
    let password_file = std::env::temp_dir().join(format!("pgfanout-least-privilege-{}.password", std::process::id()));
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    // A Redis server of its own: no logical database shared with other tests.
    let redis_server = OwnRedisServer::start().await;
    let config = |create_publication: bool| {
        redis_config(&role_db, &redis_server.url, &http, &[("public.items", "item:{id}")]).replace(
            "status_interval_ms = 200",
            &format!(
                "status_interval_ms = 200\ncreate_publication = {create_publication}\nheartbeat_interval_secs = 1\n\
                 password_file = \"{}\"",
                password_file.display()
            ),
        )
    };

    // Asked to make the publication itself, the role cannot: check says who
    // must do it, with which script.
    let (ok, output) = run_check(&config(true));
    assert!(!ok, "check passed although the role cannot publish public.items:\n{output}");
    assert!(
        output.lines().any(|line| line.starts_with("problem: ")
            && line.contains("may not add public.items to publication")
            && line.contains("sql/pgfanout_publication.sql")),
        "no problem line naming the missing ownership and the script:\n{output}"
    );

    for _ in 0..2 {
        run_sql_script(
            &db,
            "postgres",
            "pgfanout_role.sql",
            &[("role", ROLE), ("password", PASSWORD), ("tables", "public.items")],
        );
        run_sql_script(
            &db,
            OWNER,
            "pgfanout_publication.sql",
            &[("publication", &db.name), ("tables", "public.items")],
        );
    }

    let row = db
        .client
        .query_one(
            "SELECT rolsuper, rolreplication, rolcanlogin, rolcreaterole, rolcreatedb,
                    has_table_privilege(rolname, 'public.items', 'SELECT'),
                    has_table_privilege(rolname, 'public.items', 'INSERT'),
                    has_table_privilege(rolname, 'public.secrets', 'SELECT')
             FROM pg_roles WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .unwrap();
    let attributes: Vec<bool> = (0..8).map(|i| row.get(i)).collect();
    assert_eq!(
        attributes,
        [false, true, true, false, false, true, false, false],
        "role attributes (super, replication, login, createrole, createdb) and privileges (items SELECT, items INSERT, secrets SELECT)"
    );
    let published: Vec<String> = db
        .client
        .query("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1", &[&db.name])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(published, ["public.items"]);

    db.client.batch_execute("INSERT INTO items VALUES (1, 'before start', 1.50)").await.unwrap();
    let mut redis = redis_connection(&redis_server.url).await;
    let config = config(false);

    // `check` as the role finds nothing missing (it only reads).
    let (ok, output) = run_check(&config);
    assert!(ok, "check as {ROLE} failed:\n{output}");

    let pgfanout = Pgfanout::start("e2e_least_privilege", &config, &http);
    wait_until("pgfanout streams as the least-privilege role", Duration::from_secs(30), || async {
        http_get(&http, "/readyz").await.is_some()
    })
    .await;
    db.client
        .batch_execute(
            "INSERT INTO items VALUES (2, 'two', 2.00), (3, 'three', 3.00);
             UPDATE items SET price = 2.25 WHERE id = 2;
             DELETE FROM items WHERE id = 3;
             INSERT INTO secrets VALUES (1, 'not for pgfanout');",
        )
        .await
        .unwrap();
    // Rows from before the slot existed are not copied (no initial snapshot).
    db.client.batch_execute("DELETE FROM items WHERE id = 1").await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &pgfanout).await;

    // The heartbeat works without any grant beyond the role script's.
    wait_until("a heartbeat written as the least-privilege role", Duration::from_secs(30), || async {
        pgfanout.log_text().contains("heartbeat written")
    })
    .await;
    let log = pgfanout.log_text();
    assert!(!log.contains("cannot watch the source"), "the role lacks a privilege:\n{log}");
    assert!(!log.contains("permission denied"), "the role lacks a privilege:\n{log}");

    // A restart resumes as the role too: the slot and source checks on an
    // existing slot, and what was written while it was down.
    let mut pgfanout = pgfanout;
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(30)).await, Some(0), "{}", pgfanout.log_text());
    db.client
        .batch_execute(
            "INSERT INTO items VALUES (4, 'while stopped', 4.00); UPDATE items SET name = 'TWO' WHERE id = 2",
        )
        .await
        .unwrap();
    let pgfanout = Pgfanout::start("e2e_least_privilege_again", &config, &http);
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &pgfanout).await;
    let log = pgfanout.log_text();
    assert!(!log.contains("permission denied"), "the role lacks a privilege after a restart:\n{log}");
    drop(pgfanout);
    std::fs::remove_file(&password_file).unwrap();
}
