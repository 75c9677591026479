//! A bank-like workload for fault tests: two tables of accounts changed by random
//! multi-statement transactions, and the check that the folded lake equals the source.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use super::lake::{assert_no_duplicates, fold};
use super::load::Rng;
use super::read_delta;

/// The tables [`load`] writes.
pub const SCHEMA: &str =
    "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL);
     CREATE TABLE ledger (id int PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL);";

/// Writes random multi-statement transactions (inserts, updates, deletes over 2,000 keys,
/// across two tables) until `stop` is set. Returns how many transactions committed.
pub async fn load(client: tokio_postgres::Client, stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut committed = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut sql = String::from("BEGIN;");
        for _ in 0..1 + rng.below(20) {
            let id = rng.below(2000);
            let table = if rng.below(4) == 0 {
                "ledger"
            } else {
                "accounts"
            };
            match rng.below(3) {
                0 => sql.push_str(&format!(
                    "INSERT INTO {table} VALUES ({id}, {}, 'n{}') ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance;",
                    rng.below(1_000_000),
                    rng.next()
                )),
                1 => sql.push_str(&format!(
                    "UPDATE {table} SET balance = balance + 1, note = 'u{}' WHERE id = {id};",
                    rng.next()
                )),
                _ => sql.push_str(&format!("DELETE FROM {table} WHERE id = {id};")),
            }
        }
        // Now and then a transaction that never happened.
        let rollback = rng.below(10) == 0;
        sql.push_str(if rollback { "ROLLBACK;" } else { "COMMIT;" });
        client.batch_execute(&sql).await.expect("load transaction");
        if !rollback {
            committed += 1;
        }
        // Paced so the backlog stays within what a debug build catches up with in the
        // final wait: the test is about exactly-once, not throughput.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    committed
}

/// Stops the [`load`] running as `loader`, checks it did real work, waits until `slot`
/// has confirmed everything it wrote, and compares both tables of the lake at `lake`
/// with the source.
pub async fn stop_and_compare(
    stop: &AtomicBool,
    loader: tokio::task::JoinHandle<u64>,
    client: &tokio_postgres::Client,
    slot: &str,
    lake: &std::path::Path,
) {
    stop.store(true, Ordering::Relaxed);
    let committed = loader.await.expect("loader");
    assert!(
        committed > 50,
        "the load committed only {committed} transactions"
    );
    super::lake::wait_caught_up(client, slot, Duration::from_secs(120)).await;
    for table in ["accounts", "ledger"] {
        assert_lake_equals_source(client, lake, table).await;
    }
}

/// Panics unless the folded change log of `table` equals the source table, naming the
/// keys that differ and their history in the lake.
pub async fn assert_lake_equals_source(
    client: &tokio_postgres::Client,
    lake: &std::path::Path,
    table: &str,
) {
    let uri = lake.join("public").join(table).display().to_string();
    assert_table_equals_source(client, &uri, &[], table).await;
}

/// [`assert_lake_equals_source`] for the lake table at `uri` (local or `s3://`, with the
/// reader's `storage_options`).
pub async fn assert_table_equals_source(
    client: &tokio_postgres::Client,
    uri: &str,
    storage_options: &[(String, String)],
    table: &str,
) {
    let rows = read_delta(uri, storage_options).rows;
    assert_no_duplicates(&rows);
    let history = rows.clone();
    let state = fold(rows, "id");
    let source = client
        .query(
            &format!("SELECT id, balance, note FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .expect("read the source table");
    let source_ids: std::collections::BTreeSet<String> = source
        .iter()
        .map(|row| json!(row.get::<_, i32>(0)).to_string())
        .collect();
    let lake_ids: std::collections::BTreeSet<String> = state.keys().cloned().collect();
    if source_ids != lake_ids {
        // Name the keys that differ and each one's change history in the lake.
        let differ: Vec<&String> = source_ids.symmetric_difference(&lake_ids).collect();
        let trail: Vec<_> = history
            .iter()
            .filter(|r| differ.contains(&&r["id"].to_string()))
            .map(|r| {
                (
                    r["id"].clone(),
                    r["_op"].clone(),
                    r["_lsn"].clone(),
                    r["_seq"].clone(),
                )
            })
            .collect();
        panic!(
            "{table}: keys differ between source ({}) and folded lake ({}): {differ:?}; lake history of those keys: {trail:?}",
            source_ids.len(),
            lake_ids.len()
        );
    }
    for row in &source {
        let id: i32 = row.get(0);
        let balance: i64 = row.get(1);
        let note: String = row.get(2);
        let lake_row = state
            .get(&json!(id).to_string())
            .unwrap_or_else(|| panic!("{table}: row {id} missing in the lake"));
        assert_eq!(
            lake_row["balance"],
            json!(balance),
            "{table}: balance of {id}"
        );
        assert_eq!(lake_row["note"], json!(note), "{table}: note of {id}");
    }
}
