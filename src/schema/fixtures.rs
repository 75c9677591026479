//! Columns and typmods for the unit tests of the schema and batch modules.

use crate::schema::RelationColumn;

/// A non-key column of `type_oid` with `type_modifier`.
pub fn col(name: &str, type_oid: u32, type_modifier: i32) -> RelationColumn {
    RelationColumn {
        is_key: false,
        name: name.to_owned(),
        type_oid,
        type_modifier,
    }
}

/// The typmod Postgres stores for `numeric(p,s)` (a negative scale in 11 bits).
pub fn typmod(precision: i32, scale: i32) -> i32 {
    ((precision << 16) | (scale & 0x7ff)) + 4
}
