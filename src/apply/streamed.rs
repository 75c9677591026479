//! Transactions Postgres streams before they commit (pgoutput protocol 2, `streaming`):
//! a transaction larger than `logical_decoding_work_mem` arrives in stream blocks as it
//! is decoded, instead of being spilled to the primary's disk until its commit.
//!
//! ```text
//!  Stream Start(X) ─► changes of X and its subtransactions ─► Stream Stop    (repeated,
//!                       │ ordinal per change, first ordinal per subxact       interleaved
//!                       ▼                                                      with other
//!                     StreamedPart per table: TableBatch ── full ──► Spool    transactions)
//!  Stream Abort(X, S ≠ X) ─► ordinals from S's first change to now are aborted
//!  Stream Abort(X, X)     ─► the spools are deleted, nothing else happened
//!  Stream Commit(X, lsn)  ─► X's Relation messages applied; per table the spool is read
//!                            back through `finish_batch` (aborted rows dropped, `_seq`
//!                            renumbered, commit LSN, time and date set) into the table's
//!                            writer: pending like any committed transaction's rows
//! ```
//!
//! Invariants:
//! - Nothing of a streamed transaction reaches a Delta version before its Stream Commit,
//!   and nothing at all after its Stream Abort.
//! - The changes of a subtransaction and of every subtransaction begun inside it follow
//!   its first change without a gap (subtransactions nest): so when it aborts, everything
//!   from its first change up to the abort is aborted (as PostgreSQL's own apply worker
//!   does it).
//! - `_seq` is what the transaction would have had unstreamed: the ordinal among its
//!   changes that survived, counting every table's, replicated or not.
//! - Relation messages inside the transaction describe the table as the transaction sees
//!   it (its own ALTER TABLE included): they shape its rows only, and reach the table's
//!   schema only at its commit.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int64Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::Int64Type;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::{ApplyError, CHUNK_BYTES, CHUNK_ROWS};
use crate::batch::{TableBatch, utc_date};
use crate::lake::Spool;
use crate::lsn::Lsn;
use crate::pg::pgoutput::Relation;
use crate::schema::{COMMIT_TS_COLUMN, LSN_COLUMN, PARTITION_COLUMN, SEQ_COLUMN, TableSchema};

/// One transaction being streamed.
#[derive(Debug)]
pub(super) struct StreamedTxn {
    /// The top-level transaction id.
    pub xid: u32,
    /// The ordinal of the last change received, of any table.
    ordinal: i64,
    /// Open subtransactions in the order of their first change, with its ordinal.
    subxacts: Vec<(u32, i64)>,
    /// Where each subtransaction of `subxacts` is.
    subxact_index: HashMap<u32, usize>,
    /// Aborted changes.
    pub aborted: Aborted,
    /// The transaction's Relation messages, in order, applied when it commits.
    pub relations: Vec<Relation>,
    /// Relation id → table index, as the transaction's Relation messages announced.
    pub relation_tables: HashMap<u32, Option<usize>>,
    /// The table schemas as the transaction's Relation messages describe them.
    pub schemas: HashMap<usize, Arc<TableSchema>>,
    /// The rows per table index.
    pub parts: BTreeMap<usize, StreamedPart>,
}

impl StreamedTxn {
    pub fn new(xid: u32) -> Self {
        StreamedTxn {
            xid,
            ordinal: 0,
            subxacts: Vec::new(),
            subxact_index: HashMap::new(),
            aborted: Aborted::default(),
            relations: Vec::new(),
            relation_tables: HashMap::new(),
            schemas: HashMap::new(),
            parts: BTreeMap::new(),
        }
    }

    /// Counts one change of the (sub)transaction `xid` and returns its ordinal.
    pub fn next_ordinal(&mut self, xid: Option<u32>) -> i64 {
        self.ordinal += 1;
        if let Some(sub) = xid
            && sub != self.xid
            && !self.subxact_index.contains_key(&sub)
        {
            self.subxact_index.insert(sub, self.subxacts.len());
            self.subxacts.push((sub, self.ordinal));
        }
        self.ordinal
    }

    /// The subtransaction `subxid` aborted: its changes, and those of the subtransactions
    /// begun inside it, are everything from its first change on. One that sent no
    /// change (or was aborted already) leaves nothing to do.
    pub fn abort_subtransaction(&mut self, subxid: u32) {
        let Some(&at) = self.subxact_index.get(&subxid) else {
            return;
        };
        let from = self.subxacts[at].1;
        for (sub, _) in self.subxacts.drain(at..) {
            self.subxact_index.remove(&sub);
        }
        self.aborted.add(from..self.ordinal + 1);
    }

    /// Bytes of rows held in memory, not yet spooled.
    pub fn buffered_bytes(&self) -> usize {
        self.parts.values().map(|p| p.batch.approx_bytes()).sum()
    }

    /// Deletes what was spooled: the transaction aborted, or the session ends before its
    /// commit (the slot streams it again).
    pub async fn discard(self) {
        for part in self.parts.into_values() {
            part.spool.discard().await;
        }
    }
}

/// The rows of a streamed transaction for one table.
#[derive(Debug)]
pub(super) struct StreamedPart {
    pub schema: Arc<TableSchema>,
    pub batch: TableBatch,
    pub spool: Spool,
}

impl StreamedPart {
    pub fn new(schema: Arc<TableSchema>, spool: Spool) -> Self {
        StreamedPart {
            batch: TableBatch::new(schema.clone()),
            schema,
            spool,
        }
    }

    /// Whether the rows in memory should go to the spool now.
    pub fn full(&self) -> bool {
        self.batch.len() >= CHUNK_ROWS || self.batch.approx_bytes() >= CHUNK_BYTES
    }

    /// Moves the rows in memory to the spool.
    pub async fn spill(&mut self) -> Result<(), ApplyError> {
        if !self.batch.is_empty() {
            let chunk = self.batch.finish()?;
            self.spool.write(&chunk).await?;
        }
        Ok(())
    }

    /// Goes on with the table's layout as `schema` describes it: the rows so far are
    /// spooled in the old one first.
    pub async fn evolve(&mut self, schema: Arc<TableSchema>) -> Result<(), ApplyError> {
        self.spill().await?;
        self.batch = TableBatch::new(schema.clone());
        self.schema = schema;
        Ok(())
    }
}

/// The ordinals of aborted changes: ascending, disjoint ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Aborted {
    ranges: Vec<Range<i64>>,
}

impl Aborted {
    /// Adds `range`, which reaches up to the latest change: ranges that begin inside it
    /// are swallowed (a subtransaction aborted earlier inside this one).
    fn add(&mut self, range: Range<i64>) {
        self.ranges.retain(|r| r.start < range.start);
        self.ranges.push(range);
    }

    /// The `_seq` of the change with `ordinal` once the aborted changes are gone, or
    /// `None` when it is aborted itself.
    pub fn seq(&self, ordinal: i64) -> Option<i64> {
        let before = self.ranges.partition_point(|r| r.start <= ordinal);
        if before > 0 && self.ranges[before - 1].contains(&ordinal) {
            return None;
        }
        let gone: i64 = self.ranges[..before].iter().map(|r| r.end - r.start).sum();
        Some(ordinal - gone)
    }
}

/// A batch read back from a streamed transaction's spool, as the committed transaction's
/// rows: aborted changes dropped, `_seq` renumbered, `_lsn` the commit LSN, `_commit_ts`
/// the commit time and `date` its UTC day.
pub(super) fn finish_batch(
    batch: &RecordBatch,
    aborted: &Aborted,
    commit_lsn: Lsn,
    commit_ts_micros: i64,
) -> Result<RecordBatch, ArrowError> {
    let missing = |name: &str| ArrowError::SchemaError(format!("spooled rows have no {name}"));
    let ordinals = batch
        .column_by_name(SEQ_COLUMN)
        .ok_or_else(|| missing(SEQ_COLUMN))?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| missing(SEQ_COLUMN))?;
    let seqs: Vec<Option<i64>> = ordinals.values().iter().map(|&o| aborted.seq(o)).collect();
    let keep = BooleanArray::from(seqs.iter().map(Option::is_some).collect::<Vec<_>>());
    let batch = filter_record_batch(batch, &keep)?;
    let rows = batch.num_rows();
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| -> Result<ArrayRef, ArrowError> {
            let name = field.name().as_str();
            Ok(if name == SEQ_COLUMN {
                Arc::new(Int64Array::from_iter_values(seqs.iter().flatten().copied()))
            } else if name == LSN_COLUMN {
                Arc::new(Int64Array::from_value(commit_lsn.as_i64(), rows))
            } else if name == COMMIT_TS_COLUMN {
                cast(
                    &Int64Array::from_value(commit_ts_micros, rows),
                    field.data_type(),
                )?
            } else if name == PARTITION_COLUMN {
                Arc::new(Date32Array::from_value(utc_date(commit_ts_micros), rows))
            } else {
                column.clone()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    debug_assert!(columns.iter().all(|c| c.len() == rows));
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_aborted_keeps_every_ordinal() {
        let aborted = Aborted::default();
        assert_eq!(aborted.seq(1), Some(1));
        assert_eq!(aborted.seq(99), Some(99));
    }

    #[test]
    fn a_subtransaction_abort_takes_everything_from_its_first_change() {
        let mut txn = StreamedTxn::new(100);
        assert_eq!(txn.next_ordinal(Some(100)), 1);
        assert_eq!(txn.next_ordinal(Some(101)), 2); // SAVEPOINT a
        assert_eq!(txn.next_ordinal(Some(102)), 3); // SAVEPOINT b, inside a
        assert_eq!(txn.next_ordinal(Some(101)), 4); // RELEASE b, back in a
        txn.abort_subtransaction(102); // ROLLBACK TO a aborts b (released into a) …
        txn.abort_subtransaction(101); // … and a
        assert_eq!(txn.next_ordinal(Some(100)), 5);
        assert_eq!(txn.next_ordinal(Some(103)), 6); // SAVEPOINT c
        txn.abort_subtransaction(103);
        assert_eq!(txn.next_ordinal(Some(100)), 7);
        let seqs: Vec<Option<i64>> = (1..=7).map(|o| txn.aborted.seq(o)).collect();
        assert_eq!(
            seqs,
            vec![Some(1), None, None, None, Some(2), None, Some(3)]
        );
    }

    #[test]
    fn an_inner_abort_then_the_outer_one_leaves_one_range() {
        let mut txn = StreamedTxn::new(1);
        txn.next_ordinal(Some(1));
        txn.next_ordinal(Some(2));
        txn.next_ordinal(Some(3));
        txn.abort_subtransaction(3);
        txn.next_ordinal(Some(2));
        txn.abort_subtransaction(2);
        assert_eq!(txn.aborted.ranges, vec![2..5]);
        assert_eq!(txn.next_ordinal(Some(1)), 5);
        assert_eq!(txn.aborted.seq(5), Some(2));
    }

    #[test]
    fn an_unknown_or_repeated_subtransaction_abort_changes_nothing() {
        let mut txn = StreamedTxn::new(1);
        txn.next_ordinal(Some(1));
        txn.abort_subtransaction(7);
        txn.next_ordinal(Some(2));
        txn.abort_subtransaction(2);
        txn.abort_subtransaction(2);
        assert_eq!(txn.aborted.ranges, vec![2..3]);
    }

    #[test]
    fn finishing_a_batch_drops_aborted_rows_and_sets_the_commit() {
        use arrow::array::{StringArray, TimestampMicrosecondArray};
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8, true),
            Field::new(LSN_COLUMN, DataType::Int64, false),
            Field::new(SEQ_COLUMN, DataType::Int64, false),
            Field::new(
                COMMIT_TS_COLUMN,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new(PARTITION_COLUMN, DataType::Date32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![0, 0, 0])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(TimestampMicrosecondArray::from(vec![0, 0, 0]).with_timezone("UTC")),
                Arc::new(Date32Array::from(vec![0, 0, 0])),
            ],
        )
        .unwrap();
        let mut aborted = Aborted::default();
        aborted.add(2..3);
        // 2026-12-02T00:00:01Z
        let ts = 1_796_169_601_000_000;
        let done = finish_batch(&batch, &aborted, Lsn(0x1_0000_0010), ts).unwrap();
        assert_eq!(done.num_rows(), 2);
        let v = done.column(0).as_string::<i32>();
        assert_eq!((v.value(0), v.value(1)), ("a", "c"));
        let seq = done.column(2).as_primitive::<Int64Type>();
        assert_eq!(seq.values().to_vec(), vec![1, 2]);
        let lsn = done.column(1).as_primitive::<Int64Type>();
        assert_eq!(lsn.values().to_vec(), vec![0x1_0000_0010; 2]);
        let commit_ts = done
            .column(3)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(commit_ts.values().to_vec(), vec![ts; 2]);
        assert_eq!(
            done.schema().field(3).data_type(),
            batch.schema().field(3).data_type()
        );
        let date = done
            .column(4)
            .as_primitive::<arrow::datatypes::Date32Type>();
        assert_eq!(date.values().to_vec(), vec![20_789; 2]);
    }
}
