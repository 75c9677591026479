//! Unit tests of the Delta table writer against a local-folder lake.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Date32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::lake::LakeOptions;
use crate::schema::widen_array;
use arrow::record_batch::RecordBatch;

/// The relation OID the tables of these tests are written from.
const SOURCE: u32 = 16_384;

/// The table `public.t` of app `a`, written from relation [`SOURCE`].
async fn open(lake: &Lake, schema: SchemaRef) -> LakeTable {
    LakeTable::open(lake, "public", "t", schema, "a", SOURCE)
        .await
        .unwrap()
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("_op", DataType::Utf8, false),
        Field::new("date", DataType::Date32, false),
    ]))
}

fn batch(ids: &[i64], day: i32) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(vec!["c"; ids.len()])),
            Arc::new(Date32Array::from(vec![day; ids.len()])),
        ],
    )
    .unwrap()
}

fn lake(dir: &std::path::Path) -> Lake {
    Lake::open(LakeOptions {
        url: dir.display().to_string(),
        endpoint: None,
        region: None,
        allow_http: false,
        checkpoint_interval: 2,
        log_retention: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        target_file_size: 1 << 20,
        target_file_rows: 2,
    })
    .unwrap()
}

#[tokio::test]
async fn commit_records_the_lsn_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let mut table = LakeTable::open(&lake, "public", "t", schema(), "pg2lake:s", SOURCE)
        .await
        .unwrap();
    assert_eq!(table.committed_lsn(), None);
    assert_eq!(
        table.commit(Lsn(5)).await.unwrap(),
        CommitOutcome::NothingToCommit
    );
    table.write(batch(&[1, 2], 20_000)).await.unwrap();
    table.write(batch(&[3], 20_001)).await.unwrap();
    let outcome = table.commit(Lsn(100)).await.unwrap();
    assert_eq!(outcome, CommitOutcome::Committed { version: 1 });
    table.write(batch(&[4], 20_001)).await.unwrap();
    assert_eq!(
        table.commit(Lsn(200)).await.unwrap(),
        CommitOutcome::Committed { version: 2 }
    );
    // Version 1 (0-based count 2) was due for a checkpoint with interval 2.
    assert!(
        dir.path()
            .join("public/t/_delta_log/_last_checkpoint")
            .exists()
    );
    assert!(dir.path().join("public/t/date=2024-10-04").exists());

    let reopened = LakeTable::open(&lake, "public", "t", schema(), "pg2lake:s", SOURCE)
        .await
        .unwrap();
    assert_eq!(reopened.committed_lsn(), Some(Lsn(200)));
    assert_eq!(reopened.version(), Some(2));
    let other_app = LakeTable::open(&lake, "public", "t", schema(), "pg2lake:other", SOURCE)
        .await
        .unwrap();
    assert_eq!(other_app.committed_lsn(), None);
}

#[tokio::test]
async fn a_table_written_from_another_relation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let mut table = open(&lake, schema()).await;
    table.write(batch(&[1], 20_000)).await.unwrap();
    table.commit(Lsn(100)).await.unwrap();
    // The checkpoint carries the property too: reopen after several commits.
    for lsn in [200, 300] {
        table.write(batch(&[2], 20_000)).await.unwrap();
        table.commit(Lsn(lsn)).await.unwrap();
    }
    let err = LakeTable::open(&lake, "public", "t", schema(), "a", SOURCE + 1)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        LakeError::SourceReplaced { recorded: SOURCE, current, .. } if current == SOURCE + 1
    ));
    let message = err.to_string();
    assert!(
        message.contains("public.t") && message.contains("fix:"),
        "{message}"
    );
    assert!(!err.is_transient());
    LakeTable::open(&lake, "public", "t", schema(), "a", SOURCE)
        .await
        .expect("the same relation opens");
}

#[tokio::test]
async fn abandoned_rows_are_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let mut table = open(&lake, schema()).await;
    table.write(batch(&[1], 20_000)).await.unwrap();
    table.abandon_pending();
    assert_eq!(
        table.commit(Lsn(1)).await.unwrap(),
        CommitOutcome::NothingToCommit
    );
    table.write(batch(&[2], 20_000)).await.unwrap();
    table.commit(Lsn(2)).await.unwrap();
    let files: Vec<_> = table.table.get_file_uris().unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    // Three rows with target_file_rows 2: two sealed files, one commit.
    table.write(batch(&[3, 4], 20_000)).await.unwrap();
    table.write(batch(&[5], 20_000)).await.unwrap();
    assert_eq!(
        table.commit(Lsn(3)).await.unwrap(),
        CommitOutcome::Committed { version: 2 }
    );
    let files: Vec<_> = table.table.get_file_uris().unwrap().collect();
    assert_eq!(files.len(), 3, "{files:?}");
}

/// Data files under `dir` (Parquet outside `_delta_log`), relative to it.
fn parquet_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.retain(|f| !f.starts_with("_delta_log"));
    found.sort();
    found
}

#[tokio::test]
async fn files_a_killed_writer_left_are_removed_and_committed_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let mut table = open(&lake, schema()).await;
    table.write(batch(&[1, 2], 20_000)).await.unwrap();
    table.commit(Lsn(1)).await.unwrap();
    // Two rows with target_file_rows 2 seal a file; a crash now leaves it behind.
    table.write(batch(&[3, 4], 20_000)).await.unwrap();
    table.write(batch(&[5, 6], 20_000)).await.unwrap();
    drop(table);
    let root = dir.path().join("public/t");
    assert!(
        parquet_files(&root).len() >= 2,
        "{:?}",
        parquet_files(&root)
    );

    let reopened = open(&lake, schema()).await;
    let committed: Vec<String> = reopened
        .table
        .get_file_uris()
        .unwrap()
        .map(|uri| uri.rsplit("/public/t/").next().unwrap().to_owned())
        .collect();
    assert_eq!(committed.len(), 1);
    assert!(reopened.remove_uncommitted_files().await.unwrap() >= 1);
    assert_eq!(parquet_files(&root), committed);
    assert_eq!(reopened.remove_uncommitted_files().await.unwrap(), 0);
}

fn evolved_schema(extra: DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("extra", extra, true),
        Field::new("_op", DataType::Utf8, false),
        Field::new("date", DataType::Date32, false),
    ]))
}

fn evolved_batch(ids: &[i64], day: i32) -> RecordBatch {
    RecordBatch::try_new(
        evolved_schema(DataType::Utf8),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(vec!["x"; ids.len()])),
            Arc::new(StringArray::from(vec!["c"; ids.len()])),
            Arc::new(Date32Array::from(vec![day; ids.len()])),
        ],
    )
    .unwrap()
}

fn log_entry(dir: &std::path::Path, version: u64) -> String {
    std::fs::read_to_string(
        dir.join("public/t/_delta_log")
            .join(format!("{version:020}.json")),
    )
    .unwrap()
}

#[tokio::test]
async fn a_schema_change_is_committed_with_the_next_data() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let mut table = open(&lake, schema()).await;
    // One old-layout file is open when the layout changes.
    table.write(batch(&[1], 20_000)).await.unwrap();
    table.evolve(evolved_schema(DataType::Utf8)).await.unwrap();
    assert_eq!(table.version(), Some(0), "nothing is committed yet");
    assert_eq!(
        table.arrow_schema().unwrap(),
        evolved_schema(DataType::Utf8)
    );
    // Old-layout rows after the change would lose nothing silently: they are refused.
    let err = table.write(batch(&[2], 20_000)).await.unwrap_err();
    assert!(err.to_string().contains("do not match"), "{err}");
    table.write(evolved_batch(&[3], 20_000)).await.unwrap();
    assert_eq!(
        table.commit(Lsn(10)).await.unwrap(),
        CommitOutcome::Committed { version: 1 }
    );
    let entry = log_entry(dir.path(), 1);
    for action in ["\"metaData\"", "\"add\"", "\"txn\""] {
        assert!(entry.contains(action), "{action} in {entry}");
    }
    assert_eq!(entry.matches("\"add\"").count(), 2, "{entry}");
    assert!(!entry.contains("\"protocol\""), "{entry}");
    let metadata = |table: &LakeTable| table.table.snapshot().unwrap().metadata().clone();
    let before = metadata(&table);

    let reopened = open(&lake, schema()).await;
    assert_eq!(reopened.committed_lsn(), Some(Lsn(10)));
    assert_eq!(
        reopened.arrow_schema().unwrap(),
        evolved_schema(DataType::Utf8)
    );
    let after = metadata(&reopened);
    assert_eq!(after.id(), before.id(), "same table id");
    assert_eq!(after.partition_columns(), &["date".to_owned()]);
    assert_eq!(
        after
            .configuration()
            .get("delta.appendOnly")
            .map(String::as_str),
        Some("true"),
        "configuration kept"
    );
    let files: Vec<_> = reopened.table.get_file_uris().unwrap().collect();
    assert_eq!(files.len(), 2, "{files:?}");
}

#[tokio::test]
async fn a_staged_schema_change_waits_for_data() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let mut table = open(&lake, schema()).await;
    table.evolve(evolved_schema(DataType::Utf8)).await.unwrap();
    assert_eq!(
        table.commit(Lsn(5)).await.unwrap(),
        CommitOutcome::NothingToCommit
    );
    assert_eq!(table.version(), Some(0));
    table.abandon_pending();
    table.write(evolved_batch(&[1], 20_000)).await.unwrap();
    assert_eq!(
        table.commit(Lsn(6)).await.unwrap(),
        CommitOutcome::Committed { version: 1 }
    );
    assert!(log_entry(dir.path(), 1).contains("\"metaData\""));
    // Committed once: the next commit carries data only.
    table.write(evolved_batch(&[2], 20_000)).await.unwrap();
    table.commit(Lsn(7)).await.unwrap();
    assert!(!log_entry(dir.path(), 2).contains("\"metaData\""));
}

#[tokio::test]
async fn a_timestamp_without_time_zone_column_upgrades_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let mut table = open(&lake, schema()).await;
    let ntz = DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None);
    table.evolve(evolved_schema(ntz.clone())).await.unwrap();
    let rows = RecordBatch::try_new(
        evolved_schema(ntz.clone()),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![
                1_000_000,
            ])),
            Arc::new(StringArray::from(vec!["c"])),
            Arc::new(Date32Array::from(vec![20_000])),
        ],
    )
    .unwrap();
    table.write(rows.clone()).await.unwrap();
    table.commit(Lsn(1)).await.unwrap();
    assert!(log_entry(dir.path(), 1).contains("\"protocol\""));
    let mut reopened = open(&lake, schema()).await;
    let protocol = reopened.table.snapshot().unwrap().protocol().clone();
    let json = serde_json::to_value(&protocol).unwrap();
    assert_eq!(json["minReaderVersion"], 3, "{json}");
    assert_eq!(json["minWriterVersion"], 7, "{json}");
    for key in ["readerFeatures", "writerFeatures"] {
        assert!(
            json[key]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("timestampNtz")),
            "{json}"
        );
    }
    assert!(
        json["writerFeatures"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("appendOnly")),
        "{json}"
    );
    // deltalake-core accepts the upgraded table for writing.
    reopened.write(rows).await.unwrap();
    reopened.commit(Lsn(2)).await.unwrap();
    assert_eq!(reopened.version(), Some(2));
}

fn int_schema(id: DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", id, true),
        Field::new("_op", DataType::Utf8, false),
        Field::new("date", DataType::Date32, false),
    ]))
}

fn int_batch(ids: &[i32], day: i32) -> RecordBatch {
    RecordBatch::try_new(
        int_schema(DataType::Int32),
        vec![
            Arc::new(arrow::array::Int32Array::from(ids.to_vec())),
            Arc::new(StringArray::from(vec!["c"; ids.len()])),
            Arc::new(Date32Array::from(vec![day; ids.len()])),
        ],
    )
    .unwrap()
}

/// Every value of `id` in the table's current files, and their physical types.
fn read_ids(dir: &std::path::Path, table: &LakeTable) -> (Vec<i64>, Vec<DataType>) {
    let mut ids = Vec::new();
    let mut types = Vec::new();
    for add in table.table.snapshot().unwrap().log_data().iter() {
        let file = std::fs::File::open(dir.join("public/t").join(add.path().as_ref())).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let column = batch.column_by_name("id").unwrap();
            types.push(column.data_type().clone());
            let wide = widen_array(column, &DataType::Int64).unwrap();
            ids.extend(
                wide.as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .iter()
                    .map(Option::unwrap),
            );
        }
    }
    ids.sort_unstable();
    (ids, types)
}

#[tokio::test]
async fn a_widened_column_rewrites_the_files_in_the_same_version() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let mut table = open(&lake, int_schema(DataType::Int32)).await;
    // Committed narrow files in two partitions (target_file_rows 2: several files).
    table.write(int_batch(&[1, 2, 3], 20_000)).await.unwrap();
    table.write(int_batch(&[4], 20_001)).await.unwrap();
    table.commit(Lsn(1)).await.unwrap();
    // Narrow rows of the open transaction, then the widening, then wide rows.
    table.write(int_batch(&[5], 20_001)).await.unwrap();
    table.evolve(int_schema(DataType::Int64)).await.unwrap();
    let wide = RecordBatch::try_new(
        int_schema(DataType::Int64),
        vec![
            Arc::new(Int64Array::from(vec![i64::MAX])),
            Arc::new(StringArray::from(vec!["c"])),
            Arc::new(Date32Array::from(vec![20_002])),
        ],
    )
    .unwrap();
    table.write(wide).await.unwrap();
    assert_eq!(table.version(), Some(1), "nothing committed by evolve");
    assert_eq!(
        table.commit(Lsn(2)).await.unwrap(),
        CommitOutcome::Committed { version: 2 }
    );
    let entry = log_entry(dir.path(), 2);
    let actions: Vec<serde_json::Value> = entry
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let removes: Vec<_> = actions.iter().filter_map(|a| a.get("remove")).collect();
    let adds: Vec<_> = actions.iter().filter_map(|a| a.get("add")).collect();
    assert!(!removes.is_empty(), "{entry}");
    assert!(removes.iter().all(|r| r["dataChange"] == false), "{entry}");
    let rewritten = adds.iter().filter(|a| a["dataChange"] == false).count();
    assert_eq!(
        rewritten,
        removes.len(),
        "one rewritten file per file: {entry}"
    );
    assert!(adds.iter().any(|a| a["dataChange"] == true), "{entry}");
    assert!(
        actions.iter().any(|a| a.get("metaData").is_some()),
        "{entry}"
    );
    assert!(actions.iter().any(|a| a.get("txn").is_some()), "{entry}");

    let reopened = open(&lake, int_schema(DataType::Int32)).await;
    assert_eq!(
        reopened.arrow_schema().unwrap(),
        int_schema(DataType::Int64)
    );
    let (ids, types) = read_ids(dir.path(), &reopened);
    assert_eq!(ids, [1, 2, 3, 4, 5, i64::MAX], "every row once, widened");
    assert!(types.iter().all(|t| t == &DataType::Int64), "{types:?}");

    // A second widening in one transaction rewrites the rewritten files, not the
    // committed ones again.
    let mut table = reopened;
    table.evolve(int_schema(DataType::Int64)).await.unwrap();
    table
        .write(
            RecordBatch::try_new(
                int_schema(DataType::Int64),
                vec![
                    Arc::new(Int64Array::from(vec![6])),
                    Arc::new(StringArray::from(vec!["c"])),
                    Arc::new(Date32Array::from(vec![20_002])),
                ],
            )
            .unwrap(),
        )
        .await
        .unwrap();
    table.commit(Lsn(3)).await.unwrap();
    assert!(
        !log_entry(dir.path(), 3).contains("\"remove\""),
        "same types: no rewrite"
    );
}
