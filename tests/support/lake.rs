//! Reading the lake back the way an analyst does, and folding the change log.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio_postgres::Client;

/// A change-log row as the independent reader returned it.
pub type Row = Map<String, Value>;

/// `_lsn` of a row.
pub fn lsn(row: &Row) -> i64 {
    row["_lsn"].as_i64().expect("_lsn is an integer")
}

/// `_seq` of a row.
pub fn seq(row: &Row) -> i64 {
    row["_seq"].as_i64().expect("_seq is an integer")
}

/// `_op` of a row.
pub fn op(row: &Row) -> &str {
    row["_op"].as_str().expect("_op is a string")
}

/// Rows in change order: by (`_lsn`, `_seq`).
pub fn in_change_order(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by_key(|r| (lsn(r), seq(r)));
    rows
}

/// Panics if two rows share (`_lsn`, `_seq`): a change that landed twice.
pub fn assert_no_duplicates(rows: &[Row]) {
    let mut seen = HashSet::new();
    for row in rows {
        assert!(
            seen.insert((lsn(row), seq(row))),
            "change (_lsn {}, _seq {}) appears twice in the lake",
            lsn(row),
            seq(row)
        );
    }
}

/// Folds the change log into the current state per `key` column: the last row per key by
/// (`_lsn`, `_seq`), minus deletes; a truncate removes everything before it.
pub fn fold(rows: Vec<Row>, key: &str) -> BTreeMap<String, Row> {
    let mut state = BTreeMap::new();
    for row in in_change_order(rows) {
        match op(&row) {
            "t" => state.clear(),
            "d" => {
                state.remove(&row[key].to_string());
            }
            _ => {
                state.insert(row[key].to_string(), row);
            }
        }
    }
    state
}

/// Waits until the slot's confirmed position reaches the server's current WAL position
/// as of the call: everything written before is then committed in the lake.
pub async fn wait_caught_up(client: &Client, slot: &str, timeout: Duration) {
    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("current lsn")
        .get(0);
    let deadline = Instant::now() + timeout;
    loop {
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $2",
                &[&target, &slot],
            )
            .await
            .expect("slot query");
        if let Some(row) = &row
            && row.get::<_, Option<bool>>(0) == Some(true)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slot {slot} did not reach {target} within {timeout:?} (at {:?})",
            row.map(|r| r.get::<_, Option<String>>(1))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The slot's confirmed_flush_lsn as text.
pub async fn confirmed_flush(client: &Client, slot: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot query")
        .and_then(|row| row.get(0))
}

/// The README's DuckDB current-state query, taken from README.md so the docs cannot drift
/// from what is tested, with its `delta_scan(...)` source replaced by the view `orders`.
pub fn readme_current_state_query() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = readme
        .split("### Current state of a table")
        .nth(1)
        .expect("README has a \"Current state of a table\" section");
    let after_duckdb = section
        .split("\nDuckDB")
        .nth(1)
        .expect("the section has a DuckDB query");
    let sql = after_duckdb
        .split("```sql\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("a sql block after \"DuckDB\"");
    const SOURCE: &str = "delta_scan('./lake/public/orders')";
    assert_eq!(
        sql.matches(SOURCE).count(),
        1,
        "the query reads {SOURCE} once:\n{sql}"
    );
    sql.replace(SOURCE, "orders")
}

/// Waits until the current-state mirror at `mirror` reflects the latest version of the
/// change log at `log` (its `pg2lake-mirror` txn); returns that version.
pub fn wait_mirror_current(log: &str, mirror: &str, timeout: Duration) -> i64 {
    let mut reflected = None;
    super::wait_until(timeout, &format!("the mirror {mirror} catching up"), || {
        let version = super::read_delta(log, &[]).version;
        reflected = super::try_read_delta(mirror, &[])
            .and_then(|_| super::delta_txn_version(mirror, &[], "pg2lake-mirror"));
        reflected == Some(version)
    });
    reflected.unwrap_or_default()
}

/// The rows `sql` returns, as JSON objects (through `to_jsonb`, so numbers and text
/// compare with the lake's), by the value of `key`.
pub async fn source_rows(client: &Client, sql: &str, key: &str) -> BTreeMap<String, Row> {
    client
        .query(&format!("SELECT to_jsonb(t)::text FROM ({sql}) t"), &[])
        .await
        .expect("read the source")
        .iter()
        .map(|row| {
            let value: Value = serde_json::from_str(row.get(0)).expect("json");
            let row = value.as_object().expect("object").clone();
            (row[key].to_string(), row)
        })
        .collect()
}
