//! The Parquet encoding of the lake's data files, and when date columns get statistics.
//!
//! Date min/max statistics let readers skip files on date predicates, but two things go
//! wrong beyond ordinary dates: deltalake-core turns a date statistic into a chrono date
//! and panics past year 262143 (Postgres dates reach 5874897, and pg2lake stores
//! `infinity` as the largest date32), and readers of the Delta log fail on dates before
//! year 1 or after 9999 in the statistics JSON. So a file gets date statistics only when
//! every date in it, nested ones included, lies in years 1 to 9999:
//!
//! ```text
//!  write(batch) ─► dates_fit_statistics? ─ yes ─► writer with date statistics
//!                                        └ no ──► seal open files (their dates fit), then
//!                                                 date statistics off for this table
//! ```

use arrow::array::{Array, AsArray};
use arrow::compute::{max, min};
use arrow::datatypes::{DataType, Date32Type, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Rows per Parquet row group: large enough for good compression and scans.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Bytes per Parquet row group: an open file buffers one row group in memory, so this
/// bounds the writer's memory per open partition whatever the row width.
pub(super) const ROW_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// zstd level 1: on the snapshot benchmark's table it used less CPU than level 3 and,
/// with plain-encoded high-cardinality columns, wrote no larger files (39 MB against 41 MB
/// for 5,000,000 rows).
const ZSTD_LEVEL: i32 = 1;
/// Dictionary size at which a column chunk falls back to plain encoding. Low-cardinality
/// columns (`_op`, status codes, countries) fit far below it and keep their dictionary;
/// keys, timestamps and free text give up early instead of hashing a whole row group
/// into a dictionary that is then thrown away (that cost a quarter of the initial load's
/// CPU at the 1 MiB default).
const DICTIONARY_PAGE_BYTES: usize = 64 * 1024;

/// 0001-01-01 in days since 1970-01-01.
const FIRST_DAY_WITH_STATISTICS: i32 = -719_162;
/// 9999-12-31 in days since 1970-01-01.
const LAST_DAY_WITH_STATISTICS: i32 = 2_932_896;

/// The writer properties of a table whose Arrow layout is `schema`; date columns (and
/// dates in lists and structs) have statistics only when `date_statistics` is set, and
/// the columns named in `no_statistics` (top-level names, every leaf under them) never:
/// without Parquet statistics the Delta log gets no min/max of them either.
pub(super) fn writer_properties(
    schema: &Schema,
    date_statistics: bool,
    no_statistics: &[String],
) -> WriterProperties {
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default(),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .set_created_by(format!("pg2lake {}", env!("CARGO_PKG_VERSION")));
    if !date_statistics {
        for path in date_columns(schema) {
            properties = properties.set_column_statistics_enabled(path, EnabledStatistics::None);
        }
    }
    let unstated = schema
        .fields()
        .iter()
        .filter(|f| no_statistics.contains(f.name()))
        .flat_map(|f| leaves(f));
    for (path, _) in unstated {
        properties = properties.set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    properties.build()
}

/// Whether every date in `batch` (date columns, and dates inside lists and structs) lies
/// in years 1 to 9999, where date statistics are safe (see the module docs).
pub(super) fn dates_fit_statistics(batch: &RecordBatch) -> bool {
    fn fits(array: &dyn Array) -> bool {
        match array.data_type() {
            DataType::Date32 => {
                let days = array.as_primitive::<Date32Type>();
                match (min(days), max(days)) {
                    (Some(first), Some(last)) => {
                        first >= FIRST_DAY_WITH_STATISTICS && last <= LAST_DAY_WITH_STATISTICS
                    }
                    // All null (or empty): nothing to describe.
                    _ => true,
                }
            }
            // All element values, also those behind null or sliced-off lists: at worst a
            // file goes without statistics it could have had.
            DataType::List(_) => fits(array.as_list::<i32>().values().as_ref()),
            DataType::Struct(_) => array.as_struct().columns().iter().all(|c| fits(c.as_ref())),
            _ => true,
        }
    }
    batch.columns().iter().all(|column| fits(column.as_ref()))
}

/// The Parquet paths of the date leaves of `schema`: date columns, and dates inside
/// lists (`<name>.list.<element>`, as Arrow's Parquet writer nests them) and structs.
fn date_columns(schema: &Schema) -> Vec<ColumnPath> {
    schema
        .fields()
        .iter()
        .flat_map(|field| leaves(field))
        .filter(|(_, data_type)| *data_type == DataType::Date32)
        .map(|(path, _)| path)
        .collect()
}

/// The Parquet leaf columns of one top-level field, with their Arrow types.
fn leaves(field: &Field) -> Vec<(ColumnPath, DataType)> {
    fn walk(data_type: &DataType, path: &mut Vec<String>, out: &mut Vec<(ColumnPath, DataType)>) {
        match data_type {
            DataType::List(element) => {
                path.extend(["list".to_owned(), element.name().clone()]);
                walk(element.data_type(), path, out);
                path.truncate(path.len() - 2);
            }
            DataType::Map(entries, _) => {
                path.push(entries.name().clone());
                walk(entries.data_type(), path, out);
                path.pop();
            }
            DataType::Struct(fields) => {
                for field in fields {
                    path.push(field.name().clone());
                    walk(field.data_type(), path, out);
                    path.pop();
                }
            }
            leaf => out.push((ColumnPath::new(path.clone()), leaf.clone())),
        }
    }
    let mut out = Vec::new();
    walk(field.data_type(), &mut vec![field.name().clone()], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Int32Array, ListArray, StructArray};
    use arrow::datatypes::{Field, Int32Type};
    use chrono::NaiveDate;

    use super::*;

    fn days(year: i32, month: u32, day: u32) -> i32 {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let date = NaiveDate::from_ymd_opt(year, month, day).unwrap();
        i32::try_from((date - epoch).num_days()).unwrap()
    }

    fn batch(column: Arc<dyn Array>) -> RecordBatch {
        RecordBatch::try_from_iter([("c", column)]).unwrap()
    }

    #[test]
    fn the_bounds_are_years_1_and_9999() {
        assert_eq!(FIRST_DAY_WITH_STATISTICS, days(1, 1, 1));
        assert_eq!(LAST_DAY_WITH_STATISTICS, days(9999, 12, 31));
    }

    #[test]
    fn only_dates_in_years_1_to_9999_fit() {
        let fit = |values: Vec<Option<i32>>| {
            dates_fit_statistics(&batch(Arc::new(Date32Array::from(values))))
        };
        assert!(fit(vec![
            Some(0),
            None,
            Some(days(9999, 12, 31)),
            Some(days(1, 1, 1))
        ]));
        assert!(fit(vec![None, None]));
        assert!(fit(vec![]));
        assert!(!fit(vec![Some(0), Some(i32::MAX)]), "infinity");
        assert!(!fit(vec![Some(i32::MIN)]), "-infinity");
        assert!(!fit(vec![Some(days(10000, 1, 1))]));
        assert!(!fit(vec![Some(days(0, 12, 31))]), "1 BC");
        let ints = batch(Arc::new(Int32Array::from(vec![i32::MAX])));
        assert!(dates_fit_statistics(&ints), "not a date");
    }

    #[test]
    fn nested_dates_count() {
        let dates = |values: Vec<Option<i32>>| Arc::new(Date32Array::from(values));
        let list = ListArray::new(
            Arc::new(Field::new("element", DataType::Date32, true)),
            arrow::buffer::OffsetBuffer::from_lengths([2]),
            dates(vec![Some(0), Some(i32::MAX)]),
            None,
        );
        assert!(!dates_fit_statistics(&batch(Arc::new(list))));
        let range = StructArray::from(vec![
            (
                Arc::new(Field::new("lower", DataType::Date32, true)),
                dates(vec![Some(0)]) as Arc<dyn Array>,
            ),
            (
                Arc::new(Field::new("upper", DataType::Date32, true)),
                dates(vec![Some(days(1, 1, 1) - 1)]),
            ),
        ]);
        assert!(!dates_fit_statistics(&batch(Arc::new(range))));
        let ints = ListArray::from_iter_primitive::<Int32Type, _, _>([Some(vec![Some(1)])]);
        assert!(dates_fit_statistics(&batch(Arc::new(ints))));
    }

    #[test]
    fn date_statistics_are_switched_per_leaf() {
        let schema = Schema::new(vec![
            Field::new("d", DataType::Date32, true),
            Field::new("n", DataType::Int32, true),
            Field::new(
                "ds",
                DataType::List(Arc::new(Field::new("element", DataType::Date32, true))),
                true,
            ),
        ]);
        let off = writer_properties(&schema, false, &[]);
        let on = writer_properties(&schema, true, &[]);
        for path in [
            ColumnPath::from("d"),
            ColumnPath::new(vec!["ds".into(), "list".into(), "element".into()]),
        ] {
            assert_eq!(off.statistics_enabled(&path), EnabledStatistics::None);
            assert_ne!(on.statistics_enabled(&path), EnabledStatistics::None);
        }
        assert_ne!(
            off.statistics_enabled(&ColumnPath::from("n")),
            EnabledStatistics::None
        );
    }

    #[test]
    fn date_leaves_are_found_at_any_depth() {
        use crate::schema::{Conversion, Element};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("day", DataType::Date32, true),
            Field::new("days", Conversion::Array(Element::Date).data_type(), true),
            Field::new("span", Conversion::Range(Element::Date).data_type(), true),
            Field::new("spans", Conversion::Range(Element::Int32).data_type(), true),
        ]);
        let paths: Vec<String> = date_columns(&schema)
            .iter()
            .map(ColumnPath::string)
            .collect();
        assert_eq!(
            paths,
            ["day", "days.list.element", "span.lower", "span.upper"]
        );
    }
}
