//! Value conversion against a real PostgreSQL 15 (the local stack, `PGFANOUT_TEST_PG_URL`).
//!
//! Every value of a type zoo — each built-in type this crate converts, an enum, domains (also
//! over a domain and over an array), arrays of all of them with NULLs, several dimensions and
//! explicit bounds — is fetched twice: as text (`simple_query`) and as binary (`query`, with a
//! `FromSql` that keeps the raw bytes). Both must convert to the same `Value`, rendering that
//! value must give back the server's text byte for byte, and encoding it must give back the
//! server's binary bytes. A second test sends the same zoo through a real `pgoutput` slot, in
//! text and in binary mode, and checks the decoded tuples against the table's contents.
//!
//! Enum, domain and array types are registered from `pg_type`, as the pipeline does.

use std::error::Error;

use pgoutput::value::{type_oid, TypeKind, TypeName};
use pgoutput::{
    ColumnValue, Decoder, Oid, PgOutputMessage, Relation, TupleColumn, TupleData, TypeRegistry, Value, ValueError,
};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The session settings pgfanout pins on its replication connection.
const SESSION_SETTINGS: &str = "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3; \
     SET timezone = UTC; SET bytea_output = hex";

/// User-defined types of the zoo, created in the test's schema.
const TYPES_SQL: &str = r#"
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'with space', 'quote"d', 'NULL');
    CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
    CREATE DOMAIN small_posint AS posint CHECK (VALUE < 100);
    CREATE DOMAIN email AS text;
    CREATE DOMAIN int_list AS int4[];
    CREATE DOMAIN happy_mood AS mood;
"#;

/// Column type and SQL expressions of its values, one per zoo row (row 3 is all NULL).
const ZOO: &[(&str, [&str; 2])] = &[
    ("bool", ["true", "false"]),
    ("int2", ["'1'", "'-32768'"]),
    ("int4", ["'2'", "'2147483647'"]),
    ("int8", ["'3'", "'-9223372036854775808'"]),
    ("oid", ["'26'", "'4294967295'"]),
    ("float4", ["'1.5'", "'NaN'"]),
    ("float4", ["'-0'", "'3.4028235e38'"]),
    ("float8", ["'0.1'", "'-Infinity'"]),
    ("float8", ["'-0'", "'1e300'"]),
    ("numeric", ["'123456789012345678901234567890.123456789'", "'NaN'"]),
    ("numeric", ["'-0.000100'", "'-Infinity'"]),
    ("numeric", ["'0'", "'Infinity'"]),
    ("text", [r#"'héllo, "wörld" \ ✓'"#, "''"]),
    ("varchar(20)", ["'abc'", r"E'tab\there\nnewline'"]),
    ("char(5)", ["'ab'", "'abcde'"]),
    ("name", ["'pg_class'", "'NULL'"]),
    ("bytea", [r"'\x00ff10'", r"'\x'"]),
    ("uuid", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'00000000-0000-0000-0000-000000000000'"]),
    ("date", ["'2024-02-29'", "'0044-03-15 BC'"]),
    ("date", ["'infinity'", "'-infinity'"]),
    ("date", ["'4714-11-24 BC'", "'5874897-12-31'"]),
    ("time", ["'04:05:06.789'", "'24:00:00'"]),
    ("timetz", ["'12:00:00+05:30'", "'12:00:00-03:00:15'"]),
    ("timetz", ["'00:00:00+00'", "'23:59:59.999999-15:59'"]),
    ("timestamp", ["'2024-01-02 03:04:05.123456'", "'-infinity'"]),
    ("timestamp", ["'0044-03-15 12:00:00 BC'", "'294276-12-31 23:59:59.999999'"]),
    ("timestamptz", ["'2024-01-02 03:04:05.5+02'", "'infinity'"]),
    ("timestamptz", ["'0044-03-15 12:00:00+00 BC'", "'4714-11-24 00:00:00+00 BC'"]),
    ("interval", ["'-1 years +2 mons -3 days 04:05:06.789'", "'0'"]),
    ("interval", ["'-0.5 sec'", "'1 year 1 mon 1 day 1 hour'"]),
    ("interval", ["'-1 mons -1 days -1 sec'", "'2562047788 hours'"]),
    ("json", [r#"'{"b":1, "a":[1,2]}'"#, "'null'"]),
    ("jsonb", [r#"'{"b":1, "a":[1,2, {"c": null}], "é": "\u00e9"}'"#, "'1.50'"]),
    ("xml", ["'<a>x</a>'", "'<b/>'"]),
    ("inet", ["'192.168.0.1/24'", "'::ffff:1.2.3.4'"]),
    ("inet", ["'10.1.2.3'", "'2001:db8::1:0:0:1/64'"]),
    ("cidr", ["'10.0.0.0/8'", "'2001:db8::/32'"]),
    ("cidr", ["'1.2.3.4/32'", "'::1.2.3.4/128'"]),
    ("macaddr", ["'08:00:2b:01:02:03'", "'ff:ff:ff:ff:ff:ff'"]),
    ("macaddr8", ["'08:00:2b:01:02:03:04:05'", "'00:00:00:00:00:00:00:00'"]),
    ("mood", ["'happy'", "'with space'"]),
    ("happy_mood", ["'happy'", r#"'quote"d'"#]),
    ("posint", ["'7'", "'2147483647'"]),
    ("small_posint", ["'42'", "'1'"]),
    ("email", ["'a@b'", "''"]),
    ("int_list", ["'{1,2}'", "'{}'"]),
    ("int4[]", ["'{1,2,NULL}'", "'[0:1][1:2]={{1,NULL},{3,4}}'"]),
    ("int4[]", ["'{{{1},{2}},{{3},{4}}}'", "'{}'"]),
    ("text[]", [r#"ARRAY['a,b', 'say "hi"', 'back\slash', 'NULL', NULL, '', ' x ', '{', 'é']"#, "'{}'"]),
    ("text[]", ["'[-3:-2]={a,b}'", "'{{NULL,NULL},{NULL,NULL}}'"]),
    ("numeric[]", ["'{1.50,NaN,NULL,-Infinity}'", "'{{1},{2}}'"]),
    ("float8[]", ["'{NaN,Infinity,-0,1e-320}'", "'{0.1}'"]),
    ("float4[]", ["'{1.5,-Infinity}'", "'{1e+06}'"]),
    ("bool[]", ["'{t,f,NULL}'", "'{}'"]),
    ("int2[]", ["'{1,-2}'", "'{}'"]),
    ("int8[]", ["'{1,-2}'", "'{}'"]),
    ("oid[]", ["'{1,4294967295}'", "'{}'"]),
    ("bytea[]", [r#"'{"\\x00ff",NULL,"\\x"}'"#, "'{}'"]),
    ("varchar[]", ["'{a,\"b c\"}'", "'{}'"]),
    ("char(2)[]", ["'{a,bc}'", "'{}'"]),
    ("name[]", ["'{pg_class,\"a b\"}'", "'{}'"]),
    ("uuid[]", ["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'", "'{}'"]),
    ("date[]", ["'{2024-01-01,infinity,0044-03-15 BC}'", "'{}'"]),
    ("time[]", ["'{00:00:00,24:00:00}'", "'{}'"]),
    ("timetz[]", ["'{00:00:00+01,12:00:00-03:00:15}'", "'{}'"]),
    ("timestamp[]", ["'{2024-01-02 03:04:05,-infinity}'", "'{}'"]),
    ("timestamptz[]", ["'{infinity,\"2024-01-01 00:00:00+00\"}'", "'{}'"]),
    ("interval[]", ["'{\"1 day\",\"-00:00:01\",00:00:00}'", "'{}'"]),
    ("json[]", [r#"ARRAY['{"a": 1}', '[1,2]']::json[]"#, "'{}'"]),
    ("jsonb[]", [r#"ARRAY['{"a": 1}', 'null']::jsonb[]"#, "'{}'"]),
    ("xml[]", ["ARRAY['<a/>']::xml[]", "'{}'"]),
    ("inet[]", ["'{192.168.0.1/24,::1}'", "'{}'"]),
    ("cidr[]", ["'{10.0.0.0/8}'", "'{}'"]),
    ("macaddr[]", ["'{08:00:2b:01:02:03}'", "'{}'"]),
    ("macaddr8[]", ["'{08:00:2b:01:02:03:04:05}'", "'{}'"]),
    ("mood[]", ["'{happy,NULL,\"with space\",\"NULL\"}'", "'{}'"]),
    ("posint[]", ["'{1,2}'", "'{{1},{2}}'"]),
    ("email[]", ["'{a@b,\"\"}'", "'{}'"]),
];

/// Types this crate does not convert: their values must pass through, never be dropped.
const PASSTHROUGH: &[(&str, &str)] = &[
    ("point", "'(1,2)'"),
    ("int4range", "'[1,5)'"),
    ("tsvector", "'a b'"),
    ("\"char\"", "'x'"),
    ("point[]", "'{\"(1,2)\"}'"),
    ("money", "'1.50'"),
];

/// Raw bytes of a binary-format result column.
struct RawBytes(Vec<u8>);

impl<'a> FromSql<'a> for RawBytes {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawBytes(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A session with pgfanout's settings, in a fresh schema holding the zoo's types.
async fn connect(schema: &str) -> Client {
    let url = std::env::var("PGFANOUT_TEST_PG_URL").expect(
        "PGFANOUT_TEST_PG_URL is not set: start the local stack (deploy/local/stack.sh start DIR) and source DIR/env",
    );
    let (client, connection) =
        tokio_postgres::connect(&url, NoTls).await.unwrap_or_else(|err| panic!("connecting to {url}: {err}"));
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            panic!("connection to PostgreSQL failed: {err}");
        }
    });
    client.batch_execute(SESSION_SETTINGS).await.expect("session settings");
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}, pg_catalog;"
        ))
        .await
        .expect("fresh schema");
    client.batch_execute(TYPES_SQL).await.expect("zoo types");
    client
}

/// Registers every type of `schema` from `pg_type`, the way the pipeline will.
async fn registry_from_catalog(client: &Client, schema: &str) -> TypeRegistry {
    let rows = client
        .query(
            "SELECT t.oid, t.typtype::text, t.typcategory::text, t.typelem, t.typbasetype, n.nspname::text, \
                    t.typname::text
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .expect("pg_type");
    let mut registry = TypeRegistry::new();
    for row in rows {
        let oid = Oid(row.get(0));
        let byte = |index: usize| row.get::<_, String>(index).bytes().next().expect("one-character column");
        if let Some(kind) = TypeKind::from_pg_type(byte(1), byte(2), Oid(row.get(3)), Oid(row.get(4))) {
            registry.register(oid, kind).expect("user types are not built in");
        }
        registry.set_name(oid, TypeName { namespace: row.get(5), name: row.get(6) });
    }
    assert!(
        matches!(registry.kind(oid_of(client, "mood").await), Some(TypeKind::Enum)),
        "catalog registration found the enum"
    );
    registry
}

async fn oid_of(client: &Client, type_name: &str) -> Oid {
    let row = client.query_one(&format!("SELECT '{type_name}'::regtype::oid"), &[]).await.expect("regtype");
    Oid(row.get(0))
}

/// The first row of a simple (text-format) query.
async fn text_row(client: &Client, sql: &str) -> Vec<Option<String>> {
    let messages = client.simple_query(sql).await.unwrap_or_else(|err| panic!("{sql}: {err}"));
    let row = messages
        .into_iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"));
    (0..row.len()).map(|index| row.get(index).map(str::to_owned)).collect()
}

/// A value in both formats with its declared type (for a domain, the domain: RowDescription
/// would report the base type).
struct Fetched {
    type_oid: Oid,
    text: String,
    binary: Vec<u8>,
}

async fn fetch(client: &Client, type_name: &str, expr: &str) -> Fetched {
    let select = format!("SELECT ({expr})::{type_name}");
    let text_sql = format!("SELECT v, pg_typeof(v)::oid FROM ({select}) AS s(v)");
    let row = text_row(client, &text_sql).await;
    let text = row[0].clone().unwrap_or_else(|| panic!("{select}: NULL"));
    let type_oid = Oid(row[1].as_deref().and_then(|oid| oid.parse().ok()).expect("pg_typeof"));
    let binary_row = client.query_one(&select, &[]).await.unwrap_or_else(|err| panic!("{select}: {err}"));
    let RawBytes(binary) = binary_row.get::<_, Option<RawBytes>>(0).expect("not NULL");
    Fetched { type_oid, text, binary }
}

#[tokio::test]
async fn text_and_binary_agree_with_the_server_for_every_type() {
    let schema = "pgoutput_values_select";
    let client = connect(schema).await;
    let registry = registry_from_catalog(&client, schema).await;
    let mut checked = 0;
    for (type_name, values) in ZOO {
        for expr in values {
            let case = format!("{expr}::{type_name}");
            let Fetched { type_oid, text, binary } = fetch(&client, type_name, expr).await;
            let from_text = registry
                .decode_text(type_oid, text.as_bytes())
                .unwrap_or_else(|err| panic!("{case} text {text:?}: {err:?}"));
            let from_binary = registry
                .decode_binary(type_oid, &binary)
                .unwrap_or_else(|err| panic!("{case} binary {binary:?}: {err:?}"));
            assert!(
                !matches!(from_text, Value::Unknown { .. } | Value::UnknownBinary { .. }),
                "{case} converts: {from_text:?}"
            );
            assert_eq!(from_text, from_binary, "{case}: text {text:?} and binary {binary:?} convert alike");
            assert_eq!(from_text.to_pg_text().as_deref(), Some(text.as_str()), "{case}: renders as the server prints");
            assert_eq!(
                from_binary.to_pg_binary().as_deref(),
                Some(binary.as_slice()),
                "{case}: encodes as the server sends"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, ZOO.len() * 2);
}

#[tokio::test]
async fn types_without_a_conversion_pass_through() {
    let schema = "pgoutput_values_passthrough";
    let client = connect(schema).await;
    let registry = registry_from_catalog(&client, schema).await;
    for (type_name, expr) in PASSTHROUGH {
        let Fetched { type_oid, text, binary } = fetch(&client, type_name, expr).await;
        assert_eq!(
            registry.decode_text(type_oid, text.as_bytes()),
            Ok(Value::Unknown { type_oid, text: text.clone() })
        );
        let from_binary = registry.decode_binary(type_oid, &binary).expect("binary passthrough");
        assert_eq!(from_binary, Value::UnknownBinary { type_oid, bytes: binary.clone().into() }, "{type_name}");
    }
}

#[tokio::test]
async fn malformed_text_of_a_known_type_is_an_error_naming_it() {
    let registry = TypeRegistry::new();
    // A session with another DateStyle prints dates this crate refuses rather than misreads.
    let err = registry.decode_text(type_oid::DATE, b"03/15/2024").unwrap_err();
    assert!(matches!(err, ValueError::InvalidText { type_oid: type_oid::DATE, ref text, .. } if text == "03/15/2024"));
}

/// Decodes the pgoutput messages a slot returns, collecting relations and inserted rows.
fn decode_slot_changes(payloads: Vec<Vec<u8>>, registry: &mut TypeRegistry) -> (Relation, Vec<TupleData>) {
    let mut decoder = Decoder::new(1);
    let mut relation = None;
    let mut rows = Vec::new();
    for payload in payloads {
        match decoder.decode(payload.into()).expect("pgoutput decodes") {
            PgOutputMessage::Type(message) => registry.observe(&message),
            PgOutputMessage::Relation(message) => relation = Some(message),
            PgOutputMessage::Insert(insert) => rows.push(insert.new_tuple),
            _ => {}
        }
    }
    (relation.expect("a Relation message precedes the inserts"), rows)
}

#[tokio::test]
async fn pgoutput_tuples_in_text_and_binary_mode_convert_to_the_table_contents() {
    let schema = "pgoutput_values_slot";
    let client = connect(schema).await;
    let columns: Vec<String> =
        ZOO.iter().enumerate().map(|(index, (type_name, _))| format!("c{index} {type_name}")).collect();
    let slots = ["pgoutput_values_text", "pgoutput_values_binary"];
    for slot in slots {
        client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("drop old slot");
    }
    client
        .batch_execute(&format!(
            "CREATE TABLE zoo (id int8 PRIMARY KEY, {}, c_point point);
             DROP PUBLICATION IF EXISTS pgoutput_values_pub;
             CREATE PUBLICATION pgoutput_values_pub FOR TABLE zoo;",
            columns.join(", ")
        ))
        .await
        .expect("zoo table");
    for slot in slots {
        client
            .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
            .await
            .expect("create slot");
    }
    // The stack runs with synchronous_commit=off: a commit becomes decodable only once the WAL
    // writer flushes it. Committing synchronously makes the rows decodable at once.
    client.batch_execute("SET synchronous_commit = on").await.expect("synchronous commit");
    for row in 0..3 {
        let values: Vec<String> = ZOO
            .iter()
            .map(|(type_name, values)| format!("({})::{type_name}", values.get(row).copied().unwrap_or("NULL")))
            .collect();
        let point = if row < 2 { "'(1,2)'" } else { "NULL" };
        client
            .batch_execute(&format!("INSERT INTO zoo VALUES ({row}, {}, {point})", values.join(", ")))
            .await
            .unwrap_or_else(|err| panic!("insert row {row}: {err}"));
    }

    let mut registry = registry_from_catalog(&client, schema).await;
    let mut decoded = Vec::new();
    for (slot, binary) in [(slots[0], "false"), (slots[1], "true")] {
        let payloads: Vec<Vec<u8>> = client
            .query(
                "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, 'proto_version', '1', \
                 'publication_names', 'pgoutput_values_pub', 'binary', $2)",
                &[&slot, &binary],
            )
            .await
            .expect("slot changes")
            .iter()
            .map(|row| row.get(0))
            .collect();
        let (relation, rows) = decode_slot_changes(payloads, &mut registry);
        assert_eq!(rows.len(), 3, "{slot}");
        let binary_columns =
            rows.iter().flat_map(|row| &row.columns).filter(|column| matches!(column, TupleColumn::Binary(_))).count();
        assert_eq!(binary_columns > 0, binary == "true", "{slot}: binary mode sends binary columns");
        let values: Vec<Vec<ColumnValue>> = rows
            .iter()
            .map(|row| registry.decode_tuple(&relation, row).unwrap_or_else(|err| panic!("{slot}: {err:?}")))
            .collect();
        decoded.push((relation, values));
        client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.expect("drop slot");
    }
    let mood = oid_of(&client, "mood").await;
    assert_eq!(registry.type_name(mood).map(|name| name.name.as_str()), Some("mood"), "Type message observed");

    let (relation, from_text_mode) = &decoded[0];
    let (_, from_binary_mode) = &decoded[1];
    for (row, (text_mode, binary_mode)) in from_text_mode.iter().zip(from_binary_mode).enumerate() {
        let table_row = text_row(&client, &format!("SELECT * FROM zoo WHERE id = {row}")).await;
        for (index, column) in relation.columns.iter().enumerate() {
            let case =
                format!("row {row} column {} ({})", column.name, ZOO.get(index.wrapping_sub(1)).map_or("", |z| z.0));
            let expected = match &table_row[index] {
                None => Value::Null,
                Some(text) => registry.decode_text(column.type_oid, text.as_bytes()).expect("table text converts"),
            };
            assert_eq!(text_mode[index], ColumnValue::Value(expected.clone()), "{case}: text mode");
            match (&expected, &binary_mode[index]) {
                // point has no conversion: binary mode passes its send format through.
                (Value::Unknown { type_oid, .. }, ColumnValue::Value(Value::UnknownBinary { type_oid: found, .. })) => {
                    assert_eq!(type_oid, found, "{case}")
                }
                (expected, actual) => assert_eq!(actual, &ColumnValue::Value(expected.clone()), "{case}: binary mode"),
            }
            if let Some(text) = &table_row[index] {
                assert_eq!(expected.to_pg_text().as_ref(), Some(text), "{case}: renders as the server prints");
            }
        }
    }
}
