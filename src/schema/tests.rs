//! Unit tests of the type mapping and the lake row layout.

use super::fixtures::{col, typmod};
use super::*;

#[test]
fn maps_scalar_types() {
    let cases = [
        (oid::BOOL, DataType::Boolean),
        (oid::INT2, DataType::Int16),
        (oid::INT4, DataType::Int32),
        (oid::INT8, DataType::Int64),
        (oid::OID, DataType::Int64),
        (oid::FLOAT4, DataType::Float32),
        (oid::FLOAT8, DataType::Float64),
        (oid::BYTEA, DataType::Binary),
        (oid::DATE, DataType::Date32),
        (
            oid::TIMESTAMP,
            DataType::Timestamp(TimeUnit::Microsecond, None),
        ),
        (
            oid::TIMESTAMPTZ,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ),
    ];
    for (type_oid, want) in cases {
        assert_eq!(arrow_type(type_oid, -1), want, "oid {type_oid}");
    }
}

#[test]
fn maps_text_like_and_unknown_types_to_utf8() {
    for type_oid in [
        oid::TEXT,
        oid::VARCHAR,
        oid::BPCHAR,
        oid::NAME,
        oid::UUID,
        oid::JSON,
        oid::JSONB,
        oid::XML,
        oid::INET,
        oid::CIDR,
        oid::MACADDR,
        oid::BIT,
        oid::TSVECTOR,
        oid::PG_LSN,
        oid::CHAR,
        987_654,
    ] {
        assert_eq!(arrow_type(type_oid, -1), DataType::Utf8, "oid {type_oid}");
    }
    // varchar(10) and char(3) carry a typmod that must not matter.
    assert_eq!(arrow_type(oid::VARCHAR, 14), DataType::Utf8);
    assert_eq!(arrow_type(oid::BPCHAR, 7), DataType::Utf8);
}

#[test]
fn maps_time_interval_money_and_arrays() {
    assert_eq!(arrow_type(oid::TIME, -1), DataType::Int64);
    assert_eq!(arrow_type(oid::XID, -1), DataType::Int64);
    assert_eq!(arrow_type(oid::XID8, -1), DataType::Decimal128(20, 0));
    assert_eq!(arrow_type(oid::MONEY, -1), DataType::Decimal128(19, 2));
    assert_eq!(
        arrow_type(oid::INTERVAL, -1),
        DataType::Struct(interval_fields())
    );
    assert_eq!(
        arrow_type(oid::TIMETZ, -1),
        DataType::Struct(timetz_fields())
    );
    // int4[] and numeric(10,2)[] (the typmod is the elements').
    assert_eq!(
        arrow_type(1007, -1),
        DataType::List(Arc::new(Field::new("element", DataType::Int32, true)))
    );
    assert_eq!(
        Conversion::for_type(1231, typmod(10, 2)),
        Conversion::Array(Element::Decimal {
            precision: 10,
            scale: 2
        })
    );
    assert_eq!(
        Conversion::for_type(oid::TSTZRANGE, -1).lake_type_name(),
        "struct<lower:timestamp,upper:timestamp,lower_inc:boolean,upper_inc:boolean,empty:boolean>"
    );
    // Arrays of ranges keep each range's text.
    assert_eq!(
        Conversion::for_type(3905, -1),
        Conversion::Array(Element::Text)
    );
    // box[] uses ';' between elements: kept as text.
    assert_eq!(arrow_type(1020, -1), DataType::Utf8);
    assert_eq!(pg_type_name(1231, typmod(10, 2)), "numeric(10,2)[]");
    assert_eq!(
        Conversion::for_type(1187, -1).lake_type_name(),
        "array<struct<months:integer,days:integer,microseconds:long>>"
    );
}

#[test]
fn arrow_types_map_back_to_their_conversions() {
    let conversions = [
        Conversion::Bool,
        Conversion::Int16,
        Conversion::Int32,
        Conversion::Int64,
        Conversion::Float32,
        Conversion::Float64,
        Conversion::Decimal {
            precision: 12,
            scale: 2,
        },
        Conversion::Text,
        Conversion::Bytea,
        Conversion::Date,
        Conversion::Timestamp,
        Conversion::TimestampTz,
        Conversion::TimeTz,
        Conversion::Interval,
        Conversion::Hstore,
        Conversion::Array(Element::Int32),
        Conversion::Array(Element::Interval),
        Conversion::Array(Element::Text),
        Conversion::Range(Element::Int32),
        Conversion::Range(Element::Date),
        Conversion::Range(Element::TimestampTz),
        Conversion::Range(Element::Text),
    ];
    for conversion in conversions {
        assert_eq!(
            Conversion::for_arrow(&conversion.data_type()),
            Some(conversion),
            "{conversion:?}"
        );
    }
    // Lake-only columns need a conversion of the same Arrow type, not the same one.
    assert_eq!(
        Conversion::for_arrow(&Conversion::Time.data_type()),
        Some(Conversion::Int64)
    );
    assert_eq!(
        Conversion::for_arrow(&DataType::List(Arc::new(Field::new(
            "item",
            DataType::Int32,
            true
        )))),
        None
    );
}

#[test]
fn maps_numeric_by_typmod() {
    assert_eq!(
        arrow_type(oid::NUMERIC, typmod(12, 2)),
        DataType::Decimal128(12, 2)
    );
    assert_eq!(
        arrow_type(oid::NUMERIC, typmod(38, 0)),
        DataType::Decimal128(38, 0)
    );
    assert_eq!(
        arrow_type(oid::NUMERIC, typmod(38, 38)),
        DataType::Decimal128(38, 38)
    );
    assert_eq!(
        arrow_type(oid::NUMERIC, typmod(1, 0)),
        DataType::Decimal128(1, 0)
    );
    // Unconstrained, too wide, negative scale (PG 15), scale above precision.
    assert_eq!(arrow_type(oid::NUMERIC, -1), DataType::Utf8);
    assert_eq!(arrow_type(oid::NUMERIC, typmod(39, 0)), DataType::Utf8);
    assert_eq!(arrow_type(oid::NUMERIC, typmod(1000, 10)), DataType::Utf8);
    assert_eq!(arrow_type(oid::NUMERIC, typmod(10, -3)), DataType::Utf8);
    assert_eq!(arrow_type(oid::NUMERIC, typmod(3, 5)), DataType::Utf8);
}

#[test]
fn decodes_numeric_typmod() {
    assert_eq!(numeric_typmod(-1), None);
    assert_eq!(numeric_typmod(typmod(12, 2)), Some((12, 2)));
    assert_eq!(numeric_typmod(typmod(10, -3)), Some((10, -3)));
    assert_eq!(numeric_typmod(typmod(5, -1000)), Some((5, -1000)));
    assert_eq!(numeric_typmod(typmod(1000, 1000)), Some((1000, 1000)));
}

#[test]
fn builds_source_then_meta_columns() {
    let mut id = col("id", oid::INT8, -1);
    id.is_key = true;
    let schema = TableSchema::new(
        "public",
        "orders",
        &[id, col("amount", oid::NUMERIC, typmod(12, 2))],
    )
    .unwrap();
    let names: Vec<&str> = schema
        .arrow
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        [
            "id",
            "amount",
            "_op",
            "_lsn",
            "_seq",
            "_commit_ts",
            "_xid",
            "_unchanged",
            "date"
        ]
    );
    assert!(schema.columns[0].is_key);
    assert_eq!(
        schema.columns[1].conversion,
        Conversion::Decimal {
            precision: 12,
            scale: 2
        }
    );
    let nullable: Vec<bool> = schema
        .arrow
        .fields()
        .iter()
        .map(|f| f.is_nullable())
        .collect();
    assert_eq!(
        nullable,
        [true, true, false, false, false, false, true, true, false]
    );
    assert!(
        schema
            .arrow
            .fields()
            .iter()
            .all(|f| f.metadata().is_empty())
    );
    assert!(schema.arrow.metadata().is_empty());
    assert_eq!(schema.qualified_name(), "public.orders");
    assert_eq!(schema.columns[1].pg_type(), "numeric(12,2)");
}

#[test]
fn rejects_reserved_column_names() {
    for reserved in ["_op", "_lsn", "date", "Date", "_UNCHANGED"] {
        let err =
            TableSchema::new("public", "t", &[col(reserved, oid::INT4, -1)]).expect_err(reserved);
        let message = err.to_string();
        assert!(message.contains("public.t"), "{message}");
        assert!(message.contains(reserved), "{message}");
    }
}

#[test]
fn rejects_columns_equal_ignoring_case() {
    let err = TableSchema::new(
        "s",
        "t",
        &[col("Name", oid::TEXT, -1), col("name", oid::TEXT, -1)],
    )
    .unwrap_err();
    assert_eq!(
        err,
        SchemaError::DuplicateColumn {
            table: "s.t".into(),
            first: "Name".into(),
            second: "name".into()
        }
    );
}

#[test]
fn compares_layouts() {
    let a = TableSchema::new("s", "t", &[col("a", oid::INT4, -1)]).unwrap();
    let same = TableSchema::new("s", "t", &[col("a", oid::INT4, -1)]).unwrap();
    let retyped = TableSchema::new("s", "t", &[col("a", oid::INT8, -1)]).unwrap();
    let renamed = TableSchema::new("s", "t", &[col("b", oid::INT4, -1)]).unwrap();
    // varchar(10) → varchar(20) changes the typmod but not the lake layout.
    let v10 = TableSchema::new("s", "t", &[col("a", oid::VARCHAR, 14)]).unwrap();
    let v20 = TableSchema::new("s", "t", &[col("a", oid::VARCHAR, 24)]).unwrap();
    assert!(a.same_layout(&same));
    assert!(!a.same_layout(&retyped));
    assert!(!a.same_layout(&renamed));
    assert!(v10.same_layout(&v20));
}

#[test]
fn names_types_for_messages() {
    assert_eq!(pg_type_name(oid::TIMESTAMPTZ, -1), "timestamptz");
    assert_eq!(pg_type_name(oid::NUMERIC, -1), "numeric");
    assert_eq!(pg_type_name(424_242, -1), "type oid 424242");
}
