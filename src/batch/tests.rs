use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};

use arrow::datatypes::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType,
};

use super::text::{parse_date, parse_decimal, parse_timestamp};
use super::*;
use crate::pg::pgoutput::RelationColumn;
use crate::schema::fixtures::typmod;
use crate::schema::oid;

fn table(columns: &[(&str, u32, i32)]) -> Arc<TableSchema> {
    let columns: Vec<RelationColumn> = columns
        .iter()
        .map(|&(name, type_oid, type_modifier)| RelationColumn {
            is_key: false,
            name: name.to_owned(),
            type_oid,
            type_modifier,
        })
        .collect();
    Arc::new(TableSchema::new("public", "t", &columns).unwrap())
}

fn meta(op: Op) -> ChangeMeta {
    ChangeMeta {
        op,
        lsn: Lsn(0x16_B374_D848),
        seq: 3,
        // 2026-11-22 07:38:35 UTC
        commit_ts_micros: 1_795_333_115_000_000,
        xid: Some(4242),
    }
}

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// One column of `type_oid`/`typmod` holding `value`: the finished column array.
fn convert(type_oid: u32, type_modifier: i32, value: &str) -> Result<ArrayRef, BatchError> {
    let mut batch = TableBatch::new(table(&[("v", type_oid, type_modifier)]));
    batch.push(&meta(Op::Insert), &[text(value)])?;
    Ok(batch.finish().unwrap().column(0).clone())
}

fn convert_err(type_oid: u32, type_modifier: i32, value: &str) -> ValueError {
    match convert(type_oid, type_modifier, value) {
        Err(BatchError::Value { source, .. }) => source,
        other => panic!("{value:?} should fail, got {other:?}"),
    }
}

fn ts(value: &str) -> i64 {
    parse_timestamp(value.as_bytes(), true).unwrap()
}

#[test]
fn converts_every_type_and_null() {
    let schema = table(&[
        ("b", oid::BOOL, -1),
        ("i2", oid::INT2, -1),
        ("i4", oid::INT4, -1),
        ("i8", oid::INT8, -1),
        ("o", oid::OID, -1),
        ("f4", oid::FLOAT4, -1),
        ("f8", oid::FLOAT8, -1),
        ("n", oid::NUMERIC, typmod(12, 2)),
        ("nu", oid::NUMERIC, -1),
        ("t", oid::TEXT, -1),
        ("vc", oid::VARCHAR, 14),
        ("u", oid::UUID, -1),
        ("j", oid::JSONB, -1),
        ("by", oid::BYTEA, -1),
        ("d", oid::DATE, -1),
        ("ts", oid::TIMESTAMP, -1),
        ("tz", oid::TIMESTAMPTZ, -1),
    ]);
    let mut batch = TableBatch::new(schema.clone());
    let row = [
        "t",
        "-7",
        "123456",
        "9000000000",
        "4294967295",
        "0.1",
        "3.141592653589793",
        "1234.50",
        "-0.000000000000000000000000000000000000000001",
        "héllo",
        "abc",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        r#"{"a": 1}"#,
        r"\x0a0bFF",
        "2026-11-22",
        "2026-11-22 07:38:35",
        "2026-11-22 07:38:35.123456+00",
    ];
    batch
        .push(&meta(Op::Insert), &row.map(text))
        .expect("valid row");
    let nulls: Vec<TupleValue> = row.iter().map(|_| TupleValue::Null).collect();
    batch.push(&meta(Op::Update), &nulls).unwrap();
    let rb = batch.finish().unwrap();
    assert_eq!(rb.schema(), schema.arrow);
    assert_eq!(rb.num_rows(), 2);
    for (i, column) in rb.columns().iter().take(row.len()).enumerate() {
        assert!(column.is_valid(0), "column {i} row 0");
        assert!(column.is_null(1), "column {i} row 1");
    }
    let col = |name: &str| rb.column_by_name(name).unwrap().clone();
    assert!(col("b").as_boolean().value(0));
    assert_eq!(col("i2").as_primitive::<Int16Type>().value(0), -7);
    assert_eq!(col("i4").as_primitive::<Int32Type>().value(0), 123_456);
    assert_eq!(
        col("i8").as_primitive::<Int64Type>().value(0),
        9_000_000_000
    );
    assert_eq!(col("o").as_primitive::<Int64Type>().value(0), 4_294_967_295);
    assert_eq!(col("f4").as_primitive::<Float32Type>().value(0), 0.1_f32);
    assert_eq!(
        col("f8").as_primitive::<Float64Type>().value(0),
        std::f64::consts::PI
    );
    assert_eq!(col("n").as_primitive::<Decimal128Type>().value(0), 123_450);
    assert_eq!(col("n").data_type(), &DataType::Decimal128(12, 2));
    assert_eq!(
        col("nu").as_string::<i32>().value(0),
        "-0.000000000000000000000000000000000000000001"
    );
    assert_eq!(col("t").as_string::<i32>().value(0), "héllo");
    assert_eq!(col("vc").as_string::<i32>().value(0), "abc");
    assert_eq!(
        col("u").as_string::<i32>().value(0),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert_eq!(col("j").as_string::<i32>().value(0), r#"{"a": 1}"#);
    assert_eq!(
        col("by").as_binary::<i32>().value(0),
        &[0x0a, 0x0b, 0xff][..]
    );
    let date = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
    let days = (date - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days();
    assert_eq!(
        i64::from(col("d").as_primitive::<Date32Type>().value(0)),
        days
    );
    assert_eq!(
        col("ts")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_795_333_115_000_000
    );
    assert_eq!(
        col("tz")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_795_333_115_123_456
    );
    assert_eq!(
        col("tz").data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
}

#[test]
fn writes_metadata_columns() {
    let mut batch = TableBatch::new(table(&[("id", oid::INT4, -1)]));
    let mut m = meta(Op::Delete);
    batch.push(&m, &[text("1")]).unwrap();
    m.op = Op::Read;
    m.xid = None;
    // 1969-12-31 23:59:59.999999 UTC: before the epoch, the date must floor.
    m.commit_ts_micros = -1;
    batch.push(&m, &[text("2")]).unwrap();
    let rb = batch.finish().unwrap();
    let col = |name: &str| rb.column_by_name(name).unwrap().clone();
    let op = col("_op");
    assert_eq!(op.as_string::<i32>().value(0), "d");
    assert_eq!(op.as_string::<i32>().value(1), "r");
    assert_eq!(
        col("_lsn").as_primitive::<Int64Type>().value(0),
        0x16_B374_D848
    );
    assert_eq!(col("_seq").as_primitive::<Int64Type>().value(0), 3);
    assert_eq!(
        col("_commit_ts")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_795_333_115_000_000
    );
    assert_eq!(col("_xid").as_primitive::<Int64Type>().value(0), 4242);
    assert!(col("_xid").is_null(1));
    assert!(col("_unchanged").is_null(0));
    let date = col("date");
    let date = date.as_primitive::<Date32Type>();
    assert_eq!(date.value(0), 20_779); // 2026-11-22
    assert_eq!(date.value(1), -1); // 1969-12-31
    let codes = [Op::Read, Op::Insert, Op::Update, Op::Delete, Op::Truncate].map(Op::code);
    assert_eq!(codes, ['r', 'c', 'u', 'd', 't']);
    for op in [Op::Read, Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
        assert_eq!(op.as_str(), op.code().to_string());
    }
}

#[test]
fn integer_extremes() {
    let i8 = |v: &str| {
        convert(oid::INT8, -1, v)
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0)
    };
    assert_eq!(i8("9223372036854775807"), i64::MAX);
    assert_eq!(i8("-9223372036854775808"), i64::MIN);
    assert_eq!(i8("0"), 0);
    assert_eq!(
        convert_err(oid::INT8, -1, "9223372036854775808"),
        ValueError::OutOfRange
    );
    assert_eq!(
        convert(oid::INT2, -1, "-32768")
            .unwrap()
            .as_primitive::<Int16Type>()
            .value(0),
        i16::MIN
    );
    assert_eq!(convert_err(oid::INT2, -1, "32768"), ValueError::OutOfRange);
    assert_eq!(
        convert(oid::INT4, -1, "2147483647")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        i32::MAX
    );
    for bad in ["", "-", "1.0", " 1", "1e3", "+1", "０"] {
        assert_eq!(
            convert_err(oid::INT4, -1, bad),
            ValueError::Malformed,
            "{bad:?}"
        );
    }
}

#[test]
fn float_specials_and_exactness() {
    let f8 = |v: &str| {
        convert(oid::FLOAT8, -1, v)
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0)
    };
    assert!(f8("NaN").is_nan());
    assert_eq!(f8("Infinity"), f64::INFINITY);
    assert_eq!(f8("-Infinity"), f64::NEG_INFINITY);
    assert_eq!(f8("1e+308"), 1e308);
    assert_eq!(f8("-0"), 0.0);
    assert!(f8("-0").is_sign_negative());
    assert_eq!(f8("5e-324"), f64::from_bits(1));
    let f4 = convert(oid::FLOAT4, -1, "3.4028235e+38").unwrap();
    assert_eq!(f4.as_primitive::<Float32Type>().value(0), f32::MAX);
    assert_eq!(convert_err(oid::FLOAT8, -1, "one"), ValueError::Malformed);
}

#[test]
fn numeric_exact_and_extremes() {
    let dec = |p, s, v: &str| {
        convert(oid::NUMERIC, typmod(p, s), v)
            .unwrap()
            .as_primitive::<Decimal128Type>()
            .value(0)
    };
    let max38 = "99999999999999999999999999999999999999";
    assert_eq!(dec(38, 0, max38), 10_i128.pow(38) - 1);
    assert_eq!(dec(38, 0, &format!("-{max38}")), -(10_i128.pow(38) - 1));
    assert_eq!(
        dec(38, 38, "0.99999999999999999999999999999999999999"),
        10_i128.pow(38) - 1
    );
    assert_eq!(dec(12, 2, "-0.01"), -1);
    assert_eq!(dec(12, 2, "0.00"), 0);
    assert_eq!(dec(12, 2, "-0.00"), 0);
    assert_eq!(dec(12, 2, "9999999999.99"), 999_999_999_999);
    // Fewer fractional digits than the scale are padded.
    assert_eq!(dec(12, 2, "12.5"), 1250);
    assert_eq!(dec(12, 2, "12"), 1200);
    assert_eq!(dec(5, 0, "00042"), 42);
    // Extra fractional zeros are not rounding (an unconstrained numeric's display scale).
    assert_eq!(dec(12, 2, "12.5000"), 1250);
    assert_eq!(dec(5, 0, "7.000"), 7);
    assert_eq!(
        convert_err(oid::NUMERIC, typmod(12, 2), "1.2340"),
        ValueError::TooManyFractionalDigits
    );
    assert_eq!(
        convert_err(oid::NUMERIC, typmod(12, 2), "1.234"),
        ValueError::TooManyFractionalDigits
    );
    assert_eq!(
        convert_err(oid::NUMERIC, typmod(12, 2), "12345678901.00"),
        ValueError::TooManyIntegerDigits
    );
    assert_eq!(
        convert_err(oid::NUMERIC, typmod(38, 0), &format!("{max38}9")),
        ValueError::TooManyIntegerDigits
    );
    for special in ["NaN", "Infinity", "-Infinity"] {
        assert_eq!(
            convert_err(oid::NUMERIC, typmod(12, 2), special),
            ValueError::NotFinite
        );
    }
    for bad in ["", "-", ".", "1.2.3", "1,00", "1e5", "--1", " 1"] {
        assert_eq!(
            convert_err(oid::NUMERIC, typmod(12, 2), bad),
            ValueError::Malformed,
            "{bad:?}"
        );
    }
    // Unconstrained numeric keeps the exact text, specials included.
    for v in ["NaN", "Infinity", "-Infinity", "123.4500", "1e-5"] {
        let array = convert(oid::NUMERIC, -1, v).unwrap();
        assert_eq!(array.as_string::<i32>().value(0), v);
    }
}

#[test]
fn bytea_hex() {
    let bytes = |v: &str| {
        convert(oid::BYTEA, -1, v)
            .unwrap()
            .as_binary::<i32>()
            .value(0)
            .to_vec()
    };
    assert_eq!(bytes(r"\x"), Vec::<u8>::new());
    assert_eq!(bytes(r"\xDEADbeef"), vec![0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(convert_err(oid::BYTEA, -1, r"\x0"), ValueError::Malformed);
    assert_eq!(convert_err(oid::BYTEA, -1, r"\xzz"), ValueError::Malformed);
    assert_eq!(
        convert_err(oid::BYTEA, -1, r"\001abc"),
        ValueError::ByteaNotHex
    );
}

#[test]
fn bool_and_text() {
    let b = |v: &str| convert(oid::BOOL, -1, v).unwrap().as_boolean().value(0);
    assert!(b("t"));
    assert!(!b("f"));
    assert_eq!(convert_err(oid::BOOL, -1, "true"), ValueError::Malformed);
    let mut batch = TableBatch::new(table(&[("v", oid::TEXT, -1)]));
    let err = batch
        .push(
            &meta(Op::Insert),
            &[TupleValue::Text(Bytes::from_static(b"\xff\xfe"))],
        )
        .unwrap_err();
    assert!(matches!(
        err,
        BatchError::Value {
            source: ValueError::InvalidUtf8,
            ..
        }
    ));
}

#[test]
fn dates_bc_far_future_and_infinity() {
    let d = |v: &str| parse_date(v.as_bytes()).unwrap();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let chrono_days = |y, m, dd| {
        i32::try_from((NaiveDate::from_ymd_opt(y, m, dd).unwrap() - epoch).num_days()).unwrap()
    };
    assert_eq!(d("1970-01-01"), 0);
    assert_eq!(d("2024-02-29"), chrono_days(2024, 2, 29));
    assert_eq!(d("10000-01-01"), chrono_days(10000, 1, 1));
    // 1 BC is astronomical year 0 (a leap year); 44 BC is -43.
    assert_eq!(d("0001-01-01 BC"), chrono_days(0, 1, 1));
    assert_eq!(d("0001-02-29 BC"), chrono_days(0, 2, 29));
    assert_eq!(d("0044-03-15 BC"), chrono_days(-43, 3, 15));
    // Postgres's first date, Julian day 0.
    assert_eq!(d("4714-11-24 BC"), -2_440_588);
    // Postgres's last date: the day before JULIAN_MAX (5874898-01-01).
    assert_eq!(d("5874897-12-31"), 2_147_483_494 - 1 - 2_440_588);
    assert_eq!(d("infinity"), i32::MAX);
    assert_eq!(d("-infinity"), i32::MIN);
    for bad in [
        "2023-02-29",
        "2023-13-01",
        "2023-00-10",
        "2023-01-32",
        "0000-01-01",
        "123-01-01",
        "2023-1-01",
        "2023-01-01 AD",
        "2023-01-01 ",
        "Infinity",
    ] {
        assert!(parse_date(bad.as_bytes()).is_err(), "{bad:?}");
    }
    let array = convert(oid::DATE, -1, "0044-03-15 BC").unwrap();
    assert_eq!(
        array.as_primitive::<Date32Type>().value(0),
        chrono_days(-43, 3, 15)
    );
}

#[test]
fn timestamps_offsets_bc_and_infinity() {
    let utc = ts("2026-11-22 07:38:35.123456+00");
    assert_eq!(utc, 1_795_333_115_123_456);
    assert_eq!(ts("2026-11-22 13:08:35.123456+05:30"), utc);
    assert_eq!(ts("2026-11-21 23:38:35.123456-08:00:00"), utc);
    assert_eq!(ts("2026-11-22 07:38:35.5+00"), 1_795_333_115_500_000);
    assert_eq!(ts("1970-01-01 00:00:00+00"), 0);
    assert_eq!(ts("1969-12-31 23:59:59.999999+00"), -1);
    assert_eq!(ts("1970-01-01 00:00:00-00:00:01"), 1_000_000);
    let bc = NaiveDate::from_ymd_opt(-43, 3, 15)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    assert_eq!(ts("0044-03-15 12:00:00+00 BC"), bc);
    assert_eq!(
        parse_timestamp(b"0044-03-15 12:00:00 BC", false).unwrap(),
        bc
    );
    let y10k = NaiveDate::from_ymd_opt(10000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    assert_eq!(ts("10000-01-01 00:00:00+00"), y10k);
    assert_eq!(ts("infinity"), i64::MAX);
    assert_eq!(ts("-infinity"), i64::MIN);
    // Postgres allows up to 294276 AD, past i64 µs since 1970: an error, not a clamp.
    assert_eq!(
        parse_timestamp(b"294276-12-31 23:59:59.999999+00", true),
        Err(ValueError::OutOfRange)
    );
    // The one finite instant that would read back as 'infinity'.
    assert_eq!(
        parse_timestamp(b"294247-01-10 04:00:54.775807+00", true),
        Err(ValueError::OutOfRange)
    );
    assert_eq!(
        parse_timestamp(b"294247-01-10 04:00:54.775806+00", true),
        Ok(i64::MAX - 1)
    );
    for bad in [
        "2026-11-22 07:38:35",            // timestamptz needs an offset
        "2026-11-22 07:38:35+0",          // offset hours are two digits
        "2026-11-22 07:38:35.1234567+00", // finer than µs
        "2026-11-22 24:00:00+00",
        "2026-11-22 07:60:00+00",
        "2026-11-22T07:38:35+00",
        "2026-11-22 07:38:35.+00",
        "2026-11-22 07:38:35+05:",
        "2026-11-22 07:38:35+05:60",
        "2026-11-22 07:38:35+00 BC BC",
    ] {
        assert!(parse_timestamp(bad.as_bytes(), true).is_err(), "{bad:?}");
    }
    // timestamp without time zone rejects an offset.
    assert!(parse_timestamp(b"2026-11-22 07:38:35+00", false).is_err());
    let array = convert(oid::TIMESTAMPTZ, -1, "2026-11-22 13:08:35.123456+05:30").unwrap();
    assert_eq!(
        array.as_primitive::<TimestampMicrosecondType>().value(0),
        utc
    );
    let array = convert(oid::TIMESTAMP, -1, "infinity").unwrap();
    assert_eq!(
        array.as_primitive::<TimestampMicrosecondType>().value(0),
        i64::MAX
    );
}

#[test]
fn unchanged_toast_is_null_and_listed() {
    let mut batch = TableBatch::new(table(&[
        ("id", oid::INT4, -1),
        ("body", oid::TEXT, -1),
        ("doc", oid::JSONB, -1),
    ]));
    batch
        .push(
            &meta(Op::Update),
            &[
                text("1"),
                TupleValue::UnchangedToast,
                TupleValue::UnchangedToast,
            ],
        )
        .unwrap();
    batch
        .push(&meta(Op::Update), &[text("2"), text("x"), TupleValue::Null])
        .unwrap();
    let rb = batch.finish().unwrap();
    let body = rb.column_by_name("body").unwrap();
    assert!(body.is_null(0));
    let unchanged = rb.column_by_name("_unchanged").unwrap().as_list::<i32>();
    let first = unchanged.value(0);
    let names: Vec<&str> = first.as_string::<i32>().iter().flatten().collect();
    assert_eq!(names, ["body", "doc"]);
    // Every column sent: null, not an empty list.
    assert!(unchanged.is_null(1));
    assert_eq!(
        rb.schema()
            .field_with_name("_unchanged")
            .unwrap()
            .data_type(),
        &crate::schema::unchanged_type()
    );
}

#[test]
fn truncate_row_has_null_source_columns() {
    let mut batch = TableBatch::new(table(&[
        ("id", oid::INT8, -1),
        ("n", oid::NUMERIC, typmod(10, 2)),
        ("by", oid::BYTEA, -1),
        ("t", oid::TEXT, -1),
    ]));
    batch.push_truncate(&meta(Op::Truncate));
    assert_eq!(batch.len(), 1);
    let rb = batch.finish().unwrap();
    for i in 0..4 {
        assert!(rb.column(i).is_null(0), "column {i}");
    }
    let op = rb.column_by_name("_op").unwrap();
    assert_eq!(op.as_string::<i32>().value(0), "t");
    assert!(rb.column_by_name("_unchanged").unwrap().is_null(0));
}

#[test]
fn finish_twice_and_reuse() {
    let mut batch = TableBatch::new(table(&[("v", oid::TEXT, -1)]));
    batch.push(&meta(Op::Insert), &[text("a")]).unwrap();
    assert_eq!(batch.finish().unwrap().num_rows(), 1);
    assert!(batch.is_empty());
    assert_eq!(batch.approx_bytes(), 0);
    let empty = batch.finish().unwrap();
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(empty.schema(), batch.schema().arrow);
    batch.push(&meta(Op::Insert), &[text("b")]).unwrap();
    let again = batch.finish().unwrap();
    assert_eq!(again.num_rows(), 1);
    assert_eq!(again.column(0).as_string::<i32>().value(0), "b");
}

#[test]
fn approx_bytes_grows_with_data() {
    let mut batch = TableBatch::new(table(&[("id", oid::INT8, -1), ("v", oid::TEXT, -1)]));
    assert_eq!(batch.approx_bytes(), 0);
    batch
        .push(&meta(Op::Insert), &[text("1"), text("a")])
        .unwrap();
    let one = batch.approx_bytes();
    assert!(one >= 8 + 1 + META_ROW_BYTES, "{one}");
    let big = "x".repeat(10_000);
    batch
        .push(&meta(Op::Insert), &[text("2"), text(&big)])
        .unwrap();
    assert!(batch.approx_bytes() >= one + 10_000);
    batch.push_truncate(&meta(Op::Truncate));
    assert!(batch.approx_bytes() > one + 10_000 + META_ROW_BYTES);
}

#[test]
fn values_land_in_their_lake_columns_after_the_source_evolved() {
    let columns = |spec: &[(&str, u32)]| -> Vec<RelationColumn> {
        spec.iter()
            .map(|&(name, type_oid)| RelationColumn {
                is_key: false,
                name: name.to_owned(),
                type_oid,
                type_modifier: -1,
            })
            .collect()
    };
    let base = table(&[("id", oid::INT4, -1), ("old", oid::TEXT, -1)]);
    // `old` dropped, `added` added: the tuple is (id, added); the lake (id, old, added).
    let evolved = base
        .evolve(
            &columns(&[("id", oid::INT4), ("added", oid::INT8)]),
            crate::schema::TypeChangePolicy::Fail,
        )
        .unwrap()
        .schema;
    let mut batch = TableBatch::new(Arc::new(evolved));
    batch
        .push(&meta(Op::Insert), &[text("7"), TupleValue::UnchangedToast])
        .unwrap();
    batch
        .push(&meta(Op::Insert), &[text("8"), text("80")])
        .unwrap();
    let err = batch
        .push(&meta(Op::Insert), &[text("9"), text("x"), text("y")])
        .unwrap_err();
    assert!(matches!(
        err,
        BatchError::ColumnCount {
            expected: 2,
            got: 3,
            ..
        }
    ));
    let out = batch.finish().unwrap();
    let names: Vec<&str> = out
        .schema_ref()
        .fields()
        .iter()
        .take(3)
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["id", "old", "added"]);
    let id = out.column(0).as_primitive::<Int32Type>();
    assert_eq!((id.value(0), id.value(1)), (7, 8));
    assert_eq!(out.column(1).null_count(), 2, "a dropped column is null");
    let added = out.column(2).as_primitive::<Int64Type>();
    assert!(added.is_null(0));
    assert_eq!(added.value(1), 80);
    let unchanged = out.column_by_name("_unchanged").unwrap().as_list::<i32>();
    assert_eq!(
        unchanged.value(0).as_string::<i32>().value(0),
        "added",
        "an unchanged TOAST value is named by its lake column"
    );
    assert!(unchanged.is_null(1));
}

#[test]
fn wrong_column_count_is_an_error() {
    let mut batch = TableBatch::new(table(&[("a", oid::INT4, -1), ("b", oid::INT4, -1)]));
    let err = batch.push(&meta(Op::Insert), &[text("1")]).unwrap_err();
    assert!(matches!(
        err,
        BatchError::ColumnCount {
            expected: 2,
            got: 1,
            ..
        }
    ));
    assert!(err.to_string().contains("public.t"), "{err}");
    assert!(batch.is_empty());
}

#[test]
fn binary_values_are_rejected_by_column() {
    let mut batch = TableBatch::new(table(&[("a", oid::INT4, -1)]));
    let err = batch
        .push(
            &meta(Op::Insert),
            &[TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 1]))],
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, BatchError::BinaryFormat { .. }));
    assert!(
        message.contains("public.t") && message.contains("column a"),
        "{message}"
    );
    assert!(message.contains("int4"), "{message}");
}

#[test]
fn failed_push_adds_nothing_and_never_shows_the_value() {
    let mut batch = TableBatch::new(table(&[
        ("id", oid::INT8, -1),
        ("secret", oid::TEXT, -1),
        ("amount", oid::NUMERIC, typmod(12, 2)),
        ("blob", oid::BYTEA, -1),
    ]));
    batch
        .push(
            &meta(Op::Insert),
            &[text("1"), text("a"), text("1.00"), text(r"\x01")],
        )
        .unwrap();
    let before = batch.approx_bytes();
    let err = batch
        .push(
            &meta(Op::Insert),
            &[text("2"), text("hunter2"), text("31337.123"), text(r"\x02")],
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("public.t"), "{message}");
    assert!(message.contains("column amount"), "{message}");
    assert!(message.contains("numeric(12,2)"), "{message}");
    assert!(
        !message.contains("31337") && !message.contains("hunter2"),
        "{message}"
    );
    assert_eq!(batch.len(), 1);
    assert_eq!(batch.approx_bytes(), before);
    // A following row lands cleanly: no half-appended columns, no stale staged bytea.
    batch
        .push(
            &meta(Op::Insert),
            &[text("3"), text("c"), text("3.00"), TupleValue::Null],
        )
        .unwrap();
    let rb = batch.finish().unwrap();
    assert_eq!(rb.num_rows(), 2);
    assert_eq!(rb.column(0).as_primitive::<Int64Type>().value(1), 3);
    assert!(rb.column(3).is_null(1));
}

/// xorshift64: deterministic, no extra crates.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: u128) -> u128 {
        ((u128::from(self.next()) << 64) | u128::from(self.next())) % bound
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u128::try_from(i128::from(hi) - i128::from(lo) + 1).unwrap();
        i64::try_from(i128::from(lo) + i128::try_from(self.below(span)).unwrap()).unwrap()
    }
}

/// How Postgres prints a numeric(p,s) value: exactly `scale` fractional digits.
fn render_numeric(unscaled: i128, scale: usize) -> String {
    let digits = format!("{:0>width$}", unscaled.unsigned_abs(), width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

#[test]
fn property_numeric_text_round_trips() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let precision = 1 + rng.below(38) as u8;
        let scale = rng.below(u128::from(precision) + 1) as i8;
        // Bias towards short values too, so small magnitudes are exercised.
        let digits = 1 + rng.below(u128::from(precision)) as u32;
        let magnitude = rng.below(10_u128.pow(digits)) as i128;
        let unscaled = if rng.next().is_multiple_of(2) {
            magnitude
        } else {
            -magnitude
        };
        let rendered = render_numeric(unscaled, scale as usize);
        assert_eq!(
            parse_decimal(rendered.as_bytes(), precision, scale),
            Ok(unscaled),
            "numeric({precision},{scale}) {rendered}"
        );
    }
}

/// How Postgres prints a timestamp (ISO DateStyle): trailing fractional zeros trimmed,
/// offset as short as exact, ` BC` last.
fn render_timestamp(local: NaiveDateTime, offset_seconds: Option<i64>) -> String {
    let (year, bc) = if local.year() <= 0 {
        (1 - local.year(), " BC")
    } else {
        (local.year(), "")
    };
    let mut out = format!(
        "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        local.month(),
        local.day(),
        local.hour(),
        local.minute(),
        local.second()
    );
    let micros = local.nanosecond() / 1000;
    if micros != 0 {
        let fraction = format!("{micros:06}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    if let Some(offset) = offset_seconds {
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.abs();
        out.push_str(&format!("{sign}{:02}", abs / 3600));
        if abs % 3600 != 0 {
            out.push_str(&format!(":{:02}", abs % 3600 / 60));
            if abs % 60 != 0 {
                out.push_str(&format!(":{:02}", abs % 60));
            }
        }
    }
    out.push_str(bc);
    out
}

#[test]
fn property_timestamp_text_round_trips() {
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    // Postgres's first instant (4714-11-24 BC) to near chrono's last year.
    let lo = -210_866_803_200_000_000;
    let hi = 8_000_000_000_000_000_000;
    for i in 0..20_000 {
        let micros = match i {
            0 => lo,
            1 => 0,
            _ if i % 3 == 0 => rng.between(-100_000_000_000_000_000, 100_000_000_000_000_000),
            _ => rng.between(lo, hi),
        };
        let utc = DateTime::from_timestamp_micros(micros).unwrap().naive_utc();
        let plain = render_timestamp(utc, None);
        assert_eq!(
            parse_timestamp(plain.as_bytes(), false),
            Ok(micros),
            "{plain}"
        );
        let offset = match i % 4 {
            0 => 0,
            1 => 19_800,  // +05:30
            2 => -28_800, // -08:00
            _ => rng.between(-15 * 3600 - 3599, 15 * 3600 + 3599),
        };
        let local = DateTime::from_timestamp_micros(micros + offset * 1_000_000)
            .unwrap()
            .naive_utc();
        let tz = render_timestamp(local, Some(offset));
        assert_eq!(parse_timestamp(tz.as_bytes(), true), Ok(micros), "{tz}");
    }
}

#[test]
fn property_date_text_round_trips() {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    for _ in 0..20_000 {
        // chrono's range (about ±262143 years) covers every Postgres timestamp date.
        let days = rng.between(-2_440_588, 90_000_000);
        let date = epoch + chrono::TimeDelta::days(days);
        let (year, bc) = if date.year() <= 0 {
            (1 - date.year(), " BC")
        } else {
            (date.year(), "")
        };
        let text = format!("{year:04}-{:02}-{:02}{bc}", date.month(), date.day());
        assert_eq!(
            parse_date(text.as_bytes()).map(i64::from),
            Ok(days),
            "{text}"
        );
    }
}

#[test]
fn money_is_exact_cents() {
    use super::text::parse_money;
    assert_eq!(parse_money(b"$1,234.56"), Ok(123_456));
    assert_eq!(parse_money(b"-$0.01"), Ok(-1));
    assert_eq!(parse_money(b"$0.00"), Ok(0));
    assert_eq!(
        parse_money(b"$92,233,720,368,547,758.07"),
        Ok(i128::from(i64::MAX))
    );
    assert_eq!(
        parse_money(b"-$92,233,720,368,547,758.08"),
        Ok(i128::from(i64::MIN))
    );
    for bad in [
        &b""[..],
        b"1.00",
        b"$1.0",
        b"$1",
        b"$,1.00",
        b"EUR1.00",
        b"$1.000",
        b"$-1.00",
    ] {
        assert!(
            parse_money(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let array = convert(oid::MONEY, -1, "-$1,234.50").unwrap();
    assert_eq!(array.as_primitive::<Decimal128Type>().value(0), -123_450);
    assert_eq!(array.data_type(), &DataType::Decimal128(19, 2));
}

#[test]
fn time_and_timetz() {
    use super::text::{parse_time, parse_timetz};
    assert_eq!(parse_time(b"00:00:00"), Ok(0));
    assert_eq!(parse_time(b"13:14:15.5"), Ok(47_655_500_000));
    assert_eq!(parse_time(b"23:59:59.999999"), Ok(86_399_999_999));
    assert_eq!(parse_time(b"24:00:00"), Ok(86_400_000_000));
    for bad in [
        &b"24:00:00.000001"[..],
        b"24:00:01",
        b"12:60:00",
        b"1:00:00",
        b"12:00:00+00",
    ] {
        assert!(
            parse_time(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        parse_timetz(b"13:14:15.5+05:30"),
        Ok((47_655_500_000, 19_800))
    );
    assert_eq!(parse_timetz(b"00:00:00-15:59:59"), Ok((0, -57_599)));
    assert_eq!(parse_timetz(b"24:00:00+00"), Ok((86_400_000_000, 0)));
    assert!(parse_timetz(b"12:00:00").is_err());
    let array = convert(oid::TIMETZ, -1, "01:02:03-08").unwrap();
    let timetz = array.as_struct();
    assert_eq!(
        timetz.column(0).as_primitive::<Int64Type>().value(0),
        3_723_000_000
    );
    assert_eq!(
        timetz.column(1).as_primitive::<Int32Type>().value(0),
        -28_800
    );
}

#[test]
fn intervals_keep_their_three_fields() {
    use super::text::parse_interval;
    let cases: [(&str, (i32, i32, i64)); 9] = [
        ("00:00:00", (0, 0, 0)),
        ("1 mon", (1, 0, 0)),
        ("1 year 1 day 00:00:01", (12, 1, 1_000_000)),
        (
            "-1 years -2 mons +3 days -04:05:06.789",
            (-14, 3, -14_706_789_000),
        ),
        ("1 day -00:00:01", (0, 1, -1_000_000)),
        ("-00:00:00.000001", (0, 0, -1)),
        ("2562047788:00:54.775807", (0, 0, i64::MAX)),
        ("-2562047788:00:54.775808", (0, 0, i64::MIN)),
        (
            "-178956970 years -8 mons -2147483648 days",
            (i32::MIN, i32::MIN, 0),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(parse_interval(text.as_bytes()), Ok(want), "{text}");
    }
    for bad in [
        "",
        "1",
        "1 week",
        "1 days 2 days 00:00:00 00:00:00",
        "00:00:00 1 day",
        "2562047788:00:54.775808",
        "178956971 years",
        "1:2:3",
    ] {
        assert!(parse_interval(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

#[test]
fn arrays_keep_nulls_quotes_and_flatten_dimensions() {
    use super::text::parse_array;
    let mut out = Vec::new();
    let mut spans = Vec::new();
    let elements =
        |out: &Vec<u8>, spans: &Vec<Option<std::ops::Range<usize>>>| -> Vec<Option<String>> {
            spans
                .iter()
                .map(|s| {
                    s.clone()
                        .map(|r| String::from_utf8(out[r].to_vec()).unwrap())
                })
                .collect()
        };
    let shape = parse_array(
        r#"{"",NULL,"NULL","a\"b","c\\d",x y,ü}"#.as_bytes(),
        &mut out,
        &mut spans,
    )
    .unwrap();
    assert!(shape.is_plain());
    assert_eq!(
        elements(&out, &spans),
        [
            Some(String::new()),
            None,
            Some("NULL".into()),
            Some("a\"b".into()),
            Some("c\\d".into()),
            Some("x y".into()),
            Some("ü".into())
        ]
    );
    let shape = parse_array(b"{}", &mut out, &mut spans).unwrap();
    assert!(shape.is_plain() && spans.is_empty());
    let shape = parse_array(b"{{1,2},{3,NULL}}", &mut out, &mut spans).unwrap();
    assert_eq!(shape.dimensions, 2);
    assert!(!shape.is_plain());
    assert_eq!(elements(&out, &spans).len(), 4);
    let shape = parse_array(b"[0:1]={7,8}", &mut out, &mut spans).unwrap();
    assert!(shape.custom_bounds && !shape.is_plain());
    assert!(
        parse_array(b"[1:2]={7,8}", &mut out, &mut spans)
            .unwrap()
            .is_plain()
    );
    for bad in [
        &b""[..],
        b"{",
        b"{1,}",
        b"{,1}",
        b"{1}}",
        b"{1}x",
        b"1,2",
        br#"{"a}"#,
        b"{a\"b}",
        b"[0:x]={1}",
    ] {
        assert!(
            parse_array(bad, &mut out, &mut spans).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn array_columns_hold_typed_elements_and_fail_atomically() {
    // int4[]
    let array = convert(1007, -1, "{1,NULL,-3}").unwrap();
    let list = array.as_list::<i32>();
    let values = list.value(0);
    let values = values.as_primitive::<Int32Type>();
    assert_eq!(values.len(), 3);
    assert_eq!(values.value(0), 1);
    assert!(values.is_null(1));
    assert_eq!(values.value(2), -3);
    // One bad element rejects the whole value and leaves nothing behind.
    let schema = table(&[("a", 1007, -1), ("b", 1007, -1)]);
    let mut batch = TableBatch::new(schema);
    batch
        .push(&meta(Op::Insert), &[text("{1}"), text("{2,3}")])
        .unwrap();
    let err = batch
        .push(&meta(Op::Insert), &[text("{4,5}"), text("{6,x}")])
        .unwrap_err();
    assert!(matches!(err, BatchError::Value { .. }), "{err}");
    batch
        .push(&meta(Op::Insert), &[TupleValue::Null, text("{}")])
        .unwrap();
    let rb = batch.finish().unwrap();
    let a = rb.column(0).as_list::<i32>();
    let b = rb.column(1).as_list::<i32>();
    assert_eq!(a.len(), 2);
    assert_eq!(
        a.values().len(),
        1,
        "the failed row's elements are not kept"
    );
    assert!(a.is_null(1));
    assert_eq!(b.value(1).len(), 0);
    assert!(b.is_valid(1));
    // interval[] holds structs; numeric(6,2)[] decimals.
    let array = convert(1187, -1, r#"{"1 day",NULL}"#).unwrap();
    assert_eq!(array.as_list::<i32>().value(0).len(), 2);
    let array = convert(1231, typmod(6, 2), "{1.50,-9999.99}").unwrap();
    let values = array.as_list::<i32>().value(0);
    assert_eq!(values.as_primitive::<Decimal128Type>().value(1), -999_999);
}

#[test]
fn hex_binary_and_hstore_text() {
    use super::text::{decode_hex, parse_hstore};
    let mut out = Vec::new();
    decode_hex(b"0101000020E6100000", &mut out).unwrap();
    assert_eq!(out, [1, 1, 0, 0, 0x20, 0xe6, 0x10, 0, 0]);
    assert!(decode_hex(b"0", &mut out).is_err());
    assert!(decode_hex(b"zz", &mut out).is_err());
    let mut pairs = Vec::new();
    parse_hstore(
        br#""a"=>"1", "b c"=>NULL, ""=>"x\\y\"""#,
        &mut out,
        &mut pairs,
    )
    .unwrap();
    let text = |r: &std::ops::Range<usize>| String::from_utf8(out[r.clone()].to_vec()).unwrap();
    let got: Vec<(String, Option<String>)> = pairs
        .iter()
        .map(|(k, v)| (text(k), v.as_ref().map(text)))
        .collect();
    assert_eq!(
        got,
        [
            ("a".into(), Some("1".into())),
            ("b c".into(), None),
            (String::new(), Some("x\\y\"".into()))
        ]
    );
    parse_hstore(b"", &mut out, &mut pairs).unwrap();
    assert!(pairs.is_empty());
    for bad in [
        &b"a=>1"[..],
        br#""a"=>"#,
        br#""a"=>"1","#,
        br#""a"=>"1" "b"=>"2""#,
    ] {
        assert!(parse_hstore(bad, &mut out, &mut pairs).is_err());
    }
}

/// How Postgres prints an interval with IntervalStyle `postgres` (EncodeInterval):
/// years and months split from `months`, each non-zero field with its own sign (`+` after
/// a negative field), then the time, signed as a whole, whenever it is non-zero or
/// nothing else was printed.
fn render_interval(months: i32, days: i32, micros: i64) -> String {
    let mut out = String::new();
    let mut is_zero = true;
    let mut is_before = false;
    for (value, unit) in [
        (i64::from(months / 12), "year"),
        (i64::from(months % 12), "mon"),
        (i64::from(days), "day"),
    ] {
        if value == 0 {
            continue;
        }
        let space = if is_zero { "" } else { " " };
        let plus = if is_before && value > 0 { "+" } else { "" };
        let plural = if value == 1 { "" } else { "s" };
        out.push_str(&format!("{space}{plus}{value} {unit}{plural}"));
        is_before = value < 0;
        is_zero = false;
    }
    if is_zero || micros != 0 {
        let abs = micros.unsigned_abs();
        let sign = if micros < 0 {
            "-"
        } else if is_before {
            "+"
        } else {
            ""
        };
        if !is_zero {
            out.push(' ');
        }
        let hours = abs / 3_600_000_000;
        let minutes = abs / 60_000_000 % 60;
        let seconds = abs / 1_000_000 % 60;
        let fraction = abs % 1_000_000;
        out.push_str(&format!("{sign}{hours:02}:{minutes:02}:{seconds:02}"));
        if fraction != 0 {
            out.push('.');
            out.push_str(format!("{fraction:06}").trim_end_matches('0'));
        }
    }
    out
}

#[test]
fn interval_rendering_matches_postgres_samples() {
    // Outputs of a PostgreSQL 15 server (IntervalStyle postgres), pinning the reference.
    for (text, fields) in [
        (
            "-1 years -2 mons +3 days -04:05:06.789",
            (-14, 3, -14_706_789_000),
        ),
        ("1 day -00:00:01", (0, 1, -1_000_000)),
        ("1 year 1 day 00:00:01", (12, 1, 1_000_000)),
        ("00:00:00", (0, 0, 0)),
        ("-00:00:00.000001", (0, 0, -1)),
        ("-178956970 years -8 mons", (i32::MIN, 0, 0)),
        ("2562047788:00:54.775807", (0, 0, i64::MAX)),
    ] {
        assert_eq!(render_interval(fields.0, fields.1, fields.2), text);
    }
}

mod properties {
    //! Property tests of the text → Arrow conversions against independent references:
    //! i128 arithmetic for numerics, chrono for timestamps, EncodeInterval's rules for
    //! intervals. Case counts are modest so the suite stays fast.

    use chrono::DateTime;
    use proptest::prelude::*;

    use super::super::text::{parse_decimal, parse_interval, parse_timestamp};
    use super::{render_interval, render_numeric, render_timestamp};

    /// Postgres's first timestamp (4714-11-24 00:00:00 BC) in µs since 1970.
    const FIRST_TIMESTAMP: i64 = -210_866_803_200_000_000;
    /// Near the end of chrono's range (year 262142), far past Postgres's own.
    const LAST_REFERENCE_TIMESTAMP: i64 = 8_210_266_876_799_999_999;

    fn numeric() -> impl Strategy<Value = (u8, i8, i128)> {
        (1u8..=38)
            .prop_flat_map(|precision| (Just(precision), 0..=precision, 1..=u32::from(precision)))
            .prop_flat_map(|(precision, scale, digits)| {
                let bound = 10_i128.pow(digits) - 1;
                (Just(precision), Just(scale as i8), -bound..=bound)
            })
    }

    /// Text made of the characters the structured parsers care about, plus any byte.
    fn structured_text() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => prop::sample::select(b"{}[](),:=>\"\\ NUL-+.0123456789$e".to_vec()),
            1 => any::<u8>(),
        ];
        prop::collection::vec(byte, 0..48)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsers_never_panic(text in structured_text()) {
            use super::super::text::{
                decode_hex, parse_array, parse_hstore, parse_money, parse_range, parse_time,
                parse_timetz,
            };
            let mut out = Vec::new();
            let mut spans = Vec::new();
            let mut pairs = Vec::new();
            let mut bounds = [None, None];
            let _ = parse_array(&text, &mut out, &mut spans);
            let _ = parse_hstore(&text, &mut out, &mut pairs);
            let _ = parse_range(&text, &mut out, &mut bounds);
            let _ = parse_interval(&text);
            let _ = parse_money(&text);
            let _ = parse_time(&text);
            let _ = parse_timetz(&text);
            let _ = decode_hex(&text, &mut out);
            let _ = parse_decimal(&text, 38, 10);
            let _ = parse_timestamp(&text, true);
        }

        #[test]
        fn numeric_text_parses_to_its_unscaled_value(
            (precision, scale, unscaled) in numeric(),
            extra_zeros in 0usize..3,
        ) {
            let mut text = render_numeric(unscaled, scale as usize);
            // An unconstrained numeric keeps its display scale: extra zeros round nothing.
            if extra_zeros > 0 {
                if scale == 0 {
                    text.push('.');
                }
                text.push_str(&"0".repeat(extra_zeros));
            }
            prop_assert_eq!(parse_decimal(text.as_bytes(), precision, scale), Ok(unscaled));
        }

        #[test]
        fn numeric_text_that_needs_rounding_is_refused(
            (precision, scale, unscaled) in numeric(),
            extra_digit in 1u8..=9,
        ) {
            let mut text = render_numeric(unscaled, scale as usize);
            if scale == 0 {
                text.push('.');
            }
            text.push(char::from(b'0' + extra_digit));
            prop_assert!(parse_decimal(text.as_bytes(), precision, scale).is_err());
        }

        #[test]
        fn timestamp_text_parses_to_its_micros(
            micros in FIRST_TIMESTAMP..LAST_REFERENCE_TIMESTAMP,
            offset in -(15 * 3600 + 59 * 60 + 59)..=(15 * 3600 + 59 * 60 + 59_i64),
        ) {
            let utc = DateTime::from_timestamp_micros(micros).unwrap().naive_utc();
            let plain = render_timestamp(utc, None);
            prop_assert_eq!(parse_timestamp(plain.as_bytes(), false), Ok(micros), "{}", plain);
            let local = DateTime::from_timestamp_micros(micros + offset * 1_000_000)
                .unwrap()
                .naive_utc();
            let with_offset = render_timestamp(local, Some(offset));
            prop_assert_eq!(
                parse_timestamp(with_offset.as_bytes(), true),
                Ok(micros),
                "{}",
                with_offset
            );
        }

        #[test]
        fn interval_text_parses_to_its_fields(
            months in any::<i32>(),
            days in any::<i32>(),
            micros in any::<i64>(),
            zero_mask in 0u8..8,
        ) {
            // Zero fields change the rendering: exercise every combination.
            let months = if zero_mask & 1 == 0 { months } else { 0 };
            let days = if zero_mask & 2 == 0 { days } else { 0 };
            let micros = if zero_mask & 4 == 0 { micros } else { 0 };
            let text = render_interval(months, days, micros);
            prop_assert_eq!(parse_interval(text.as_bytes()), Ok((months, days, micros)), "{}", text);
        }
    }
}

#[test]
fn a_configured_decimal_overflow_names_the_setting_and_the_fix() {
    use crate::schema::{Conversion, TypeCatalog};
    use std::collections::HashMap;
    let forced = Conversion::ConfiguredDecimal {
        precision: 6,
        scale: 2,
    };
    let types = TypeCatalog::new(HashMap::from([("public.t.amount".to_owned(), forced)]));
    let columns = [RelationColumn {
        is_key: false,
        name: "amount".into(),
        type_oid: oid::NUMERIC,
        type_modifier: -1,
    }];
    let schema = Arc::new(TableSchema::with_types("public", "t", &columns, &types).unwrap());
    assert_eq!(schema.columns[0].data_type, DataType::Decimal128(6, 2));
    let mut batch = TableBatch::new(schema);
    batch.push(&meta(Op::Insert), &[text("1234.5")]).unwrap();
    for (value, problem) in [
        ("12345.5", "more integer digits"),
        ("1.255", "more fractional digits"),
        ("NaN", "NaN or infinite"),
    ] {
        let message = batch
            .push(&meta(Op::Insert), &[text(value)])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("public.t column amount")
                && message.contains(problem)
                && message.contains("column_types.\"public.t.amount\" = decimal(6,2)")
                && message.contains("fix:")
                && (value == "NaN" || !message.contains(value)),
            "{message}"
        );
    }
    let rb = batch.finish().unwrap();
    assert_eq!(rb.num_rows(), 1);
    assert_eq!(
        rb.column(0).as_primitive::<Decimal128Type>().value(0),
        123_450
    );
}

#[test]
fn ranges_keep_bounds_inclusivity_and_emptiness() {
    use super::text::{RangeFlags, parse_range};
    let mut out = Vec::new();
    let mut bounds = [None, None];
    let mut parse = |text: &str| {
        parse_range(text.as_bytes(), &mut out, &mut bounds).map(|flags| {
            let [lower, upper] = bounds
                .clone()
                .map(|b| b.map(|r| String::from_utf8(out[r].to_vec()).unwrap()));
            (flags, lower, upper)
        })
    };
    let flags = |lower_inc, upper_inc, empty| RangeFlags {
        lower_inc,
        upper_inc,
        empty,
    };
    assert_eq!(parse("empty"), Ok((flags(false, false, true), None, None)));
    assert_eq!(
        parse("[1,10)"),
        Ok((
            flags(true, false, false),
            Some("1".into()),
            Some("10".into())
        ))
    );
    assert_eq!(
        parse("(,6)"),
        Ok((flags(false, false, false), None, Some("6".into())))
    );
    assert_eq!(parse("(,)"), Ok((flags(false, false, false), None, None)));
    assert_eq!(
        parse(r#"["2020-01-01 00:00:00+00",infinity]"#),
        Ok((
            flags(true, true, false),
            Some("2020-01-01 00:00:00+00".into()),
            Some("infinity".into())
        ))
    );
    assert_eq!(
        parse(r#"["a""b\\c",d\,e)"#),
        Ok((
            flags(true, false, false),
            Some("a\"b\\c".into()),
            Some("d,e".into())
        ))
    );
    for bad in ["", "[", "[1,2", "1,2]", "{1,2}", "[1]", r#"["1,2)"#] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    // int4range → struct; a bad bound rejects the value.
    let array = convert(oid::INT4RANGE, -1, "[1,10)").unwrap();
    let range = array.as_struct();
    assert_eq!(range.column(0).as_primitive::<Int32Type>().value(0), 1);
    assert_eq!(range.column(1).as_primitive::<Int32Type>().value(0), 10);
    assert!(range.column(2).as_boolean().value(0));
    assert!(!range.column(3).as_boolean().value(0));
    assert!(!range.column(4).as_boolean().value(0));
    assert!(convert(oid::INT4RANGE, -1, "[1,x)").is_err());
    let array = convert(oid::DATERANGE, -1, "empty").unwrap();
    let range = array.as_struct();
    assert!(range.column(0).is_null(0) && range.column(4).as_boolean().value(0));
}
