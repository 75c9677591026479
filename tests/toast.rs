//! TOAST and replica identity, streamed from a real PostgreSQL and read back with the
//! independent Python reader.
//!
//! Postgres stores a value larger than about 2 kB out of line (TOAST). An UPDATE that does
//! not touch such a value does not log it, so pgoutput sends the new row with that column
//! marked "unchanged, not sent" ('u'). What the lake must hold:
//! - REPLICA IDENTITY DEFAULT: the column is null and `_unchanged` names it; never a
//!   placeholder string;
//! - REPLICA IDENTITY FULL: the old row is sent too, so the real value is filled in and
//!   `_unchanged` is null.
//!
//! Deletes carry the key under DEFAULT and the whole old row (TOAST values included)
//! under FULL.
//!
//! The README's DuckDB current-state query, read from README.md, is run over the lake
//! and must give the source table, TOAST values included.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::lake::{
    Row, assert_no_duplicates, in_change_order, op, readme_current_state_query, wait_caught_up,
};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgServer, duckdb_query, read_delta};

const CATCH_UP: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(30);

/// Tables of the test: (name, replica identity).
const TABLES: [(&str, &str); 2] = [("orders", "DEFAULT"), ("orders_full", "FULL")];

fn lake_table(lake: &std::path::Path, table: &str) -> String {
    lake.join("public").join(table).display().to_string()
}

/// `big(seed)`: 10,240 characters of chained md5 hex, which pglz cannot shrink, so the
/// value is stored out of line whatever the compression setting.
const BIG_FUNCTION: &str = "CREATE FUNCTION big(seed text) RETURNS text LANGUAGE sql IMMUTABLE AS
    $$ SELECT string_agg(md5($1 || ':' || i), '' ORDER BY i) FROM generate_series(1, 320) i $$;";

/// The changes made to each table, in order; every update sets a distinct status so the
/// test can find its row in the change log.
fn workload(table: &str) -> String {
    format!(
        "INSERT INTO {table} VALUES (1, 'new', big('a')), (2, 'new', big('b')),
                                    (3, 'new', NULL), (4, 'new', 'small'), (5, 'new', big('e'));
         UPDATE {table} SET status = 'paid' WHERE id IN (1, 2, 3, 4);
         UPDATE {table} SET note = big('c'), status = 'rewritten' WHERE id = 2;
         UPDATE {table} SET status = 'shipped' WHERE id = 2;
         BEGIN;
           UPDATE {table} SET status = 'once' WHERE id = 5;
           UPDATE {table} SET status = 'twice' WHERE id = 5;
         COMMIT;
         UPDATE {table} SET note = NULL, status = 'nulled' WHERE id = 1;
         UPDATE {table} SET status = 'cleared' WHERE id = 1;
         DELETE FROM {table} WHERE id = 2;
         DELETE FROM {table} WHERE id = 4;"
    )
}

/// The source table's rows: id → (status, note).
async fn source_rows(
    db: &tokio_postgres::Client,
    table: &str,
) -> BTreeMap<i64, (Option<String>, Option<String>)> {
    db.query(&format!("SELECT id::int8, status, note FROM {table}"), &[])
        .await
        .expect("query source")
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect()
}

/// The value of `big(seed)`, as Postgres computes it.
async fn big(db: &tokio_postgres::Client, seed: &str) -> String {
    db.query_one("SELECT big($1)", &[&seed])
        .await
        .expect("big()")
        .get(0)
}

fn unchanged(row: &Row) -> Vec<&str> {
    match &row["_unchanged"] {
        Value::Null => Vec::new(),
        Value::Array(names) => names.iter().map(|n| n.as_str().expect("a name")).collect(),
        other => panic!("_unchanged is {other}"),
    }
}

/// The one change-log row of `id` with `_op` = `op_code` and `status`.
fn row_with<'a>(rows: &'a [Row], id: i64, op_code: &str, status: &str) -> &'a Row {
    let found: Vec<&Row> = rows
        .iter()
        .filter(|r| r["id"] == json!(id) && op(r) == op_code && r["status"] == json!(status))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "rows of id {id} {op_code} {status}: {found:?}"
    );
    found[0]
}

/// Folds the change log to the current state the way the README's query does: the last
/// row per id, minus deletes, with a column listed in `_unchanged` taken from the last
/// row of that id that did send it.
fn fold_carrying_unchanged(rows: &[Row]) -> BTreeMap<i64, Row> {
    let mut state: BTreeMap<i64, Row> = BTreeMap::new();
    for row in in_change_order(rows.to_vec()) {
        let id = row["id"].as_i64().expect("id");
        match op(&row) {
            "d" => {
                state.remove(&id);
            }
            _ => {
                let mut row = row.clone();
                for column in unchanged(&row.clone()) {
                    let previous = state.get(&id).expect("an unchanged value follows a row");
                    row.insert(column.to_owned(), previous[column].clone());
                }
                state.insert(id, row);
            }
        }
    }
    state
}

fn note_summary(value: &Value) -> String {
    match value {
        Value::String(s) if s.len() > 40 => format!("<{} chars {}…>", s.len(), &s[..12]),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_toast_values_are_null_and_listed_or_filled_in_under_full() {
    let pg = PgServer::start();
    let url = pg.create_database("toast").await;
    let db = pg.connect("toast").await;
    db.batch_execute(BIG_FUNCTION).await.expect("create big()");
    for (table, identity) in TABLES {
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, status text, note text);
             ALTER TABLE {table} REPLICA IDENTITY {identity};"
        ))
        .await
        .expect("create table");
    }
    let lake = tempfile::tempdir().expect("temp dir");
    let tables: Vec<String> = TABLES.iter().map(|(t, _)| format!("public.{t}")).collect();
    let table_refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "toast",
        &table_refs,
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(30));

    for (table, _) in TABLES {
        db.batch_execute(&workload(table)).await.expect("workload");
    }
    // The big values really are stored out of line: 10 kB that compression cannot shrink.
    let stored: i32 = db
        .query_one("SELECT pg_column_size(note) FROM orders WHERE id = 5", &[])
        .await
        .expect("column size")
        .get(0);
    assert!(stored > 8000, "big() is stored in {stored} bytes");
    wait_caught_up(&db, "toast", CATCH_UP).await;

    let (a, b, c, e) = (
        big(&db, "a").await,
        big(&db, "b").await,
        big(&db, "c").await,
        big(&db, "e").await,
    );
    let written: Vec<Value> = [&a, &b, &c, &e, "small"].iter().map(|s| json!(s)).collect();

    for (table, identity) in TABLES {
        let read = read_delta(&lake_table(lake.path(), table), &[]);
        let rows = read.rows;
        assert_no_duplicates(&rows);
        let full = identity == "FULL";
        // Never a placeholder: every note in the lake is a value the source held.
        for row in &rows {
            let note = &row["note"];
            assert!(
                note.is_null() || written.contains(note),
                "{table}: note {} is not a value the source held",
                note_summary(note)
            );
        }
        // Updates that left a TOASTed note alone.
        for (id, status, value) in [
            (1, "paid", &a),
            (2, "paid", &b),
            (2, "shipped", &c),
            (5, "once", &e),
            (5, "twice", &e),
            (1, "cleared", &a),
        ] {
            let row = row_with(&rows, id, "u", status);
            if id == 1 && status == "cleared" {
                // The note was set to NULL before: a NULL is sent, never "unchanged".
                assert_eq!(row["note"], Value::Null, "{table} id {id} {status}");
                assert!(unchanged(row).is_empty(), "{table} id {id} {status}");
            } else if full {
                assert_eq!(&row["note"], &json!(value), "{table} id {id} {status}");
                assert!(unchanged(row).is_empty(), "{table} id {id} {status}");
            } else {
                assert_eq!(row["note"], Value::Null, "{table} id {id} {status}");
                assert_eq!(unchanged(row), ["note"], "{table} id {id} {status}");
            }
        }
        // Values that are not stored out of line are always sent.
        let row = row_with(&rows, 3, "u", "paid");
        assert_eq!(row["note"], Value::Null);
        assert!(unchanged(row).is_empty(), "{table}: a NULL is sent");
        let row = row_with(&rows, 4, "u", "paid");
        assert_eq!(row["note"], json!("small"));
        assert!(
            unchanged(row).is_empty(),
            "{table}: an inline value is sent"
        );
        // Updates that set the note carry it, TOASTed or NULL.
        let row = row_with(&rows, 2, "u", "rewritten");
        assert_eq!(
            row["note"],
            json!(c),
            "{table}: the update that set big('c')"
        );
        assert!(unchanged(row).is_empty());
        let row = row_with(&rows, 1, "u", "nulled");
        assert_eq!(row["note"], Value::Null);
        assert!(unchanged(row).is_empty());

        // Deletes: the key under DEFAULT, the whole old row under FULL.
        let deletes: Vec<&Row> = rows.iter().filter(|r| op(r) == "d").collect();
        assert_eq!(deletes.len(), 2, "{table}: {deletes:?}");
        let delete = |id: i64| -> &Row {
            deletes
                .iter()
                .find(|r| r["id"] == json!(id))
                .unwrap_or_else(|| panic!("{table}: no delete of {id}"))
        };
        if full {
            assert_eq!(delete(2)["status"], json!("shipped"));
            assert_eq!(
                delete(2)["note"],
                json!(c),
                "{table}: FULL sends the TOAST value"
            );
            assert_eq!(delete(4)["note"], json!("small"));
        } else {
            for id in [2, 4] {
                assert_eq!(delete(id)["status"], Value::Null, "{table} delete {id}");
                assert_eq!(delete(id)["note"], Value::Null, "{table} delete {id}");
            }
        }
        for row in &deletes {
            assert!(unchanged(row).is_empty(), "{table}: a delete lists nothing");
        }

        // Folded with the last known value carried forward, the log equals the source.
        let state = fold_carrying_unchanged(&rows);
        let source = source_rows(&db, table).await;
        assert_eq!(
            state.keys().collect::<Vec<_>>(),
            source.keys().collect::<Vec<_>>(),
            "{table}: ids"
        );
        for (id, (status, note)) in &source {
            assert_eq!(state[id]["status"], json!(status), "{table} id {id}");
            assert!(
                state[id]["note"] == json!(note),
                "{table} id {id}: lake {} source {}",
                note_summary(&state[id]["note"]),
                note_summary(&json!(note))
            );
        }
    }

    // The README's current-state query gives the source table, TOAST values included.
    let query = readme_current_state_query();
    for (table, _) in TABLES {
        let result = duckdb_query(&lake_table(lake.path(), table), "orders", &query);
        assert_eq!(
            &result.columns[..4],
            ["id", "status", "note", "_op"],
            "{table}: {:?}",
            result.columns
        );
        assert!(
            !result.columns.iter().any(|c| c == "rn" || c == "note_run"),
            "{table}: helper columns leak: {:?}",
            result.columns
        );
        let lake_state: BTreeMap<i64, (Value, Value)> = result
            .rows
            .iter()
            .map(|r| {
                (
                    r["id"].as_i64().expect("id"),
                    (r["status"].clone(), r["note"].clone()),
                )
            })
            .collect();
        let source = source_rows(&db, table).await;
        assert_eq!(
            lake_state.len(),
            source.len(),
            "{table}: {} rows",
            lake_state.len()
        );
        for (id, (status, note)) in &source {
            let (lake_status, lake_note) = &lake_state[id];
            assert_eq!(lake_status, &json!(status), "{table} id {id}");
            assert!(
                lake_note == &json!(note),
                "{table} id {id}: query gives {} source has {}",
                note_summary(lake_note),
                note_summary(&json!(note))
            );
        }
    }
    assert!(service.stop(STOP).success(), "{}", service.log());
}
