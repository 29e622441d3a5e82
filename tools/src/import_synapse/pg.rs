//! `myelin import synapse --postgres CONNINFO`: a Synapse on PostgreSQL is
//! imported by first copying the tables the importer reads into a SQLite
//! staging file with the same tables and columns, which the one importer
//! then reads as it reads a Synapse on SQLite (issue #23 §2). One reader of
//! Synapse's schema, whichever database it lives in; the staging file is
//! removed afterwards.
//!
//! Values keep their kind: integers as SQLite integers, booleans as 0/1,
//! `bytea` as blobs, everything else (text, JSON kept as text) as text.
//! Rows are streamed from PostgreSQL and written in one SQLite transaction.
//! A database with other sessions connected (Synapse still running, or its
//! workers) is refused.

use std::path::Path;

use postgres::{Client, GenericClient, NoTls, fallible_iterator::FallibleIterator};
use rusqlite::{Connection, params_from_iter, types::Value};

use crate::Failure;

/// The tables the importer reads, and the indexes its queries use.
const TABLES: &[&str] = &[
    "users",
    "profiles",
    "devices",
    "access_tokens",
    "account_data",
    "room_account_data",
    "e2e_device_keys_json",
    "e2e_one_time_keys_json",
    "e2e_fallback_keys_json",
    "e2e_cross_signing_keys",
    "e2e_cross_signing_signatures",
    "rooms",
    "events",
    "event_json",
    "rejections",
    "event_to_state_groups",
    "state_groups_state",
    "state_group_edges",
    "current_state_events",
    "local_current_membership",
    "room_aliases",
    "receipts_linearized",
    "partial_state_rooms",
    "local_media_repository",
    "remote_media_cache",
    "push_rules",
    "push_rules_enable",
    "e2e_room_keys_versions",
    "e2e_room_keys",
    "destinations",
    "destination_rooms",
    "federation_stream_position",
    "device_federation_outbox",
];

const INDEXES: &[&str] = &[
    "CREATE INDEX events_room ON events (room_id, stream_ordering)",
    "CREATE UNIQUE INDEX event_json_id ON event_json (event_id)",
    "CREATE INDEX rejections_id ON rejections (event_id)",
    "CREATE INDEX event_groups_id ON event_to_state_groups (event_id)",
    "CREATE INDEX group_state ON state_groups_state (state_group)",
    "CREATE INDEX group_edges ON state_group_edges (state_group)",
    "CREATE INDEX current_state_room ON current_state_events (room_id)",
    "CREATE INDEX room_keys_user ON e2e_room_keys (user_id, version)",
    "CREATE INDEX push_rules_user ON push_rules (user_name)",
    "CREATE INDEX push_enable_user ON push_rules_enable (user_name)",
];

fn pg(e: postgres::Error) -> Failure {
    Failure::runtime(format!("reading the Synapse PostgreSQL database: {e}"))
}

fn lite(e: rusqlite::Error) -> Failure {
    Failure::runtime(format!("writing the staging file: {e}"))
}

/// How a PostgreSQL column is selected and stored.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Bool,
    Bytes,
    Text,
}

fn kind_of(data_type: &str) -> Kind {
    match data_type {
        "smallint" | "integer" | "bigint" => Kind::Int,
        "boolean" => Kind::Bool,
        "bytea" => Kind::Bytes,
        _ => Kind::Text,
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Copies one table; returns its rows, or `None` if this Synapse has no such table.
fn copy_table(client: &mut impl GenericClient, out: &Connection, table: &str) -> Result<Option<u64>, Failure> {
    let columns: Vec<(String, Kind)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .map_err(pg)?
        .iter()
        .map(|r| (r.get::<_, String>(0), kind_of(&r.get::<_, String>(1))))
        .collect();
    if columns.is_empty() {
        return Ok(None);
    }
    let decls: Vec<String> = columns
        .iter()
        .map(|(name, kind)| {
            let t = match kind {
                Kind::Int | Kind::Bool => "INTEGER",
                Kind::Bytes => "BLOB",
                Kind::Text => "TEXT",
            };
            format!("{} {t}", quote(name))
        })
        .collect();
    out.execute(&format!("CREATE TABLE {} ({})", quote(table), decls.join(", ")), []).map_err(lite)?;
    let selected: Vec<String> = columns
        .iter()
        .map(|(name, kind)| match kind {
            Kind::Int => format!("{}::int8", quote(name)),
            Kind::Bool | Kind::Bytes => quote(name),
            Kind::Text => format!("{}::text", quote(name)),
        })
        .collect();
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let mut insert =
        out.prepare(&format!("INSERT INTO {} VALUES ({})", quote(table), marks.join(", "))).map_err(lite)?;
    let query = format!("SELECT {} FROM {}", selected.join(", "), quote(table));
    let mut rows = client.query_raw(query.as_str(), std::iter::empty::<&str>()).map_err(pg)?;
    let mut n = 0u64;
    while let Some(row) = rows.next().map_err(pg)? {
        let mut values = Vec::with_capacity(columns.len());
        for (i, (_, kind)) in columns.iter().enumerate() {
            let v = match kind {
                Kind::Int => row.try_get::<_, Option<i64>>(i).map(|v| v.map_or(Value::Null, Value::Integer)),
                Kind::Bool => {
                    row.try_get::<_, Option<bool>>(i).map(|v| v.map_or(Value::Null, |b| Value::Integer(b.into())))
                }
                Kind::Bytes => row.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map_or(Value::Null, Value::Blob)),
                Kind::Text => row.try_get::<_, Option<String>>(i).map(|v| v.map_or(Value::Null, Value::Text)),
            };
            values.push(v.map_err(pg)?);
        }
        insert.execute(params_from_iter(values)).map_err(lite)?;
        n += 1;
        if n.is_multiple_of(100_000) {
            eprintln!("import: staging {table}: {n} rows");
        }
    }
    Ok(Some(n))
}

/// Refuses a database that other sessions are connected to (a running Synapse).
fn refuse_connected(client: &mut Client) -> Result<(), Failure> {
    let others: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .map_err(pg)?
        .get(0);
    if others > 0 {
        return Err(Failure::usage(format!(
            "Synapse is running ({others} other sessions are connected to its database): stop it before importing"
        )));
    }
    Ok(())
}

/// Copies what the importer reads from the PostgreSQL database `conninfo`
/// (`host=… port=… user=… dbname=…`, or a `postgresql://` URL) into a new
/// SQLite file at `staging`.
pub(crate) fn stage(conninfo: &str, staging: &Path) -> Result<(), Failure> {
    let mut client = Client::connect(conninfo, NoTls)
        .map_err(|e| Failure::usage(format!("cannot connect to the Synapse database: {e}")))?;
    refuse_connected(&mut client)?;
    let _ = std::fs::remove_file(staging);
    let mut out = Connection::open(staging).map_err(lite)?;
    out.pragma_update(None, "journal_mode", "OFF").map_err(lite)?;
    out.pragma_update(None, "synchronous", "OFF").map_err(lite)?;
    // One snapshot of the whole database: the tables agree with each other.
    let mut tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .map_err(pg)?;
    let lite_tx = out.transaction().map_err(lite)?;
    for table in TABLES {
        match copy_table(&mut tx, &lite_tx, table)? {
            Some(n) => eprintln!("import: staged {table}: {n} rows"),
            None => tracing::info!(table, "this Synapse has no such table"),
        }
    }
    for index in INDEXES {
        // A table this Synapse lacks has no index either.
        let _ = lite_tx.execute(index, []);
    }
    lite_tx.commit().map_err(lite)?;
    tx.commit().map_err(pg)?;
    Ok(())
}
