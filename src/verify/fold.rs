//! The lake's change log folded to the state of each key at a position: what the
//! current-state query of the README computes, done in memory for a share of the keys.
//!
//! ```text
//!  change-log rows with _lsn ≤ position ─► per key: its changes   truncates: (lsn, seq)
//!  per key, in (_lsn, _seq) order, after the last truncate:
//!     d ─► gone      c/u/r ─► the row; a column in _unchanged keeps the previous value
//! ```
//!
//! A key whose changes include one twice (same `_lsn` and `_seq`) never matches the
//! source, even where the fold would hide it.
//!
//! Rows of the change log arrive in any order (files are read as the log lists them), so
//! a key's changes are kept until every file is read and then folded.

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::OwnedRow;

use super::digest::{Digester, row_hash};
use crate::schema::{LSN_COLUMN, OP_COLUMN, SEQ_COLUMN, UNCHANGED_COLUMN};

/// The hash of a column whose value the change log never sent (an unchanged TOAST value
/// without an earlier change to carry it from): it matches no source value.
const UNKNOWN: u64 = u64::MAX;
/// Marks a column whose unchanged TOAST value a change did not send. A value hashing to
/// it would be taken for one (a 2^-64 chance).
const UNSENT: u64 = u64::MAX - 1;

/// One key as the fold leaves it at the position.
pub(super) struct Folded {
    /// The key.
    pub key: OwnedRow,
    /// Its hash.
    pub key_hash: u64,
    /// The row's hash; `None` when the key does not exist at the position.
    pub row: Option<u64>,
    /// Whether the key's change log holds a change twice.
    pub duplicated: bool,
}

/// One change of a key.
struct Change {
    lsn: i64,
    seq: i64,
    delete: bool,
    /// Per compared column, the value's hash; [`UNSENT`] for an unchanged TOAST value
    /// (a sentinel rather than an `Option`, which would double the memory per change).
    columns: Box<[u64]>,
}

/// The changes of a share of the keys, up to a position.
pub(super) struct Fold {
    position: i64,
    keys: HashMap<OwnedRow, (u64, Vec<Change>)>,
    truncates: Vec<(i64, i64)>,
    /// Compared column name → its place among the compared columns.
    compared: HashMap<String, usize>,
}

impl Fold {
    /// Folds changes with `_lsn` ≤ `position`; `compared` are the names of the compared
    /// columns, in the digester's order.
    pub fn new(position: i64, compared: &[String]) -> Fold {
        Fold {
            position,
            keys: HashMap::new(),
            truncates: Vec::new(),
            compared: compared
                .iter()
                .enumerate()
                .map(|(i, name)| (name.clone(), i))
                .collect(),
        }
    }

    /// Takes the changes of `batch` (in `layout`) whose key `wanted` accepts.
    pub fn add(
        &mut self,
        batch: &RecordBatch,
        layout: &SchemaRef,
        digester: &Digester,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<(), ArrowError> {
        let column = |name: &str| {
            layout
                .index_of(name)
                .map(|i| batch.column(i).clone())
                .map_err(|_| ArrowError::SchemaError(format!("the lake table has no {name}")))
        };
        let ops = column(OP_COLUMN)?;
        let ops = ops.as_string::<i32>();
        let lsns = column(LSN_COLUMN)?;
        let lsns = lsns.as_primitive::<Int64Type>();
        let seqs = column(SEQ_COLUMN)?;
        let seqs = seqs.as_primitive::<Int64Type>();
        let unchanged = column(UNCHANGED_COLUMN)?;
        let unchanged = unchanged.as_list::<i32>();
        let digested = digester.digest(batch)?;
        for row in 0..batch.num_rows() {
            let lsn = lsns.value(row);
            if lsn > self.position {
                continue;
            }
            let seq = seqs.value(row);
            let op = ops.value(row);
            if op == "t" {
                self.truncates.push((lsn, seq));
                continue;
            }
            let key_hash = digested.key_hashes[row];
            if !wanted(key_hash) {
                continue;
            }
            let mut columns: Box<[u64]> = digested.row(row).into_boxed_slice();
            if unchanged.is_valid(row) {
                let names = unchanged.value(row);
                for name in names.as_string::<i32>().iter().flatten() {
                    if let Some(&i) = self.compared.get(name) {
                        columns[i] = UNSENT;
                    }
                }
            }
            let change = Change {
                lsn,
                seq,
                delete: op == "d",
                columns,
            };
            self.keys
                .entry(digested.keys[row].clone())
                .or_insert_with(|| (key_hash, Vec::new()))
                .1
                .push(change);
        }
        Ok(())
    }

    /// Every key that exists at the position, and every key whose change log holds a
    /// change twice.
    pub fn finish(self) -> impl Iterator<Item = Folded> {
        let last_truncate = self.truncates.iter().copied().max();
        self.keys
            .into_iter()
            .filter_map(move |(key, (key_hash, mut changes))| {
                changes.sort_by_key(|c| (c.lsn, c.seq));
                // A change the log holds twice (a file committed twice) is a defect even
                // where folding would hide it: the key is reported.
                let duplicated = changes
                    .windows(2)
                    .any(|w| (w[0].lsn, w[0].seq) == (w[1].lsn, w[1].seq));
                let mut state: Option<Vec<u64>> = None;
                for change in changes {
                    if last_truncate.is_some_and(|t| (change.lsn, change.seq) <= t) {
                        continue;
                    }
                    if change.delete {
                        state = None;
                        continue;
                    }
                    let previous = state.take();
                    let row = change
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, value)| {
                            if *value == UNSENT {
                                previous.as_ref().map_or(UNKNOWN, |p| p[i])
                            } else {
                                *value
                            }
                        })
                        .collect();
                    state = Some(row);
                }
                let row = state.map(|row| row_hash(&row));
                (row.is_some() || duplicated).then_some(Folded {
                    key,
                    key_hash,
                    row,
                    duplicated,
                })
            })
    }
}
