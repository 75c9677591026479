//! The mirror's unit tests: folding, merging and grouping keys by file.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::row::{OwnedRow, RowConverter, SortField};
use object_store::path::Path;

use super::files::{MirrorFile, group_by_file, remove_of};
use super::fold::{Folded, fold, merge, project};
use crate::schema::{LSN_COLUMN, OP_COLUMN, SEQ_COLUMN, UNCHANGED_COLUMN};

/// Change-log rows (id, note, _op, _lsn, _seq, _unchanged).
type Change<'a> = (i32, Option<&'a str>, &'a str, i64, i64, &'a [&'a str]);

fn changes(rows: &[Change]) -> RecordBatch {
    let mut unchanged = ListBuilder::new(StringBuilder::new());
    for (.., names) in rows {
        if names.is_empty() {
            unchanged.append_null();
        } else {
            for name in *names {
                unchanged.values().append_value(name);
            }
            unchanged.append(true);
        }
    }
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int32, true),
        Field::new("note", DataType::Utf8, true),
        Field::new(OP_COLUMN, DataType::Utf8, false),
        Field::new(LSN_COLUMN, DataType::Int64, false),
        Field::new(SEQ_COLUMN, DataType::Int64, false),
        Field::new(
            UNCHANGED_COLUMN,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(rows.iter().map(|r| Some(r.0)).collect::<Int32Array>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| Some(r.2)).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| Some(r.3)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.4)).collect::<Int64Array>()),
            Arc::new(unchanged.finish()),
        ],
    )
    .unwrap()
}

fn converter() -> RowConverter {
    RowConverter::new(vec![SortField::new(DataType::Int32)]).unwrap()
}

fn key(id: i32) -> OwnedRow {
    let column: ArrayRef = Arc::new(Int32Array::from(vec![id]));
    converter()
        .convert_columns(&[column])
        .unwrap()
        .row(0)
        .owned()
}

#[test]
fn the_last_change_wins_a_delete_removes_and_a_truncate_ends_what_came_before() {
    let batch = changes(&[
        (3, Some("c"), "c", 40, 2, &[]),
        (1, Some("a2"), "u", 20, 1, &[]),
        (1, Some("a"), "c", 10, 1, &[]),
        (2, Some("b"), "c", 10, 2, &[]),
        (2, None, "d", 30, 1, &[]),
    ]);
    let folded = fold(&batch, &["id".to_owned()], &converter()).unwrap();
    assert!(!folded.truncated);
    assert_eq!(folded.keys[&key(1)].as_ref().map(|u| u.row), Some(1));
    assert!(folded.keys[&key(2)].is_none(), "a deleted key has no row");
    assert_eq!(folded.keys[&key(3)].as_ref().map(|u| u.row), Some(0));

    let batch = changes(&[
        (1, Some("a"), "c", 10, 1, &[]),
        (0, None, "t", 40, 1, &[]),
        (3, Some("c"), "c", 40, 2, &[]),
    ]);
    let folded = fold(&batch, &["id".to_owned()], &converter()).unwrap();
    assert!(folded.truncated);
    assert_eq!(
        folded.keys.keys().cloned().collect::<Vec<_>>(),
        vec![key(3)]
    );
}

#[test]
fn unsent_toast_values_come_from_the_last_change_that_sent_them_or_the_mirror() {
    let batch = changes(&[
        (1, Some("big"), "c", 10, 1, &[]),
        (1, None, "u", 20, 1, &["note"]),
        (1, None, "u", 30, 1, &["note"]),
        (2, None, "u", 20, 2, &["note"]),
        (3, Some("old"), "c", 5, 1, &[]),
        (3, None, "d", 6, 1, &[]),
        (3, None, "u", 7, 1, &["note"]),
    ]);
    let folded = fold(&batch, &["id".to_owned()], &converter()).unwrap();
    let fills = |id| folded.keys[&key(id)].as_ref().unwrap().fills.clone();
    // note is column 1 of the mirror (id, note).
    assert_eq!(
        fills(1),
        vec![(1, Some(0))],
        "from the insert two changes back"
    );
    assert_eq!(
        fills(2),
        vec![(1, None)],
        "from the key's row in the mirror"
    );
    assert_eq!(fills(3), vec![], "a delete in between: nothing to carry");
}

#[test]
fn merge_keeps_untouched_rows_applies_changes_and_sorts_by_key() {
    let layout = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, true),
        Field::new("note", DataType::Utf8, true),
    ]));
    let existing = RecordBatch::try_new(
        layout.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
        ],
    )
    .unwrap();
    let log = changes(&[
        (2, None, "d", 10, 1, &[]),
        (4, Some("d"), "c", 10, 2, &[]),
        (1, None, "u", 10, 3, &["note"]),
    ]);
    let folded = fold(&log, &["id".to_owned()], &converter()).unwrap();
    let changed = project(&log, &layout).unwrap();
    let keys: Vec<OwnedRow> = folded.keys.keys().cloned().collect();
    let merged = merge(
        &existing,
        &changed,
        &folded,
        &keys,
        &["id".to_owned()],
        &converter(),
    )
    .unwrap();
    let ids = merged
        .column(0)
        .as_primitive::<arrow::datatypes::Int32Type>();
    let notes = merged.column(1).as_string::<i32>();
    assert_eq!(ids.values().to_vec(), vec![1, 3, 4]);
    assert_eq!(
        (0..3).map(|i| notes.value(i)).collect::<Vec<_>>(),
        vec!["a", "c", "d"],
        "key 1 keeps its unsent note from the mirror"
    );
}

#[test]
fn keys_go_to_the_file_whose_range_takes_them() {
    let file = |first: i32| MirrorFile {
        path: Path::from("f.parquet"),
        remove: remove_of("f.parquet"),
        size: 0,
        first: key(first).row().data().to_vec(),
        committed: true,
    };
    let files = vec![file(1), file(500), file(1000)];
    let folded = Folded {
        keys: [0, 2, 499, 500, 1999]
            .into_iter()
            .map(|id| (key(id), None))
            .collect(),
        truncated: false,
    };
    let groups = group_by_file(&files, &folded, false);
    let grouped: Vec<(Option<usize>, usize)> = groups
        .iter()
        .map(|(file, keys)| (*file, keys.len()))
        .collect();
    // 0 (below every range) and 2 and 499 → the first file, 500 → the second,
    // 1999 → the last.
    assert_eq!(grouped, vec![(Some(0), 3), (Some(1), 1), (Some(2), 1)]);
}
