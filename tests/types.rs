//! The type matrix: every Postgres type family pg2lake maps, written once by the initial
//! snapshot (rows present before `pg2lake run` creates its slot) and once by streaming
//! (the same values inserted after it streams, and again after a restart), read back with the independent Python
//! reader and compared value by value with Postgres's own rendering of each value in the
//! documented lake form (README, "Types").
//!
//! Each family is one wide table `id, <one column per type>`: special values first (NULL,
//! extremes, NaN, ±Infinity, infinity dates, BC dates, empty arrays, arrays with NULLs,
//! multi-dimensional arrays, unicode …), then generated values, with a NULL every 17th
//! row. A type counts as round-tripping when every one of its values, in both the snapshot
//! and the streamed copy, equals Postgres's rendering.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::{Map, Value};
use support::lake::{Row, wait_caught_up};
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgServer, read_delta};

const CATCH_UP: Duration = Duration::from_secs(180);
const STOP: Duration = Duration::from_secs(30);
/// Generated rows per table, on top of the special values.
const GENERATED_ROWS: i32 = 300;
/// Streamed rows repeat the snapshot rows with this added to their id.
const STREAM_ID_OFFSET: i32 = 100_000;

/// How a value is compared: the lake value and Postgres's rendering are both brought to
/// one canonical JSON value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// The text form (strings, decimals as text, unconstrained numeric, uuid, json …);
    /// rendered by Postgres's output function.
    Plain,
    /// money: its exact amount as a decimal (`-1234.50`).
    Money,
    /// Boolean: `t` / `f` as Postgres prints them.
    Bool,
    /// An integer.
    Int,
    /// real: compared bit for bit (NaN equal to NaN).
    Float32,
    /// double precision, likewise.
    Float64,
    /// bytea (and EWKB): lowercase hex.
    Bytes,
    /// date: days since 1970-01-01, infinities as i32::MAX / i32::MIN.
    Date,
    /// timestamp / timestamptz: µs since 1970-01-01 (UTC), infinities as i64::MAX / MIN.
    Timestamp,
    /// time: µs since midnight.
    Time,
    /// timetz: "µs since midnight,offset seconds east of UTC".
    TimeTz,
    /// interval: "months,days,microseconds".
    Interval,
    /// hstore: a JSON object.
    Hstore,
    /// A text form that is hex (EWKB), read back as binary: lowercase hex.
    HexText,
    /// The text form of the value cast to this type (a configured decimal's scale).
    Cast(&'static str),
    /// An array of composites, rendered through `text[]` (unnest would expand the rows).
    CompositeArray,
    /// A range: [empty, lower_inc, upper_inc, lower, upper], bounds in their kind's form.
    Range(&'static Kind),
    /// An array: the list of its elements in row-major order, each in its kind's form.
    Array(&'static Kind),
}

/// One type of the matrix: a column of a family table.
struct Case {
    /// Column name.
    column: &'static str,
    /// The column's SQL type.
    sql_type: &'static str,
    /// SQL expressions of special values, one per special row.
    specials: &'static [&'static str],
    /// A SQL expression over the integer `i` (1..=GENERATED_ROWS) for generated rows.
    generated: &'static str,
    kind: Kind,
}

struct Family {
    table: &'static str,
    /// SQL run before the table is created (extensions, types).
    setup: &'static str,
    cases: Vec<Case>,
}

const fn case(
    column: &'static str,
    sql_type: &'static str,
    specials: &'static [&'static str],
    generated: &'static str,
    kind: Kind,
) -> Case {
    Case {
        column,
        sql_type,
        specials,
        generated,
        kind,
    }
}

fn families() -> Vec<Family> {
    use Kind::*;
    vec![
        Family {
            table: "numbers",
            setup: "",
            cases: vec![
                case("c_bool", "boolean", &["true", "false"], "i % 2 = 0", Bool),
                case(
                    "c_int2",
                    "smallint",
                    &["32767", "-32768", "0"],
                    "(i * 211 - 32000)::smallint",
                    Int,
                ),
                case(
                    "c_int4",
                    "integer",
                    &["2147483647", "-2147483648", "0"],
                    "i * 7919 - 1000000",
                    Int,
                ),
                case(
                    "c_int8",
                    "bigint",
                    &["9223372036854775807", "-9223372036854775808", "0"],
                    "i::bigint * 30000000000000000 - 4000000000000000000",
                    Int,
                ),
                case(
                    "c_oid",
                    "oid",
                    &["4294967295", "0"],
                    "(i::bigint * 14000000)::oid",
                    Int,
                ),
                case(
                    "c_xid",
                    "xid",
                    &["'4294967295'", "'0'"],
                    "(i::bigint * 14000000)::text::xid",
                    Int,
                ),
                case(
                    "c_float4",
                    "real",
                    &[
                        "'NaN'",
                        "'Infinity'",
                        "'-Infinity'",
                        "'3.4028235e+38'",
                        "'1e-45'",
                        "'-0'",
                        "0.1",
                    ],
                    "(i::float8 / 7 * power(10::float8, i % 60 - 30))::real",
                    Float32,
                ),
                case(
                    "c_float8",
                    "double precision",
                    &[
                        "'NaN'",
                        "'Infinity'",
                        "'-Infinity'",
                        "'1.7976931348623157e+308'",
                        "'5e-324'",
                        "'-0'",
                        "0.1",
                    ],
                    "i::float8 / 7 * power(10::float8, i % 600 - 300)",
                    Float64,
                ),
                case(
                    "c_numeric_12_2",
                    "numeric(12,2)",
                    &["9999999999.99", "-9999999999.99", "0", "0.01"],
                    "round(i * 12345.67 / 3 - 100000, 2)",
                    Plain,
                ),
                case(
                    "c_numeric_38_0",
                    "numeric(38,0)",
                    &[
                        "99999999999999999999999999999999999999",
                        "-99999999999999999999999999999999999999",
                    ],
                    "i::numeric * 333333333333333333333333333333333 - 1",
                    Plain,
                ),
                case(
                    "c_numeric_38_10",
                    "numeric(38,10)",
                    &["9999999999999999999999999999.9999999999", "-0.0000000001"],
                    "round(i::numeric / 7 * 10::numeric ^ (i % 26), 10)",
                    Plain,
                ),
                case(
                    "c_numeric",
                    "numeric",
                    &[
                        "'NaN'",
                        "'Infinity'",
                        "'-Infinity'",
                        "123456789012345678901234567890123456789012345678901234567890.123456789",
                        "-0.5",
                        "0.000000000000000000000000000000000000000000000000001",
                    ],
                    "i::numeric / 7 * 10::numeric ^ (i % 80 - 40)",
                    Plain,
                ),
                case(
                    "c_numeric_50_5",
                    "numeric(50,5)",
                    &["999999999999999999999999999999999999999999999.99999"],
                    "round(i::numeric / 3 * 10::numeric ^ (i % 40), 5)",
                    Plain,
                ),
                case(
                    "c_money",
                    "money",
                    &[
                        "'92233720368547758.07'",
                        "'-92233720368547758.08'",
                        "0",
                        "'-0.01'",
                    ],
                    "(i * 1234567.89 - 100000)::numeric::money",
                    Money,
                ),
                case(
                    "c_xid8",
                    "xid8",
                    &["'18446744073709551615'", "'0'"],
                    "(i::numeric * 60000000000000000)::text::xid8",
                    Plain,
                ),
            ],
        },
        Family {
            table: "texts",
            setup: "",
            cases: vec![
                case(
                    "c_text",
                    "text",
                    &[
                        "''",
                        "'ünïcødé 🎉 日本'",
                        "E'tab\\tnew\\nline back\\\\slash \"quote\" ''apos'''",
                        "'NULL'",
                        "repeat('x', 10000)",
                    ],
                    "'row ' || i || ' ü ' || repeat('é', i % 10)",
                    Plain,
                ),
                case(
                    "c_varchar",
                    "varchar(20)",
                    &["''", "'12345678901234567890'"],
                    "'v' || i",
                    Plain,
                ),
                case(
                    "c_bpchar",
                    "char(5)",
                    &["'a'", "''", "'abcde'"],
                    "left('c' || i, 5)",
                    Plain,
                ),
                case(
                    "c_char",
                    "\"char\"",
                    &["'a'", "''"],
                    "chr(65 + i % 26)::\"char\"",
                    Plain,
                ),
                case(
                    "c_name",
                    "name",
                    &["repeat('n', 63)"],
                    "('name_' || i)::name",
                    Plain,
                ),
                case(
                    "c_uuid",
                    "uuid",
                    &[
                        "'00000000-0000-0000-0000-000000000000'",
                        "'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'",
                    ],
                    "md5(i::text)::uuid",
                    Plain,
                ),
                case(
                    "c_json",
                    "json",
                    &["'{\"a\": [1, 2.50, null],  \"a\": 2}'", "'\"x\"'", "'null'"],
                    "json_build_object('i', i, 's', 'ü' || i)",
                    Plain,
                ),
                case(
                    "c_jsonb",
                    "jsonb",
                    &[
                        "'{\"b\": 1, \"a\": \"ü\"}'",
                        "'[]'",
                        "'12345678901234567890.5'",
                    ],
                    "jsonb_build_object('i', i, 'l', jsonb_build_array(i, null, 'x'))",
                    Plain,
                ),
                case(
                    "c_bytea",
                    "bytea",
                    &["'\\x'", "'\\x00ff'", "decode(repeat('ab', 5000), 'hex')"],
                    "decode(md5(i::text), 'hex')",
                    Bytes,
                ),
                case(
                    "c_inet",
                    "inet",
                    &["'192.168.0.1/24'", "'::1'", "'2001:db8::1/64'"],
                    "('10.0.' || (i % 256) || '.' || (i % 200) || '/' || (8 + i % 25))::inet",
                    Plain,
                ),
                case(
                    "c_cidr",
                    "cidr",
                    &["'10.0.0.0/8'", "'2001:db8::/32'"],
                    "('10.' || (i % 256) || '.0.0/16')::cidr",
                    Plain,
                ),
                case(
                    "c_macaddr",
                    "macaddr",
                    &["'08:00:2b:01:02:03'"],
                    "('08:00:2b:01:02:' || lpad(to_hex(i % 256), 2, '0'))::macaddr",
                    Plain,
                ),
                case(
                    "c_macaddr8",
                    "macaddr8",
                    &["'08:00:2b:01:02:03:04:05'"],
                    "('08:00:2b:01:02:03:04:' || lpad(to_hex(i % 256), 2, '0'))::macaddr8",
                    Plain,
                ),
                case(
                    "c_bit",
                    "bit(8)",
                    &["B'10101010'", "B'00000000'"],
                    "(i % 256)::bit(8)",
                    Plain,
                ),
                case(
                    "c_varbit",
                    "varbit",
                    &["B''", "B'1'"],
                    "(i % 1024)::bit(10)::varbit",
                    Plain,
                ),
                case(
                    "c_tsvector",
                    "tsvector",
                    &["'a fat cat sat'", "''"],
                    "to_tsvector('english', 'the rats number ' || i)",
                    Plain,
                ),
                case(
                    "c_tsquery",
                    "tsquery",
                    &["'fat & (rat | cat)'"],
                    "('w' || i || ' & x')::tsquery",
                    Plain,
                ),
                case(
                    "c_xml",
                    "xml",
                    &["'<a b=\"c\">ü</a>'", "''"],
                    "xmlelement(name r, i)",
                    Plain,
                ),
                case(
                    "c_pg_lsn",
                    "pg_lsn",
                    &["'16/B374D848'", "'0/0'", "'FFFFFFFF/FFFFFFFF'"],
                    "(i || '/' || to_hex(i * 1000))::pg_lsn",
                    Plain,
                ),
                case(
                    "c_point",
                    "point",
                    &["'(1.5,-2)'"],
                    "point(i, -i / 3.0)",
                    Plain,
                ),
                case(
                    "c_int4range",
                    "int4range",
                    &["'empty'", "'[1,10)'", "'(,5]'", "'[3,)'"],
                    "int4range(i, i * 2)",
                    Range(&Int),
                ),
                case(
                    "c_int8range",
                    "int8range",
                    &["'(,)'", "'[-9223372036854775808,9223372036854775807)'"],
                    "int8range(i, null)",
                    Range(&Int),
                ),
                case(
                    "c_numrange",
                    "numrange",
                    &["'[1.5,2.25]'", "'(-1e-30,)'", "'empty'"],
                    "numrange(i / 3.0, i)",
                    Range(&Plain),
                ),
                case(
                    "c_daterange",
                    "daterange",
                    &["'[2020-01-01,infinity)'"],
                    "daterange('2020-01-01'::date + i, '2021-01-01')",
                    Range(&Date),
                ),
                case(
                    "c_tsrange",
                    "tsrange",
                    &[
                        "'[\"2020-01-01 00:00:00\",\"2020-01-02 00:00:00\")'",
                        "'[-infinity,infinity]'",
                    ],
                    "tsrange('2020-01-01'::timestamp + i * interval '1 hour', null)",
                    Range(&Timestamp),
                ),
                case(
                    "c_tstzrange",
                    "tstzrange",
                    &["'(,\"2020-01-02 00:00:00+00\")'"],
                    "tstzrange('2020-01-01'::timestamptz, '2020-01-01'::timestamptz + i * interval '1 day')",
                    Range(&Timestamp),
                ),
            ],
        },
        Family {
            table: "times",
            setup: "",
            cases: vec![
                case(
                    "c_date",
                    "date",
                    &[
                        "'infinity'",
                        "'-infinity'",
                        "'4713-01-01 BC'",
                        "'5874897-12-31'",
                        "'0001-01-01'",
                        "'1970-01-01'",
                        "'2000-02-29'",
                        "'0044-03-15 BC'",
                    ],
                    "DATE '1900-01-01' + i * 97",
                    Date,
                ),
                case(
                    "c_timestamp",
                    "timestamp",
                    &[
                        "'infinity'",
                        "'-infinity'",
                        "'4713-01-01 00:00:00 BC'",
                        "'294246-12-31 23:59:59.999999'",
                        "'1970-01-01 00:00:00'",
                        "'2000-02-29 12:34:56.000001'",
                    ],
                    "TIMESTAMP '1900-01-01' + i * interval '12345678.123457 seconds'",
                    Timestamp,
                ),
                case(
                    "c_timestamptz",
                    "timestamptz",
                    &[
                        "'infinity'",
                        "'-infinity'",
                        "'4713-01-01 00:00:00+00 BC'",
                        "'2020-06-01 12:00:00.5+05:30'",
                        "'1969-12-31 23:59:59.999999-08'",
                        "'294246-12-31 23:59:59.999999+00'",
                    ],
                    "TIMESTAMPTZ '1900-01-01 00:00:00+00' + i * interval '12345678.123457 seconds'",
                    Timestamp,
                ),
                case(
                    "c_time",
                    "time",
                    &["'00:00:00'", "'23:59:59.999999'", "'24:00:00'"],
                    "TIME '00:00' + i * interval '287.654321 seconds'",
                    Time,
                ),
                case(
                    "c_timetz",
                    "timetz",
                    &[
                        "'00:00:00+15:59'",
                        "'24:00:00-15:59'",
                        "'12:34:56.789012+05:30'",
                        "'00:00:00+00'",
                        "'01:02:03-00:00:07'",
                    ],
                    "((TIME '00:00' + i * interval '287.654321 seconds')::text || CASE i % 3 WHEN 0 THEN '+05:30' WHEN 1 THEN '-08' ELSE '+00' END)::timetz",
                    TimeTz,
                ),
                case(
                    "c_interval",
                    "interval",
                    &[
                        "'0'",
                        "'-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807'::interval - '00:00:00.000001'",
                        "'178956970 years 7 mons 2147483647 days 2562047788:00:54.775807'",
                        "'1 mon -1 day +00:00:00.000001'",
                        "'-00:00:00.000001'",
                        "'1 year'",
                    ],
                    "make_interval(months => i % 30 - 15, days => i % 70 - 35, secs => i * 1234.567891 - 100000)",
                    Interval,
                ),
            ],
        },
        Family {
            table: "arrays",
            setup: "",
            cases: vec![
                case(
                    "a_int4",
                    "integer[]",
                    &[
                        "'{}'",
                        "'{1,NULL,3}'",
                        "'{NULL}'",
                        "'{-2147483648,2147483647}'",
                        "'[0:2]={7,8,9}'",
                        "'{{1,2},{3,NULL}}'",
                        "'{{{1}},{{2}}}'",
                    ],
                    "ARRAY[i, -i, NULL, i * 1000]",
                    Array(&Int),
                ),
                case(
                    "a_int8",
                    "bigint[]",
                    &["'{9223372036854775807,-9223372036854775808}'"],
                    "ARRAY[i::bigint << 40]",
                    Array(&Int),
                ),
                case(
                    "a_int2",
                    "smallint[]",
                    &["'{32767,-32768}'"],
                    "ARRAY[(i % 1000)::smallint]",
                    Array(&Int),
                ),
                case(
                    "a_text",
                    "text[]",
                    &[
                        "'{}'",
                        "ARRAY['', NULL, 'NULL', 'null', 'a\"b', 'c\\d', ' x ', 'ü,{}', E'tab\\there']",
                        "'{{a,b},{c,d}}'",
                    ],
                    "ARRAY['t' || i, NULL, repeat('é', i % 5)]",
                    Array(&Plain),
                ),
                case(
                    "a_varchar",
                    "varchar(10)[]",
                    &["'{\"a b\",c}'"],
                    "ARRAY[('v' || i)::varchar]",
                    Array(&Plain),
                ),
                case(
                    "a_bool",
                    "boolean[]",
                    &["'{t,f,NULL}'"],
                    "ARRAY[i % 2 = 0, NULL]",
                    Array(&Bool),
                ),
                case(
                    "a_float4",
                    "real[]",
                    &["'{NaN,Infinity,-Infinity,-0,1.5,3.4028235e+38}'"],
                    "ARRAY[(i / 7.0)::real]",
                    Array(&Float32),
                ),
                case(
                    "a_float8",
                    "double precision[]",
                    &["'{NaN,Infinity,-Infinity,-0,1.5,5e-324}'"],
                    "ARRAY[i / 7.0::float8, NULL]",
                    Array(&Float64),
                ),
                case(
                    "a_numeric_10_2",
                    "numeric(10,2)[]",
                    &["'{1.50,-99999999.99,NULL}'"],
                    "ARRAY[round(i / 3.0, 2)]",
                    Array(&Plain),
                ),
                case(
                    "a_numeric",
                    "numeric[]",
                    &[
                        "'{NaN,Infinity,-Infinity,1e-50,123456789012345678901234567890123456789012345}'",
                    ],
                    "ARRAY[i / 7.0, NULL]",
                    Array(&Plain),
                ),
                case(
                    "a_money",
                    "money[]",
                    &["'{1.50,-2.00,92233720368547758.07}'"],
                    "ARRAY[(i * 1.01)::numeric::money]",
                    Array(&Money),
                ),
                case(
                    "a_bytea",
                    "bytea[]",
                    &["ARRAY['\\x00'::bytea, NULL, '\\x']"],
                    "ARRAY[decode(md5(i::text), 'hex')]",
                    Array(&Bytes),
                ),
                case(
                    "a_uuid",
                    "uuid[]",
                    &["ARRAY[NULL, '00000000-0000-0000-0000-000000000000']::uuid[]"],
                    "ARRAY[md5(i::text)::uuid]",
                    Array(&Plain),
                ),
                case(
                    "a_jsonb",
                    "jsonb[]",
                    &["ARRAY['{\"a\": [1, \"x\"]}'::jsonb, NULL, 'null', '\"s\"']"],
                    "ARRAY[jsonb_build_object('i', i)]",
                    Array(&Plain),
                ),
                case(
                    "a_date",
                    "date[]",
                    &["'{2020-01-01,NULL,1970-01-01}'"],
                    "ARRAY[DATE '2000-01-01' + i]",
                    Array(&Date),
                ),
                case(
                    "a_timestamp",
                    "timestamp[]",
                    &["'{\"2020-01-01 00:00:00\",\"1999-12-31 23:59:59.999999\"}'"],
                    "ARRAY[TIMESTAMP '2000-01-01' + i * interval '1.5 seconds']",
                    Array(&Timestamp),
                ),
                case(
                    "a_timestamptz",
                    "timestamptz[]",
                    &["'{\"2020-01-01 00:00:00+00\",\"1999-12-31 23:59:59.999999+05\",NULL}'"],
                    "ARRAY[TIMESTAMPTZ '2000-01-01 00:00:00+00' + i * interval '1.5 seconds']",
                    Array(&Timestamp),
                ),
                case(
                    "a_time",
                    "time[]",
                    &["'{00:00:00,24:00:00}'"],
                    "ARRAY[TIME '00:00' + i * interval '1 minute']",
                    Array(&Time),
                ),
                case(
                    "a_timetz",
                    "timetz[]",
                    &["'{00:00:00+15:59,12:00:00-03:30}'"],
                    "ARRAY[(TIME '00:00' + i * interval '1 minute')::timetz]",
                    Array(&TimeTz),
                ),
                case(
                    "a_interval",
                    "interval[]",
                    &["'{\"1 day\",\"-1 mons +00:00:01\",NULL}'"],
                    "ARRAY[i * interval '1 day 1 second']",
                    Array(&Interval),
                ),
                case(
                    "a_inet",
                    "inet[]",
                    &["'{::1,10.0.0.1/8}'"],
                    "ARRAY[('10.0.0.' || (i % 256))::inet]",
                    Array(&Plain),
                ),
                case(
                    "a_int4range",
                    "int4range[]",
                    &["ARRAY['empty'::int4range, '[1,2)']"],
                    "ARRAY[int4range(i, i + 10)]",
                    Array(&Plain),
                ),
            ],
        },
        Family {
            table: "catalog_types",
            setup: "CREATE EXTENSION hstore; CREATE EXTENSION citext;
                    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ünï \"q\" ,{}');
                    CREATE DOMAIN price AS numeric(10,2) CHECK (VALUE > -1000000);
                    CREATE DOMAIN positive_price AS price CHECK (VALUE >= 0);
                    CREATE DOMAIN small_id AS integer;
                    CREATE DOMAIN tags AS text[];
                    CREATE TYPE pair AS (a integer, b text);
                    CREATE TYPE floatrange AS RANGE (subtype = float8);
                    CREATE EXTENSION postgis;",
            cases: vec![
                case(
                    "c_enum",
                    "mood",
                    &["'sad'", "'ünï \"q\" ,{}'"],
                    "(ARRAY['sad', 'ok', 'happy']::mood[])[1 + i % 3]",
                    Plain,
                ),
                case(
                    "c_enum_array",
                    "mood[]",
                    &["'{}'", "ARRAY['ok', NULL, 'ünï \"q\" ,{}']::mood[]"],
                    "ARRAY[(ARRAY['sad', 'ok']::mood[])[1 + i % 2]]",
                    Array(&Plain),
                ),
                case(
                    "c_domain",
                    "price",
                    &["99999999.99", "-999999.99"],
                    "round(i / 7.0, 2)",
                    Plain,
                ),
                case(
                    "c_nested_domain",
                    "positive_price",
                    &["0", "99999999.99"],
                    "round(i / 3.0, 2)",
                    Plain,
                ),
                case(
                    "c_domain_array",
                    "small_id[]",
                    &["'{2147483647,NULL}'"],
                    "ARRAY[i, -i]::small_id[]",
                    Array(&Int),
                ),
                case(
                    "c_domain_over_array",
                    "tags",
                    &["'{}'", "'{\"a b\",NULL}'"],
                    "ARRAY['t' || i]",
                    Array(&Plain),
                ),
                case(
                    "c_composite",
                    "pair",
                    &["ROW(NULL, NULL)::pair", "ROW(1, 'a \"b\", c')::pair"],
                    "ROW(i, 'p' || i)::pair",
                    Plain,
                ),
                case(
                    "c_composite_array",
                    "pair[]",
                    &["ARRAY[ROW(1, 'x y')::pair, NULL]"],
                    "ARRAY[ROW(i, NULL)::pair]",
                    CompositeArray,
                ),
                case(
                    "c_hstore",
                    "hstore",
                    &["''", r#"'a=>1, "b c"=>NULL, ""=>"x\\y\"", ü=>é'"#],
                    "hstore('k' || i, CASE WHEN i % 2 = 0 THEN NULL ELSE 'v' || i END)",
                    Hstore,
                ),
                case(
                    "c_citext",
                    "citext",
                    &["'MiXeD Case'"],
                    "('Row ' || i)::citext",
                    Plain,
                ),
                case(
                    "c_citext_array",
                    "citext[]",
                    &["ARRAY['A'::citext, NULL]"],
                    "ARRAY[('C' || i)::citext]",
                    Array(&Plain),
                ),
                case(
                    "c_unknown",
                    "floatrange",
                    &["'[1.5,2.5)'", "'empty'"],
                    "floatrange(i, i * 2)",
                    Plain,
                ),
                // PostGIS prints EWKB hex; the lake holds those bytes, SRID included.
                case(
                    "c_geometry",
                    "geometry",
                    &[
                        "'SRID=4326;POINT(1 2)'",
                        "'GEOMETRYCOLLECTION EMPTY'",
                        "'SRID=3857;POLYGON Z ((0 0 1,1 0 1,1 1 1,0 0 1))'",
                        "'LINESTRING M (0 0 0,1e300 -1e-300 1)'",
                        "'MULTIPOINT((1 1),(2 2))'",
                    ],
                    "ST_SetSRID(ST_MakePoint(i, i * 0.5), 4326)",
                    HexText,
                ),
                case(
                    "c_geography",
                    "geography",
                    &[
                        "'SRID=4326;POINT(-71.0603 42.3583)'",
                        "'LINESTRING(-180 -90,180 90)'",
                        "'POINT EMPTY'",
                    ],
                    "ST_MakePoint(i % 180, i % 90)::geography",
                    HexText,
                ),
                // geometry's array delimiter is `:`, not `,`: the array's text.
                case(
                    "c_geometry_array",
                    "geometry[]",
                    &["ARRAY['POINT(1 2)'::geometry, NULL, 'SRID=4326;POINT EMPTY']"],
                    "ARRAY[ST_MakePoint(i, 0), ST_MakePoint(0, i)]",
                    Plain,
                ),
                case(
                    "c_forced",
                    "numeric",
                    &["1234567890123456.1234", "-0.5", "7.00000"],
                    "round(i / 7.0, 4)",
                    Cast("numeric(20,4)"),
                ),
            ],
        },
    ]
}

/// Postgres's rendering of `value` (a SQL expression) in the documented lake form of
/// `kind`, as text (output function of the expression's type).
fn render(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Plain | Kind::Bool | Kind::Int | Kind::Float32 | Kind::Float64 => value.to_owned(),
        Kind::Money => format!("{value}::numeric"),
        Kind::Cast(sql_type) => format!("({value})::{sql_type}"),
        Kind::Hstore => format!("hstore_to_json({value})"),
        Kind::HexText => format!("lower({value}::text)"),
        Kind::Bytes => format!("encode({value}, 'hex')"),
        Kind::Date => format!(
            "CASE WHEN {value} = 'infinity' THEN 2147483647 WHEN {value} = '-infinity' THEN -2147483648 \
             ELSE {value} - DATE '1970-01-01' END"
        ),
        Kind::Timestamp => format!(
            "CASE WHEN {value} = 'infinity' THEN 9223372036854775807 \
             WHEN {value} = '-infinity' THEN -9223372036854775808 \
             ELSE (extract(epoch FROM {value}) * 1000000)::bigint END"
        ),
        Kind::Time => format!("(extract(epoch FROM {value}) * 1000000)::bigint"),
        Kind::TimeTz => format!(
            "CASE WHEN {value} IS NULL THEN NULL ELSE concat((extract(epoch FROM {value}::time) * 1000000)::bigint, \
             ',', extract(timezone FROM {value})::int) END"
        ),
        Kind::Interval => format!(
            "CASE WHEN {value} IS NULL THEN NULL ELSE concat(\
             (extract(year FROM {value}) * 12 + extract(month FROM {value}))::int, ',', \
             extract(day FROM {value})::int, ',', \
             (extract(hour FROM {value}) * 3600000000 + extract(minute FROM {value}) * 60000000 \
              + extract(microseconds FROM {value}))::bigint) END"
        ),
        Kind::CompositeArray => format!(
            "CASE WHEN {value} IS NULL THEN NULL ELSE (SELECT coalesce(json_agg(x ORDER BY o), '[]') \
             FROM unnest({value}::text[]) WITH ORDINALITY AS u(x, o)) END"
        ),
        Kind::Range(bound) => format!(
            "CASE WHEN {value} IS NULL THEN NULL ELSE json_build_array(isempty({value}), \
             lower_inc({value}), upper_inc({value}), \
             CASE WHEN lower({value}) IS NULL THEN NULL ELSE format('%s', {}) END, \
             CASE WHEN upper({value}) IS NULL THEN NULL ELSE format('%s', {}) END)::text END",
            render(*bound, &format!("lower({value})")),
            render(*bound, &format!("upper({value})"))
        ),
        Kind::Array(element) => format!(
            "CASE WHEN {value} IS NULL THEN NULL ELSE (SELECT coalesce(json_agg(\
             CASE WHEN x IS NULL THEN NULL ELSE format('%s', {}) END ORDER BY o), '[]') \
             FROM unnest({value}) WITH ORDINALITY AS u(x, o)) END",
            render(*element, "x")
        ),
    }
}

/// Postgres's rendering (text, None for NULL) as the canonical JSON value of `kind`.
fn canonical_pg(kind: Kind, text: Option<&str>) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    match kind {
        Kind::Float32 => float_canon(f64::from(text.parse::<f32>().expect("real text"))),
        Kind::Float64 => float_canon(text.parse::<f64>().expect("float8 text")),
        Kind::Hstore => serde_json::from_str(text).expect("hstore_to_json"),
        Kind::CompositeArray => canonical_pg(Kind::Array(&Kind::Plain), Some(text)),
        Kind::Range(bound) => {
            let parts: Vec<Value> = serde_json::from_str(text).expect("json_build_array");
            Value::Array(vec![
                parts[0].clone(),
                parts[1].clone(),
                parts[2].clone(),
                canonical_pg(*bound, parts[3].as_str()),
                canonical_pg(*bound, parts[4].as_str()),
            ])
        }
        Kind::Array(element) => {
            let list: Vec<Value> = serde_json::from_str(text).expect("json_agg");
            Value::Array(
                list.into_iter()
                    .map(|v| canonical_pg(*element, v.as_str()))
                    .collect(),
            )
        }
        _ => Value::String(text.to_owned()),
    }
}

fn float_canon(value: f64) -> Value {
    // Bit-exact, with every NaN equal to every other.
    Value::String(if value.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{:?}", value.to_bits())
    })
}

/// A value as the Python reader returned it, in the canonical JSON value of `kind`.
fn canonical_lake(kind: Kind, value: &Value) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    let string = |s: String| Value::String(s);
    let raw = |v: &Value| v.get("raw").and_then(Value::as_i64);
    match kind {
        Kind::Plain | Kind::Money | Kind::Cast(_) | Kind::Bytes | Kind::HexText => match value {
            Value::String(s) => string(s.clone()),
            other => string(other.to_string()),
        },
        Kind::Bool => string(
            if value.as_bool() == Some(true) {
                "t"
            } else {
                "f"
            }
            .to_owned(),
        ),
        Kind::Int | Kind::Time => string(value.to_string()),
        Kind::Float32 | Kind::Float64 => match value {
            Value::String(s) => float_canon(s.parse().expect("NaN or infinity")),
            other => float_canon(other.as_f64().expect("a float")),
        },
        Kind::Date => string(match raw(value) {
            Some(days) => days.to_string(),
            None => {
                let date = NaiveDate::parse_from_str(value.as_str().expect("iso date"), "%Y-%m-%d")
                    .expect("iso date");
                (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch"))
                    .num_days()
                    .to_string()
            }
        }),
        Kind::Timestamp => string(match raw(value) {
            Some(micros) => micros.to_string(),
            None => {
                let text = value.as_str().expect("iso timestamp");
                let micros = match DateTime::parse_from_rfc3339(text) {
                    Ok(with_offset) => with_offset.timestamp_micros(),
                    Err(_) => NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                        .expect("iso timestamp")
                        .and_utc()
                        .timestamp_micros(),
                };
                micros.to_string()
            }
        }),
        Kind::TimeTz => string(format!(
            "{},{}",
            value["microseconds"], value["offset_seconds"]
        )),
        Kind::Interval => string(format!(
            "{},{},{}",
            value["months"], value["days"], value["microseconds"]
        )),
        Kind::Hstore => {
            let mut map = Map::new();
            for pair in value.as_array().expect("map entries") {
                map.insert(pair[0].as_str().expect("key").to_owned(), pair[1].clone());
            }
            Value::Object(map)
        }
        Kind::CompositeArray => canonical_lake(Kind::Array(&Kind::Plain), value),
        Kind::Range(bound) => Value::Array(vec![
            value["empty"].clone(),
            value["lower_inc"].clone(),
            value["upper_inc"].clone(),
            canonical_lake(*bound, &value["lower"]),
            canonical_lake(*bound, &value["upper"]),
        ]),
        Kind::Array(element) => Value::Array(
            value
                .as_array()
                .expect("a list")
                .iter()
                .map(|v| canonical_lake(*element, v))
                .collect(),
        ),
    }
}

/// Session settings of the test's own connection: the ones pg2lake uses.
const SESSION: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; SET TimeZone = UTC; \
                       SET extra_float_digits = 3; SET lc_monetary = 'C'; SET bytea_output = hex;";

/// Inserts the family's rows with ids starting at `first_id`.
async fn insert_rows(db: &tokio_postgres::Client, family: &Family, first_id: i32) {
    let columns: Vec<&str> = family.cases.iter().map(|c| c.column).collect();
    let specials = family
        .cases
        .iter()
        .map(|c| c.specials.len())
        .max()
        .unwrap_or(0);
    let mut sql = String::from("BEGIN;");
    for k in 0..specials {
        let values: Vec<&str> = family
            .cases
            .iter()
            .map(|c| c.specials.get(k).copied().unwrap_or("NULL"))
            .collect();
        sql.push_str(&format!(
            "INSERT INTO {} (id, {}) VALUES ({}, {});",
            family.table,
            columns.join(", "),
            first_id + k as i32,
            values.join(", ")
        ));
    }
    let generated: Vec<String> = family
        .cases
        .iter()
        .map(|c| format!("CASE WHEN i % 17 = 0 THEN NULL ELSE {} END", c.generated))
        .collect();
    sql.push_str(&format!(
        "INSERT INTO {} (id, {}) SELECT {} + i, {} FROM generate_series(1, {GENERATED_ROWS}) AS i;COMMIT;",
        family.table,
        columns.join(", "),
        first_id + specials as i32,
        generated.join(", ")
    ));
    db.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("insert into {}: {e:?}", family.table));
}

/// Per type: (values compared, mismatches as "id: lake vs postgres").
type Outcome = BTreeMap<&'static str, (usize, Vec<String>)>;

async fn compare(
    db: &tokio_postgres::Client,
    family: &Family,
    lake_rows: &[Row],
    outcome: &mut Outcome,
) {
    let renders: Vec<String> = family
        .cases
        .iter()
        .map(|c| render(c.kind, c.column))
        .collect();
    let sql = format!(
        "{SESSION} SELECT id, {} FROM {} ORDER BY id",
        renders.join(", "),
        family.table
    );
    let mut source: BTreeMap<i64, Vec<Option<String>>> = BTreeMap::new();
    for message in db.simple_query(&sql).await.expect("render the source") {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let id: i64 = row.get(0).and_then(|id| id.parse().ok()).expect("an id");
            let values = (1..=family.cases.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect();
            source.insert(id, values);
        }
    }
    assert_eq!(
        lake_rows.len(),
        source.len(),
        "{}: lake rows vs source rows",
        family.table
    );
    for row in lake_rows {
        let id = row["id"].as_i64().expect("id");
        let expected_op = if id >= i64::from(STREAM_ID_OFFSET) {
            "c"
        } else {
            "r"
        };
        assert_eq!(row["_op"], expected_op, "{} row {id}: _op", family.table);
        let pg = source
            .get(&id)
            .unwrap_or_else(|| panic!("{} row {id} is not in the source", family.table));
        for (case, pg_text) in family.cases.iter().zip(pg) {
            let lake = canonical_lake(case.kind, &row[case.column]);
            let want = canonical_pg(case.kind, pg_text.as_deref());
            let entry = outcome.entry(case.sql_type).or_default();
            entry.0 += 1;
            if lake != want {
                entry.1.push(format!(
                    "{} id {id}: lake {lake} vs postgres {want}",
                    case.column
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn type_matrix_round_trips_through_snapshot_and_streaming() {
    let pg = PgServer::start();
    let url = pg.create_database("types").await;
    let db = pg.connect("types").await;
    db.batch_execute(SESSION).await.unwrap();
    let families = families();
    for family in &families {
        if !family.setup.is_empty() {
            db.batch_execute(family.setup).await.unwrap();
        }
        let columns: Vec<String> = family
            .cases
            .iter()
            .map(|c| format!("{} {}", c.column, c.sql_type))
            .collect();
        db.batch_execute(&format!(
            "CREATE TABLE {} (id int PRIMARY KEY, {})",
            family.table,
            columns.join(", ")
        ))
        .await
        .unwrap();
        insert_rows(&db, family, 1).await;
    }

    let lake = tempfile::tempdir().unwrap();
    let tables: Vec<String> = families
        .iter()
        .map(|f| format!("public.{}", f.table))
        .collect();
    let table_refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "types",
        &table_refs,
        &lake.path().display().to_string(),
        "column_types:\n  \"public.catalog_types.c_forced\": \"decimal(20,4)\"\n",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    for family in &families {
        insert_rows(&db, family, STREAM_ID_OFFSET).await;
    }
    wait_caught_up(&db, "types", CATCH_UP).await;
    service.stop(STOP);
    // A restart reads every lake column's type back from the Delta log and must find
    // the layout it would create (lists, structs and maps included), then stream on.
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    for family in &families {
        insert_rows(&db, family, 2 * STREAM_ID_OFFSET).await;
    }
    wait_caught_up(&db, "types", CATCH_UP).await;
    // verify reads the source by binary COPY and compares with the streamed (text)
    // values as the lake holds them: every type must compare equal.
    let path = config.path().display().to_string();
    let out = run_command(&["verify", "--config", &path, "--json"], &[], CATCH_UP);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "verify finds every type table equal: {report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified = report["tables"].as_array().cloned().unwrap_or_default();
    assert_eq!(verified.len(), families.len(), "{report:#}");
    for table in &verified {
        assert_eq!(table["status"], "equal", "{table:#}");
    }
    service.stop(STOP);

    let mut outcome = Outcome::new();
    for family in &families {
        let uri = lake.path().join("public").join(family.table);
        let read = read_delta(&uri.display().to_string(), &[]);
        compare(&db, family, &read.rows, &mut outcome).await;
    }
    let exact = outcome.values().filter(|(_, bad)| bad.is_empty()).count();
    for (sql_type, (values, bad)) in &outcome {
        if !bad.is_empty() {
            eprintln!("{sql_type}: {} of {values} values differ, e.g.:", bad.len());
            for line in bad.iter().take(3) {
                eprintln!("  {line}");
            }
        }
    }
    let values: usize = outcome.values().map(|(n, _)| n).sum();
    println!(
        "type matrix: {exact}/{} types round-trip exactly (snapshot and streaming, {values} values)",
        outcome.len()
    );
    let log = service.log();
    assert!(
        log.contains("stored as the flat list"),
        "a multi-dimensional array is reported in the log"
    );
    let unknown: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("column type unknown to pg2lake"))
        .collect();
    // Once per column and run (the log holds both runs).
    assert!(
        (1..=2).contains(&unknown.len())
            && unknown
                .iter()
                .all(|l| l.contains("c_unknown") && l.contains("floatrange")),
        "one warning per run for the unknown column: {unknown:?}"
    );
    assert_eq!(exact, outcome.len(), "every type round-trips exactly");
}

/// A column of a catalog type created while pg2lake streams (a new domain, enum and
/// array of domain) is typed from the catalog when its Relation message arrives.
#[tokio::test(flavor = "multi_thread")]
async fn catalog_types_added_mid_stream_are_looked_up_and_typed() {
    let pg = PgServer::start();
    let url = pg.create_database("midstream").await;
    let db = pg.connect("midstream").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("create table");
    let lake = tempfile::tempdir().expect("temp dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "midstream",
        &["public.t"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    db.batch_execute(
        "CREATE DOMAIN qty AS numeric(8,3);
         CREATE TYPE colour AS ENUM ('red', 'green');
         ALTER TABLE t ADD COLUMN q qty, ADD COLUMN c colour, ADD COLUMN qs qty[];
         INSERT INTO t VALUES (1, 12345.678, 'green', '{1.5,NULL}');",
    )
    .await
    .expect("add catalog-typed columns");
    wait_caught_up(&db, "midstream", CATCH_UP).await;
    service.stop(STOP);
    let read = read_delta(&lake.path().join("public/t").display().to_string(), &[]);
    assert_eq!(read.column_type("q"), Some("decimal128(8, 3)"));
    assert_eq!(read.column_type("c"), Some("string"));
    assert_eq!(
        read.column_type("qs"),
        Some("list<element: decimal128(8, 3)>")
    );
    let row = &read.rows[0];
    assert_eq!(row["q"], "12345.678");
    assert_eq!(row["c"], "green");
    assert_eq!(row["qs"], serde_json::json!(["1.500", null]));
}

/// The walsender may send a transaction before the committing backend has made it
/// visible to other sessions, so a Relation message can name a type that a catalog query
/// does not see yet. The lookup waits for it instead of recording it as dropped (which
/// would store the column as text); an OID that never appears is recorded as dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_type_not_visible_yet_is_looked_up_until_it_commits() {
    use pg2lake::pg::catalog::resolve_types;
    use pg2lake::pg::pgoutput::RelationColumn;
    use pg2lake::schema::{CatalogKind, TypeCatalog};

    let pg = PgServer::start();
    pg.create_database("visibility").await;
    let creator = pg.connect("visibility").await;
    let reader = pg.connect("visibility").await;
    creator
        .batch_execute("BEGIN; CREATE DOMAIN late_qty AS numeric(8,3);")
        .await
        .expect("create the domain, uncommitted");
    let row = creator
        .query_one("SELECT 'late_qty'::regtype::oid", &[])
        .await
        .expect("the domain's oid");
    let late: u32 = row.get(0);
    let column = |type_oid| RelationColumn {
        is_key: false,
        name: "q".to_owned(),
        type_oid,
        type_modifier: -1,
    };

    let lookup = tokio::spawn(async move {
        let mut types = TypeCatalog::default();
        resolve_types(&reader, &mut types, &[column(late)])
            .await
            .expect("type lookup");
        (types, reader)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !lookup.is_finished(),
        "the lookup waits for the invisible type"
    );
    creator.batch_execute("COMMIT").await.expect("commit");
    let (mut types, reader) = lookup.await.expect("lookup task");
    let described = types.get(late).expect("the domain, once committed");
    assert_eq!(described.qualified_name, "public.late_qty");
    assert!(
        matches!(described.kind, CatalogKind::Domain { base: 1700, .. }),
        "a domain over numeric: {:?}",
        described.kind
    );

    // An OID nobody creates: recorded as dropped after the wait, and not looked up again.
    let never = 4_000_000_000;
    resolve_types(&reader, &mut types, &[column(never)])
        .await
        .expect("type lookup");
    assert!(types.get(never).is_none());
    assert!(types.unresolved([never]).is_empty(), "recorded as dropped");
}

/// `column_types: text` keeps what a list column cannot: a multi-dimensional array (or one
/// with other lower bounds) arrives as Postgres's text form of it, through the snapshot
/// and through streaming, while an unconfigured array column of the same table is
/// flattened with a warning that names this fix.
#[tokio::test(flavor = "multi_thread")]
async fn column_types_text_keeps_multi_dimensional_arrays_exact() {
    let pg = PgServer::start();
    let url = pg.create_database("grids").await;
    let db = pg.connect("grids").await;
    let values = [
        "'{{1,2},{3,NULL}}'",
        "'[0:1]={5,6}'",
        "'{{{7}}}'",
        "'{}'",
        "NULL",
        "'{8,9}'",
    ];
    let insert = |first_id: usize| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("INSERT INTO grids VALUES ({}, {v}, {v});", first_id + i))
            .collect::<String>()
    };
    db.batch_execute(&format!(
        "CREATE TABLE grids (id int PRIMARY KEY, cells int[], flat int[]); {}",
        insert(1)
    ))
    .await
    .expect("create and fill");
    let lake = tempfile::tempdir().expect("temp dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "grids",
        &["public.grids"],
        &lake.path().display().to_string(),
        "column_types:\n  public.grids.cells: text\n",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    db.batch_execute(&insert(101)).await.expect("insert");
    wait_caught_up(&db, "grids", CATCH_UP).await;
    service.stop(STOP);

    let read = read_delta(&lake.path().join("public/grids").display().to_string(), &[]);
    assert_eq!(read.column_type("cells"), Some("string"));
    assert_eq!(read.column_type("flat"), Some("list<element: int32>"));
    let source: BTreeMap<i64, Value> = db
        .query("SELECT id::int8, cells::text FROM grids", &[])
        .await
        .expect("read source")
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get::<_, Option<String>>(1)
                    .map_or(Value::Null, Value::String),
            )
        })
        .collect();
    let lake_cells: BTreeMap<i64, Value> = read
        .rows
        .iter()
        .map(|r| (r["id"].as_i64().expect("id"), r["cells"].clone()))
        .collect();
    assert_eq!(
        lake_cells.len(),
        2 * values.len(),
        "snapshot and streamed rows"
    );
    assert_eq!(lake_cells, source);
    let row = read.rows.iter().find(|r| r["id"] == 1).expect("row 1");
    assert_eq!(row["flat"], serde_json::json!([1, 2, 3, null]));
    let log = service.log();
    assert!(
        log.lines().any(|l| l.contains("stored as the flat list")
            && l.contains("column_types: {public.grids.flat: text}")),
        "the warning names the fix:\n{log}"
    );
}

/// The `stats` of every `add` action in the local Delta log at `table`, in log order.
fn add_stats(table: &std::path::Path) -> Vec<Value> {
    let mut logs: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .expect("delta log")
        .map(|e| e.expect("log entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    logs.sort();
    let mut stats = Vec::new();
    for log in logs {
        for line in std::fs::read_to_string(&log).expect("log file").lines() {
            let action: Value = serde_json::from_str(line).expect("log action");
            if let Some(text) = action["add"]["stats"].as_str() {
                stats.push(serde_json::from_str(text).expect("stats json"));
            }
        }
    }
    stats
}

/// Date columns get min/max statistics (readers skip files on date predicates) while
/// every date is in years 1 to 9999; a file holding `infinity` or a date beyond gets
/// none for them, and so does the rest of the run; a restart starts with them again.
#[tokio::test(flavor = "multi_thread")]
async fn date_columns_have_statistics_while_their_dates_fit() {
    let pg = PgServer::start();
    let url = pg.create_database("dated").await;
    let db = pg.connect("dated").await;
    db.batch_execute("CREATE TABLE events (id int PRIMARY KEY, day date, n int)")
        .await
        .expect("create table");
    let lake = tempfile::tempdir().expect("temp dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "dated",
        &["public.events"],
        &lake.path().display().to_string(),
        "",
    ));
    let table = lake.path().join("public/events");
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    let write = |sql: &'static str| {
        let db = &db;
        async move {
            db.batch_execute(sql).await.expect(sql);
            wait_caught_up(db, "dated", CATCH_UP).await;
        }
    };
    write("INSERT INTO events VALUES (1, '2024-03-01', 1), (2, '0001-01-01', 2), (3, '9999-12-31', 3)").await;
    write("INSERT INTO events VALUES (4, 'infinity', 4)").await;
    write("INSERT INTO events VALUES (5, '2024-05-01', 5)").await;
    service.stop(STOP);
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    write("INSERT INTO events VALUES (6, '2025-01-01', 6)").await;
    service.stop(STOP);

    let stats = add_stats(&table);
    assert_eq!(stats.len(), 4, "one file per transaction: {stats:?}");
    assert_eq!(stats[0]["minValues"]["day"], "0001-01-01");
    assert_eq!(stats[0]["maxValues"]["day"], "9999-12-31");
    for later in &stats[1..3] {
        assert!(later["minValues"].get("day").is_none(), "{later}");
        assert_eq!(later["minValues"]["n"], later["maxValues"]["n"], "{later}");
    }
    assert_eq!(stats[3]["minValues"]["day"], "2025-01-01");
    let read = read_delta(&table.display().to_string(), &[]);
    let days: Vec<(i64, Value)> = read
        .rows
        .iter()
        .map(|r| (r["id"].as_i64().expect("id"), r["day"].clone()))
        .collect();
    assert_eq!(days.len(), 6);
    assert_eq!(days[0], (1, Value::from("2024-03-01")));
    assert_eq!(days[5], (6, Value::from("2025-01-01")));
}

/// A value too wide for its `column_types` decimal stops pg2lake with a one-line error
/// naming the table, column, type and setting, and commits nothing of its transaction;
/// an entry naming no column is reported at start.
#[tokio::test(flavor = "multi_thread")]
async fn a_value_too_wide_for_column_types_stops_with_a_clear_error() {
    let pg = PgServer::start();
    let url = pg.create_database("forced").await;
    let db = pg.connect("forced").await;
    db.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, amount numeric)")
        .await
        .expect("create table");
    let lake = tempfile::tempdir().expect("temp dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "forced",
        &["public.orders"],
        &lake.path().display().to_string(),
        "column_types:\n  public.orders.amount: \"decimal(6,2)\"\n  public.orders.amout: \"decimal(6,2)\"\n",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    db.batch_execute("INSERT INTO orders VALUES (1, 1234.5)")
        .await
        .expect("insert");
    wait_caught_up(&db, "forced", CATCH_UP).await;
    db.batch_execute("INSERT INTO orders VALUES (2, 12345.5)")
        .await
        .expect("insert");
    let line = service.wait_error(
        CATCH_UP,
        &[
            "public.orders",
            "amount",
            "numeric",
            "column_types.\"public.orders.amount\" = decimal(6,2)",
            "fix:",
        ],
    );
    let log = service.log();
    assert!(!line.contains("12345"), "the value stays out of the log");
    assert!(
        log.lines().any(
            |l| l.contains("column_types names no column") && l.contains("public.orders.amout")
        ),
        "a misspelt column_types entry is reported"
    );
    let read = read_delta(
        &lake.path().join("public/orders").display().to_string(),
        &[],
    );
    assert_eq!(read.rows.len(), 1);
    assert_eq!(read.rows[0]["amount"], "1234.50");
}

/// `pg2lake check` lists columns whose type pg2lake does not know, and fails on
/// `column_types` entries that cannot apply or name no column.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_unknown_types_and_column_types_entries() {
    let pg = PgServer::start();
    let url = pg.create_database("checktypes").await;
    let db = pg.connect("checktypes").await;
    db.batch_execute(
        "CREATE TYPE floatrange AS RANGE (subtype = float8);
         CREATE TABLE t (id int PRIMARY KEY, r floatrange, amount numeric, note text);",
    )
    .await
    .expect("schema");
    let lake = tempfile::tempdir().expect("temp dir");
    let yaml = |column_types: &str| {
        config_yaml(
            &url,
            "checktypes",
            &["public.t"],
            &lake.path().display().to_string(),
            column_types,
        )
    };
    let check = |config: &ConfigFile| {
        let out = support::service::run_command(
            &["check", "--config", &config.path().display().to_string()],
            &[],
            CATCH_UP,
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let good = ConfigFile::new(&yaml(
        "column_types:\n  public.t.amount: \"decimal(20,4)\"\n",
    ));
    let (code, text) = check(&good);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "✓ table public.t: every column maps to a lake type; stored as text, type unknown to pg2lake: r (public.floatrange)"
        ),
        "{text}"
    );
    let bad = ConfigFile::new(&yaml(
        "column_types:\n  public.t.note: \"decimal(20,4)\"\n  public.t.amout: \"decimal(20,4)\"\n",
    ));
    let (code, text) = check(&bad);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("✗ column_types.\"public.t.note\" cannot apply to a column of type text"),
        "{text}"
    );
    assert!(
        text.contains("✗ column_types.\"public.t.amout\" names no column of a configured table"),
        "{text}"
    );
}
