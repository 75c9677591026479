//! `pg2lake run` end to end: a real PostgreSQL, the real binary, a local-folder lake read
//! back with the independent Python `deltalake` reader.

mod support;

use std::time::Duration;

use serde_json::json;
use support::lake::{
    assert_no_duplicates, confirmed_flush, fold, in_change_order, lsn, op, seq, wait_caught_up,
};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgServer, read_delta};

const CATCH_UP: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(30);

fn lake_table(lake: &std::path::Path, table: &str) -> String {
    lake.join("public").join(table).display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_land_with_ops_lsns_values_and_types() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, qty int, small smallint, price numeric(12,2),
            amount float8, ratio real, note text, code varchar(8), flag bool, created timestamptz,
            local_ts timestamp, day date, payload jsonb, data bytea, uid uuid, big numeric);
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         CREATE TABLE scratch (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "e2e",
        &["public.orders", "public.customers"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(30));

    db.batch_execute(
        "BEGIN;
         INSERT INTO orders VALUES
           (1, 5, -3, 12.34, 1.5, 0.25, 'first', 'A1', true, '2026-11-22 10:00:00.123456+02',
            '2026-11-22 10:00:00', '2026-11-22', '{\"k\": [1, 2]}', '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            123456789012345678901234567890.123456789),
           (2, 7, NULL, -0.01, 'NaN', '-Infinity', NULL, NULL, false, '1999-12-31 23:59:59+00',
            NULL, '0044-03-15 BC', NULL, NULL, NULL, NULL),
           (3, 1, 32767, 9999999999.99, 1e300, 3.4e38, 'third', 'C', NULL, 'infinity',
            '9999-12-31 23:59:59', NULL, '[]', '\\x', NULL, 'NaN');
         INSERT INTO customers VALUES (1, 'ada');
         COMMIT;",
    )
    .await
    .unwrap();
    db.batch_execute("UPDATE orders SET qty = 20 WHERE id = 2")
        .await
        .unwrap();
    db.batch_execute("DELETE FROM orders WHERE id = 3")
        .await
        .unwrap();
    db.batch_execute(
        "BEGIN; INSERT INTO customers VALUES (2, 'grace'); UPDATE customers SET name = 'lovelace' WHERE id = 1; COMMIT;",
    )
    .await
    .unwrap();
    db.batch_execute("BEGIN; INSERT INTO orders (id) VALUES (99); INSERT INTO customers VALUES (99, 'x'); ROLLBACK;")
        .await
        .unwrap();
    db.batch_execute("INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    db.batch_execute("TRUNCATE customers").await.unwrap();
    db.batch_execute("INSERT INTO customers VALUES (3, 'hopper')")
        .await
        .unwrap();
    wait_caught_up(&db, "e2e", CATCH_UP).await;

    let orders = read_delta(&lake_table(lake.path(), "orders"), &[]);
    let types: std::collections::HashMap<_, _> = orders.schema.iter().cloned().collect();
    for (column, expected) in [
        ("id", "int64"),
        ("qty", "int32"),
        ("small", "int16"),
        ("price", "decimal128(12, 2)"),
        ("amount", "double"),
        ("ratio", "float"),
        ("note", "string"),
        ("flag", "bool"),
        ("created", "timestamp[us, tz=UTC]"),
        ("local_ts", "timestamp[us]"),
        ("day", "date32[day]"),
        ("data", "binary"),
        ("_op", "string"),
        ("_lsn", "int64"),
        ("_seq", "int64"),
        ("_commit_ts", "timestamp[us, tz=UTC]"),
        ("_xid", "int64"),
    ] {
        assert_eq!(
            types.get(column).map(String::as_str),
            Some(expected),
            "type of column {column}; schema {:?}",
            orders.schema
        );
    }
    let rows = in_change_order(orders.rows);
    assert_no_duplicates(&rows);
    let ops: Vec<(&str, i64)> = rows
        .iter()
        .map(|r| (op(r), r["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(ops, [("c", 1), ("c", 2), ("c", 3), ("u", 2), ("d", 3)]);
    // One source transaction: one _lsn, _seq counting its changes in order.
    assert_eq!(lsn(&rows[0]), lsn(&rows[1]));
    assert_eq!(lsn(&rows[1]), lsn(&rows[2]));
    assert_eq!(
        rows[..3].iter().map(seq).collect::<Vec<_>>(),
        [1, 2, 3],
        "ordinals within the first transaction"
    );
    assert!(lsn(&rows[2]) < lsn(&rows[3]) && lsn(&rows[3]) < lsn(&rows[4]));
    assert!(rows.iter().all(|r| r["_xid"].as_i64().is_some()));

    // Values, compared with how Postgres renders them.
    let first = &rows[0];
    assert_eq!(first["qty"], json!(5));
    assert_eq!(first["small"], json!(-3));
    assert_eq!(first["price"], json!("12.34"));
    assert_eq!(first["amount"], json!(1.5));
    assert_eq!(first["note"], json!("first"));
    assert_eq!(first["code"], json!("A1"));
    assert_eq!(first["flag"], json!(true));
    assert_eq!(first["created"], json!("2026-11-22T08:00:00.123456+00:00"));
    assert_eq!(first["local_ts"], json!("2026-11-22T10:00:00"));
    assert_eq!(first["day"], json!("2026-11-22"));
    assert_eq!(first["payload"], json!("{\"k\": [1, 2]}"));
    assert_eq!(first["data"], json!("00ff10"));
    assert_eq!(first["uid"], json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    assert_eq!(
        first["big"],
        json!("123456789012345678901234567890.123456789"),
        "unconstrained numeric keeps every digit"
    );
    let second = &rows[1];
    assert_eq!(second["price"], json!("-0.01"));
    assert_eq!(second["small"], json!(null));
    assert_eq!(
        second["day"],
        json!({"raw": -735_160, "type": "date32[day]"}),
        "44 BC is astronomical year -43: 735160 days before 1970-01-01 (Python's date cannot hold it)"
    );
    assert_eq!(rows[3]["qty"], json!(20), "the update carries the new row");
    assert_eq!(rows[4]["id"], json!(3), "the delete carries the key");
    assert_eq!(
        rows[4]["note"],
        json!(null),
        "a default-identity delete has only the key"
    );

    let customers = in_change_order(read_delta(&lake_table(lake.path(), "customers"), &[]).rows);
    let ops: Vec<&str> = customers.iter().map(op).collect();
    assert_eq!(ops, ["c", "c", "u", "t", "c"]);
    assert_eq!(
        seq(&customers[0]),
        4,
        "fourth change of the first transaction"
    );
    assert_eq!(lsn(&customers[1]), lsn(&customers[2]));
    assert_eq!((seq(&customers[1]), seq(&customers[2])), (1, 2));
    let current = fold(customers, "id");
    assert_eq!(current.len(), 1);
    assert_eq!(current.values().next().unwrap()["name"], json!("hopper"));
    assert!(
        !lake.path().join("public").join("scratch").exists(),
        "unreplicated tables stay out of the lake"
    );

    let status = service.stop(STOP);
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        service.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_transaction_is_one_delta_version_with_bounded_memory() {
    let pg = PgServer::start();
    let url = pg.create_database("big").await;
    let db = pg.connect("big").await;
    db.batch_execute("CREATE TABLE events (id bigint PRIMARY KEY, body text, at timestamptz)")
        .await
        .unwrap();
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(
        &config_yaml(
            &url,
            "big",
            &["public.events"],
            &lake.path().display().to_string(),
            "",
        )
        .replace(
            "flush:\n  max_interval: 200ms\n",
            "flush:\n  max_interval: 200ms\n  max_rows: 50000\n",
        ),
    );
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(30));
    db.batch_execute("INSERT INTO events VALUES (0, 'warm-up', now())")
        .await
        .unwrap();
    wait_caught_up(&db, "big", CATCH_UP).await;
    let table = lake_table(lake.path(), "events");
    let before = read_delta(&table, &[]).version;

    db.batch_execute(
        "INSERT INTO events SELECT g, repeat(md5(g::text), 4), now() FROM generate_series(1, 1000000) g",
    )
    .await
    .unwrap();
    wait_caught_up(&db, "big", Duration::from_secs(600)).await;
    let peak = service.peak_rss();

    let after = read_delta(&table, &[]);
    assert_eq!(
        after.version,
        before + 1,
        "the transaction is exactly one Delta version"
    );
    assert_eq!(after.rows.len(), 1_000_001);
    let files = std::fs::read_dir(lake.path().join("public/events"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("date="))
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().filter_map(Result::ok))
        .count();
    // Files are sealed at the first Arrow chunk boundary past max_rows, so each holds a
    // little over 50,000 rows: at least a dozen files for 1,000,000 rows.
    assert!(
        files >= 12,
        "1,000,000 rows with max_rows 50,000 make many files, got {files}"
    );
    eprintln!(
        "peak RSS during a 1,000,000-row transaction: {} MiB",
        peak >> 20
    );
    assert!(
        peak < 400 << 20,
        "peak RSS {} MiB should stay bounded (well under the 512 MiB default budget)",
        peak >> 20
    );
    assert!(service.stop(STOP).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slot_advances_while_only_unreplicated_tables_change() {
    let pg = PgServer::start();
    let url = pg.create_database("idle").await;
    let db = pg.connect("idle").await;
    db.batch_execute(
        "CREATE TABLE tracked (id int PRIMARY KEY); CREATE TABLE other (id int, pad text);",
    )
    .await
    .unwrap();
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "idle",
        &["public.tracked"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(30));
    let start = confirmed_flush(&db, "idle").await.expect("slot exists");
    db.batch_execute(
        "INSERT INTO other SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    // Everything written so far is in WAL that pg2lake owes nothing: the slot must pass it.
    wait_caught_up(&db, "idle", Duration::from_secs(30)).await;
    let end = confirmed_flush(&db, "idle").await.unwrap();
    assert_ne!(start, end, "confirmed_flush_lsn moved");
    assert!(!lake.path().join("public/other").exists());
    assert!(service.stop(STOP).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_mid_stream_loses_nothing() {
    let mut pg = PgServer::start();
    let url = pg.create_database("restart").await;
    {
        let db = pg.connect("restart").await;
        db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
            .await
            .unwrap();
    }
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(
        &config_yaml(
            &url,
            "restart",
            &["public.items"],
            &lake.path().display().to_string(),
            "",
        )
        .replace(
            "heartbeat_interval: 2s\n",
            "heartbeat_interval: 2s\n  reconnect_max_backoff: 1s\n",
        ),
    );
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(30));
    {
        let db = pg.connect("restart").await;
        db.batch_execute("INSERT INTO items SELECT g, g FROM generate_series(1, 500) g")
            .await
            .unwrap();
    }
    pg.restart();
    let db = pg.connect("restart").await;
    db.batch_execute("INSERT INTO items SELECT g, g FROM generate_series(501, 1000) g; UPDATE items SET v = -v WHERE id % 7 = 0")
        .await
        .unwrap();
    wait_caught_up(&db, "restart", CATCH_UP).await;
    assert!(
        service.is_running(),
        "pg2lake must survive a Postgres restart"
    );
    let rows = read_delta(&lake_table(lake.path(), "items"), &[]).rows;
    assert_no_duplicates(&rows);
    let state = fold(rows, "id");
    assert_eq!(state.len(), 1000);
    for (id, row) in &state {
        let id: i64 = id.parse().unwrap();
        let expected = if id % 7 == 0 { -id } else { id };
        assert_eq!(row["v"], json!(expected), "row {id}");
    }
    assert!(
        service.log().contains("reconnecting"),
        "the restart was noticed"
    );
    assert!(service.stop(STOP).success());
}
