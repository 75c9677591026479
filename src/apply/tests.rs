//! The apply rules against in-memory tables (see `memory`): confirm after every table's
//! commit, the per-table skip on replay, `_seq`, schema changes before the rows that
//! need them, streamed transactions, and failures.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use bytes::Bytes;

use super::memory::{Event, MemorySink, MemoryTable};
use super::{Applier, FlushPolicy, FlushReport, ReplicatedTable};
use crate::lsn::Lsn;
use crate::pg::pgoutput::{
    Begin, Commit, Decoded, Insert, LogicalMessage, Relation, RelationColumn, ReplicaIdentity,
    StreamAbort, StreamCommit, StreamStart, TupleValue,
};
use crate::schema::{LSN_COLUMN, SEQ_COLUMN, TableSchema, oid};

const START: Lsn = Lsn(0x10);

fn policy() -> FlushPolicy {
    FlushPolicy {
        max_rows: 1_000_000,
        max_bytes: 64 * 1024 * 1024,
        max_interval: Duration::from_secs(3600),
    }
}

fn columns(names: &[&str]) -> Vec<RelationColumn> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| RelationColumn {
            is_key: i == 0,
            name: (*name).to_owned(),
            type_oid: if i == 0 { oid::INT4 } else { oid::TEXT },
            type_modifier: -1,
        })
        .collect()
}

/// Table `public.<name>` (columns `id`, `v`) in memory, holding everything up to
/// `committed`.
fn table(name: &str, committed: Option<Lsn>) -> (MemoryTable, ReplicatedTable<MemorySink>) {
    let schema = TableSchema::new("public", name, &columns(&["id", "v"])).unwrap();
    let (memory, sink) = MemoryTable::new(committed);
    (memory, ReplicatedTable::new(Arc::new(schema), sink))
}

fn message(message: LogicalMessage) -> Decoded {
    Decoded { message, xid: None }
}

fn relation(id: u32, name: &str, names: &[&str]) -> Decoded {
    message(LogicalMessage::Relation(Relation {
        id,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns(names),
    }))
}

fn begin(commit_lsn: u64, xid: u32) -> Decoded {
    message(LogicalMessage::Begin(Begin {
        final_lsn: Lsn(commit_lsn),
        commit_ts: 0,
        xid,
    }))
}

fn commit(commit_lsn: u64, end_lsn: u64) -> Decoded {
    message(LogicalMessage::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(commit_lsn),
        end_lsn: Lsn(end_lsn),
        commit_ts: 0,
    }))
}

fn insert(relation_id: u32, values: &[&str]) -> Decoded {
    message(LogicalMessage::Insert(Insert {
        relation_id,
        new: values
            .iter()
            .map(|v| TupleValue::Text(Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    }))
}

async fn apply_all(applier: &mut Applier, messages: Vec<Decoded>) {
    for decoded in messages {
        applier.apply(decoded).await.expect("applied");
    }
}

/// The next acknowledgement, taken.
async fn acknowledged(applier: &mut Applier) -> Option<FlushReport> {
    let ack = tokio::time::timeout(Duration::from_secs(10), applier.next_ack())
        .await
        .expect("a writer task acknowledges within 10 s");
    applier.on_ack(ack).expect("the commit succeeded")
}

fn int64_column(memory: &MemoryTable, column: &str) -> Vec<i64> {
    memory
        .committed_rows()
        .iter()
        .flat_map(|batch| {
            batch
                .column_by_name(column)
                .expect("column present")
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test]
async fn a_position_is_confirmed_only_once_every_table_acknowledged_its_commit() {
    let (a_memory, a) = table("a", None);
    let (b_memory, b) = table("b", None);
    b_memory.hold_commits();
    let mut applier = Applier::new(vec![a, b], policy(), START);
    apply_all(
        &mut applier,
        vec![
            relation(1, "a", &["id", "v"]),
            relation(2, "b", &["id", "v"]),
            begin(0x100, 7),
            insert(1, &["1", "x"]),
            insert(2, &["2", "y"]),
            commit(0x100, 0x108),
        ],
    )
    .await;
    assert_eq!(applier.confirmable(), START, "nothing is committed yet");
    applier.flush().await.unwrap();
    assert_eq!(
        acknowledged(&mut applier).await,
        None,
        "one table of two acknowledged"
    );
    assert_eq!(a_memory.state().committed, Some(Lsn(0x100)));
    assert_eq!(applier.confirmable(), START, "table b has not committed");
    assert!(applier.has_pending());
    applier.idle_position(Lsn(0x200));
    assert_eq!(
        applier.confirmable(),
        START,
        "a keepalive does not pass a commit in flight"
    );
    b_memory.let_commits_through(1);
    let report = acknowledged(&mut applier).await.expect("the flush is done");
    assert_eq!((report.tables, report.rows), (2, 2));
    assert_eq!(applier.confirmable(), Lsn(0x108));
    assert_eq!(applier.last_commit_lsn(), Some(Lsn(0x100)));
    assert!(!applier.has_pending());
    applier.idle_position(Lsn(0x200));
    assert_eq!(applier.confirmable(), Lsn(0x200));
    applier.close().await;
}

#[tokio::test]
async fn a_transaction_the_table_holds_already_is_skipped_for_that_table_only() {
    let (a_memory, a) = table("a", Some(Lsn(0x200)));
    let (b_memory, b) = table("b", None);
    let mut applier = Applier::new(vec![a, b], policy(), START);
    apply_all(
        &mut applier,
        vec![
            relation(1, "a", &["id", "v"]),
            relation(2, "b", &["id", "v"]),
            begin(0x150, 7),
            insert(1, &["1", "replayed"]),
            insert(2, &["2", "new to b"]),
            commit(0x150, 0x158),
            begin(0x250, 8),
            insert(1, &["3", "new"]),
            insert(2, &["4", "new"]),
            commit(0x250, 0x258),
        ],
    )
    .await;
    applier.flush().await.unwrap();
    let report = applier.drain().await.unwrap().expect("committed");
    assert_eq!(report.rows, 3);
    assert_eq!(int64_column(&a_memory, LSN_COLUMN), vec![0x250]);
    assert_eq!(int64_column(&b_memory, LSN_COLUMN), vec![0x150, 0x250]);
    assert_eq!(applier.confirmable(), Lsn(0x258));
    applier.close().await;
}

#[tokio::test]
async fn seq_counts_every_change_of_the_transaction_replicated_or_not() {
    let (memory, a) = table("a", None);
    let mut applier = Applier::new(vec![a], policy(), START);
    apply_all(
        &mut applier,
        vec![
            relation(1, "a", &["id", "v"]),
            relation(9, "not_replicated", &["id", "v"]),
            begin(0x100, 7),
            insert(1, &["1", "x"]),
            insert(9, &["2", "y"]),
            insert(1, &["3", "z"]),
            commit(0x100, 0x108),
        ],
    )
    .await;
    applier.flush().await.unwrap();
    applier.drain().await.unwrap();
    assert_eq!(int64_column(&memory, SEQ_COLUMN), vec![1, 3]);
    applier.close().await;
}

#[tokio::test]
async fn a_schema_change_reaches_the_table_after_the_rows_before_it_and_before_those_after() {
    let (memory, a) = table("a", None);
    let mut applier = Applier::new(vec![a], policy(), START);
    apply_all(
        &mut applier,
        vec![
            relation(1, "a", &["id", "v"]),
            begin(0x100, 7),
            insert(1, &["1", "x"]),
            relation(1, "a", &["id", "v", "w"]),
            insert(1, &["2", "y", "z"]),
            commit(0x100, 0x108),
        ],
    )
    .await;
    applier.flush().await.unwrap();
    applier.drain().await.unwrap();
    let events = memory.state().events.clone();
    let kinds: Vec<String> = events
        .iter()
        .map(|event| match event {
            Event::Write { rows, columns } => {
                format!("write {rows} w={}", columns.iter().any(|c| c == "w"))
            }
            Event::Follow {
                columns,
                layout_changed,
            } => format!("follow {} {layout_changed}", columns.join(",")),
            Event::Commit(lsn) => format!("commit {lsn}"),
            Event::Abandon => "abandon".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "write 1 w=false",
            "follow id,v,w true",
            "write 1 w=true",
            "commit 0/100",
        ]
    );
    applier.close().await;
}

#[tokio::test]
async fn a_transaction_of_no_table_waits_for_the_commit_in_flight_before_it() {
    let (memory, a) = table("a", None);
    memory.hold_commits();
    let mut applier = Applier::new(vec![a], policy(), START);
    apply_all(
        &mut applier,
        vec![
            relation(1, "a", &["id", "v"]),
            relation(9, "not_replicated", &["id", "v"]),
            begin(0x100, 7),
            insert(1, &["1", "x"]),
            commit(0x100, 0x108),
        ],
    )
    .await;
    applier.flush().await.unwrap();
    apply_all(
        &mut applier,
        vec![
            begin(0x300, 8),
            insert(9, &["2", "y"]),
            commit(0x300, 0x308),
        ],
    )
    .await;
    assert_eq!(applier.confirmable(), START);
    memory.let_commits_through(1);
    acknowledged(&mut applier).await.expect("the flush is done");
    assert_eq!(
        applier.confirmable(),
        Lsn(0x308),
        "the later transaction held nothing of ours"
    );
    applier.close().await;
}

#[tokio::test]
async fn a_failed_commit_is_the_session_error_and_confirms_nothing() {
    let (memory, a) = table("a", None);
    memory.state().fail_next_commit = true;
    let mut applier = Applier::new(vec![a], policy(), START);
    apply_all(
        &mut applier,
        vec![
            relation(1, "a", &["id", "v"]),
            begin(0x100, 7),
            insert(1, &["1", "x"]),
            commit(0x100, 0x108),
        ],
    )
    .await;
    applier.flush().await.unwrap();
    let err = applier.drain().await.expect_err("the commit failed");
    assert!(err.to_string().contains("on purpose"), "{err}");
    assert_eq!(applier.confirmable(), START);
    // The task stopped: what is sent to it next fails with the cause.
    apply_all(
        &mut applier,
        vec![
            begin(0x200, 8),
            insert(1, &["2", "y"]),
            commit(0x200, 0x208),
        ],
    )
    .await;
    let err = applier.flush().await.expect_err("the writer is gone");
    assert!(err.to_string().contains("stopped"), "{err}");
    assert!(memory.committed_rows().is_empty());
    applier.close().await;
}

#[tokio::test]
async fn a_stop_inside_a_transaction_drops_what_is_not_committed() {
    let (memory, a) = table("a", None);
    let mut applier = Applier::new(vec![a], policy(), START);
    // More than a chunk, so rows reach the table's writer before the stop.
    let mut messages = vec![relation(1, "a", &["id", "v"]), begin(0x100, 7)];
    messages.extend((0..super::CHUNK_ROWS + 1).map(|i| insert(1, &[&i.to_string(), "x"])));
    messages.extend([
        commit(0x100, 0x108),
        begin(0x200, 8),
        insert(1, &["0", "y"]),
    ]);
    apply_all(&mut applier, messages).await;
    applier.abandon().await.unwrap();
    assert_eq!(applier.drain().await.unwrap(), None);
    assert!(!applier.has_pending());
    assert_eq!(applier.confirmable(), START);
    // The slot replays both transactions; only what follows the stop is committed.
    apply_all(
        &mut applier,
        vec![
            begin(0x300, 9),
            insert(1, &["1", "z"]),
            commit(0x300, 0x308),
        ],
    )
    .await;
    applier.flush().await.unwrap();
    applier.drain().await.unwrap().expect("committed");
    assert_eq!(int64_column(&memory, LSN_COLUMN), vec![0x300]);
    let events = memory.state().events.clone();
    assert!(matches!(events[0], Event::Write { rows, .. } if rows == super::CHUNK_ROWS));
    assert_eq!(events[1], Event::Abandon);
    assert_eq!(events.last(), Some(&Event::Commit(Lsn(0x300))));
    applier.close().await;
}

#[tokio::test]
async fn a_streamed_transaction_commits_its_surviving_rows_renumbered() {
    let (memory, a) = table("a", None);
    let mut applier = Applier::new(vec![a], policy(), START);
    let in_block = |xid: u32, decoded: Decoded| Decoded {
        xid: Some(xid),
        ..decoded
    };
    apply_all(
        &mut applier,
        vec![
            relation(1, "a", &["id", "v"]),
            message(LogicalMessage::StreamStart(StreamStart {
                xid: 50,
                first_segment: true,
            })),
            in_block(50, insert(1, &["1", "kept"])),
            in_block(51, insert(1, &["2", "aborted"])),
            message(LogicalMessage::StreamAbort(StreamAbort {
                xid: 50,
                subxid: 51,
            })),
            in_block(50, insert(1, &["3", "kept"])),
            message(LogicalMessage::StreamStop),
            message(LogicalMessage::StreamCommit(StreamCommit {
                xid: 50,
                flags: 0,
                commit_lsn: Lsn(0x500),
                end_lsn: Lsn(0x508),
                commit_ts: 0,
            })),
        ],
    )
    .await;
    applier.flush().await.unwrap();
    let report = applier.drain().await.unwrap().expect("committed");
    assert_eq!(report.rows, 2);
    assert_eq!(int64_column(&memory, SEQ_COLUMN), vec![1, 2]);
    assert_eq!(int64_column(&memory, LSN_COLUMN), vec![0x500, 0x500]);
    assert_eq!(applier.confirmable(), Lsn(0x508));
    applier.close().await;
}

#[tokio::test]
async fn rows_queued_for_a_stuck_writer_stop_the_applier_at_the_memory_budget() {
    let (memory, a) = table("a", None);
    memory.hold_writes();
    let budget = FlushPolicy {
        max_bytes: super::CHUNK_BYTES,
        ..policy()
    };
    let mut applier = Applier::new(vec![a], budget, START);
    apply_all(
        &mut applier,
        vec![relation(1, "a", &["id", "v"]), begin(0x100, 7)],
    )
    .await;
    // Far fewer chunks than the writer's command queue holds (32): the memory budget,
    // not the queue, is what stops the applier.
    let limit = 20 * super::CHUNK_ROWS;
    let mut applied = 0;
    while applied < limit {
        let next = insert(1, &[&applied.to_string(), "x"]);
        match tokio::time::timeout(Duration::from_secs(2), applier.apply(next)).await {
            Ok(result) => {
                result.expect("applied");
            }
            Err(_) => break,
        }
        applied += 1;
    }
    assert!(
        applied < limit,
        "the applier went on past {limit} rows with no row written"
    );
    assert!(
        applied >= super::CHUNK_ROWS,
        "blocked before one chunk: {applied} rows"
    );
    assert!(memory.state().events.is_empty(), "the writer was held");
    applier.close().await;
}
