//! Folding a step's changes into the rows they leave: per key its last change (or its
//! deletion), merged with a mirror file's rows.

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::compute::interleave;
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, Rows};

use super::LEFT_OUT;
use crate::schema::{LSN_COLUMN, OP_COLUMN, SEQ_COLUMN, UNCHANGED_COLUMN};

/// What the changes leave of each changed key.
pub(super) struct Folded {
    /// Per changed key: its final change, or `None` when it is deleted.
    pub(super) keys: BTreeMap<OwnedRow, Option<Upsert>>,
    /// Whether a truncate is among the changes: every row from before it is gone.
    pub(super) truncated: bool,
}

/// Where a column's unsent TOAST value comes from: (column index in the mirror layout,
/// the earlier change that sent it; `None`: the key's row in the mirror).
type FillSource = (usize, Option<usize>);

/// A key's final row: the change it comes from, and for each column whose unchanged
/// TOAST value it did not send, where the value comes from.
pub(super) struct Upsert {
    pub(super) row: usize,
    pub(super) fills: Vec<FillSource>,
}

/// Folds `changes` (change-log rows) per key, in (`_lsn`, `_seq`) order.
pub(super) fn fold(
    changes: &RecordBatch,
    key: &[String],
    converter: &RowConverter,
) -> Result<Folded, arrow::error::ArrowError> {
    let column = |name: &str| {
        changes.column_by_name(name).ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("the change log has no {name}"))
        })
    };
    let lsn = column(LSN_COLUMN)?.as_primitive::<Int64Type>().clone();
    let seq = column(SEQ_COLUMN)?.as_primitive::<Int64Type>().clone();
    let op = column(OP_COLUMN)?.as_string::<i32>().clone();
    let unchanged = column(UNCHANGED_COLUMN)?.as_list::<i32>().clone();
    let key_columns: Vec<ArrayRef> = key
        .iter()
        .map(|k| column(k).cloned())
        .collect::<Result<_, _>>()?;
    let keys = converter.convert_columns(&key_columns)?;
    let position = |i: usize| (lsn.value(i), seq.value(i));
    let mut order: Vec<usize> = (0..changes.num_rows()).collect();
    order.sort_by_key(|&i| position(i));
    let truncate = order
        .iter()
        .rev()
        .find(|&&i| op.value(i) == "t")
        .map(|&i| position(i));
    let mut per_key: HashMap<OwnedRow, Vec<usize>> = HashMap::new();
    for &i in &order {
        if op.value(i) == "t" || truncate.is_some_and(|t| position(i) <= t) {
            continue;
        }
        per_key.entry(keys.row(i).owned()).or_default().push(i);
    }
    let mirror_columns: Vec<&str> = changes
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|name| !LEFT_OUT.contains(name))
        .collect();
    let unsent = |i: usize| -> Vec<String> {
        if unchanged.is_null(i) {
            return Vec::new();
        }
        let list = unchanged.value(i);
        let names = list.as_string::<i32>();
        (0..names.len())
            .filter(|&j| !names.is_null(j))
            .map(|j| names.value(j).to_owned())
            .collect()
    };
    let mut folded = BTreeMap::new();
    for (key, rows) in per_key {
        let Some(&last) = rows.last() else { continue };
        if op.value(last) == "d" {
            folded.insert(key, None);
            continue;
        }
        let mut fills = Vec::new();
        for name in unsent(last) {
            let Some(index) = mirror_columns.iter().position(|c| *c == name) else {
                continue;
            };
            // The latest earlier change of the key that sent the column; a delete or a
            // truncate in between would have ended the row, so none is looked past.
            let source = rows[..rows.len() - 1]
                .iter()
                .rev()
                .take_while(|&&i| op.value(i) != "d")
                .find(|&&i| !unsent(i).contains(&name))
                .copied();
            // No earlier change sent it: the mirror's row has it, unless the key was
            // deleted or truncated away in between.
            let from_mirror = source.is_none()
                && truncate.is_none()
                && !rows[..rows.len() - 1].iter().any(|&i| op.value(i) == "d");
            if source.is_some() || from_mirror {
                fills.push((index, source));
            }
        }
        folded.insert(key, Some(Upsert { row: last, fills }));
    }
    Ok(Folded {
        keys: folded,
        truncated: truncate.is_some(),
    })
}

/// `changes` with only the mirror's columns.
pub(super) fn project(
    changes: &RecordBatch,
    layout: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = layout
        .fields()
        .iter()
        .map(|field| {
            changes
                .column_by_name(field.name())
                .cloned()
                .ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(format!("no column {}", field.name()))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(layout.clone(), columns)
}

/// One row of [`merge`]'s output.
struct OutputRow<'a> {
    /// Its key (row format).
    key: &'a [u8],
    /// Where its values come from: (0, a change) or (1, a row of the file).
    pick: (usize, usize),
    /// For an upsert, where its unsent TOAST values come from.
    sources: &'a [FillSource],
}

/// The rows of a file after the changes: its rows whose key did not change, and the
/// final rows of `keys` (those not deleted), sorted by key.
pub(super) fn merge(
    existing: &RecordBatch,
    changed: &RecordBatch,
    folded: &Folded,
    keys: &[OwnedRow],
    key: &[String],
    converter: &RowConverter,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let existing_keys = key_rows(existing, key, converter)?;
    let changed_set: HashSet<&[u8]> = keys.iter().map(|k| k.row().data()).collect();
    let mut existing_row: HashMap<&[u8], usize> = HashMap::new();
    // Per output row: its key, (source, row) with source 0 the changes, 1 the file, 2 a
    // null, and for an upsert where its unsent values come from.
    let mut rows: Vec<OutputRow> = Vec::new();
    for i in 0..existing.num_rows() {
        let row = existing_keys.row(i).data();
        if changed_set.contains(row) {
            existing_row.insert(row, i);
        } else {
            rows.push(OutputRow {
                key: row,
                pick: (1, i),
                sources: &[],
            });
        }
    }
    for key in keys {
        if let Some(Some(upsert)) = folded.keys.get(key) {
            rows.push(OutputRow {
                key: key.row().data(),
                pick: (0, upsert.row),
                sources: &upsert.fills,
            });
        }
    }
    // Sorted by key before the one copy of the values.
    rows.sort_by(|a, b| a.key.cmp(b.key));
    let picks: Vec<(usize, usize)> = rows.iter().map(|row| row.pick).collect();
    let columns = (0..existing.num_columns())
        .map(|c| {
            let mut indices = picks.clone();
            for (at, row) in rows.iter().enumerate() {
                if let Some((_, source)) = row.sources.iter().find(|(column, _)| *column == c) {
                    indices[at] = match source {
                        Some(change) => (0, *change),
                        None => existing_row.get(row.key).map_or((2, 0), |i| (1, *i)),
                    };
                }
            }
            let null = new_null_array(existing.column(c).data_type(), 1);
            interleave(
                &[
                    changed.column(c).as_ref(),
                    existing.column(c).as_ref(),
                    null.as_ref(),
                ],
                &indices,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(existing.schema(), columns)
}

pub(super) fn key_rows(
    batch: &RecordBatch,
    key: &[String],
    converter: &RowConverter,
) -> Result<Rows, arrow::error::ArrowError> {
    let columns: Vec<ArrayRef> =
        key.iter()
            .map(|k| {
                batch.column_by_name(k).cloned().ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(format!("no key column {k}"))
                })
            })
            .collect::<Result<_, _>>()?;
    converter.convert_columns(&columns)
}

/// `batch` in pieces of at most `rows` rows (none for an empty batch).
pub(super) fn split(batch: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    (0..batch.num_rows())
        .step_by(rows)
        .map(|start| batch.slice(start, rows.min(batch.num_rows() - start)))
        .collect()
}
