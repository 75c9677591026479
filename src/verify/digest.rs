//! Order-independent digests of a table's rows, computed alike for the source and the
//! folded lake.
//!
//! ```text
//!  RecordBatch (lake layout) ─► per row: key bytes (Arrow row format of the key columns)
//!                               per compared column: hash of its Arrow row encoding
//!                               row hash = hash(column hashes, in order)
//!  Buckets: bucket = key hash mod N; count and wrapping sum of hash(key hash, row hash)
//! ```
//!
//! Invariants:
//! - Both sides are Arrow values of the same lake types (the source is read through the
//!   same conversions as the initial load), so equal values encode to equal bytes.
//! - A bucket's digest does not depend on row order; two sides with equal buckets hold
//!   the same keys with the same values (up to a 64-bit hash collision).

use std::hash::{DefaultHasher, Hash, Hasher};

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{OwnedRow, RowConverter, SortField};

/// Buckets per table: a mismatch narrows down to 1/`BUCKETS` of the keys.
pub(super) const BUCKETS: usize = 4096;

/// Hashes a value with a fixed key: the same on both sides of a comparison.
pub(super) fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The hash of a row from its column hashes.
pub(super) fn row_hash(columns: &[u64]) -> u64 {
    hash_of(columns)
}

/// The bucket of a key.
pub(super) fn bucket_of(key_hash: u64) -> usize {
    (key_hash % BUCKETS as u64) as usize
}

/// Computes key bytes and column hashes of batches in one layout.
pub(super) struct Digester {
    key_columns: Vec<usize>,
    compared: Vec<usize>,
    keys: RowConverter,
    columns: Vec<RowConverter>,
}

/// The digests of one batch's rows.
pub(super) struct Digested {
    /// Per row: the key.
    pub keys: Vec<OwnedRow>,
    /// Per row: the hash of the key.
    pub key_hashes: Vec<u64>,
    /// Per compared column, per row: the hash of the value.
    pub columns: Vec<Vec<u64>>,
}

impl Digested {
    /// The column hashes of row `row`.
    pub fn row(&self, row: usize) -> Vec<u64> {
        self.columns.iter().map(|c| c[row]).collect()
    }
}

impl Digester {
    /// A digester for rows of `layout` keyed by `key_columns`, comparing `compared`
    /// (indices into `layout`).
    pub fn new(
        layout: &SchemaRef,
        key_columns: &[usize],
        compared: &[usize],
    ) -> Result<Digester, ArrowError> {
        let field = |i: usize| SortField::new(layout.field(i).data_type().clone());
        Ok(Digester {
            keys: RowConverter::new(key_columns.iter().map(|&i| field(i)).collect())?,
            columns: compared
                .iter()
                .map(|&i| RowConverter::new(vec![field(i)]))
                .collect::<Result<_, _>>()?,
            key_columns: key_columns.to_vec(),
            compared: compared.to_vec(),
        })
    }

    /// The digests of every row of `batch`.
    pub fn digest(&self, batch: &RecordBatch) -> Result<Digested, ArrowError> {
        let pick = |indices: &[usize]| -> Vec<ArrayRef> {
            indices.iter().map(|&i| batch.column(i).clone()).collect()
        };
        let rows = self.keys.convert_columns(&pick(&self.key_columns))?;
        let keys: Vec<OwnedRow> = rows.iter().map(|r| r.owned()).collect();
        let key_hashes = rows.iter().map(|r| hash_of(r.as_ref())).collect();
        let columns = self
            .compared
            .iter()
            .zip(&self.columns)
            .map(|(&i, converter)| {
                let values = converter.convert_columns(&[batch.column(i).clone()])?;
                Ok(values.iter().map(|v| hash_of(v.as_ref())).collect())
            })
            .collect::<Result<_, ArrowError>>()?;
        Ok(Digested {
            keys,
            key_hashes,
            columns,
        })
    }

    /// The key columns' values of `key`, for a report: `column=value` pairs.
    pub fn describe_key(
        &self,
        key: &OwnedRow,
        layout: &SchemaRef,
    ) -> Result<Vec<(String, String)>, ArrowError> {
        let arrays = self.keys.convert_rows([key.row()])?;
        let options = arrow::util::display::FormatOptions::default().with_null("NULL");
        self.key_columns
            .iter()
            .zip(arrays)
            .map(|(&i, array)| {
                let formatter = arrow::util::display::ArrayFormatter::try_new(&array, &options)?;
                Ok((
                    layout.field(i).name().clone(),
                    formatter.value(0).to_string(),
                ))
            })
            .collect()
    }
}

/// Per bucket: rows and the order-independent sum of their digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Buckets {
    counts: Vec<u64>,
    sums: Vec<u64>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: vec![0; BUCKETS],
            sums: vec![0; BUCKETS],
        }
    }
}

impl Buckets {
    /// Adds a row.
    pub fn add(&mut self, key_hash: u64, row_hash: u64) {
        let bucket = bucket_of(key_hash);
        self.counts[bucket] += 1;
        self.sums[bucket] = self.sums[bucket].wrapping_add(hash_of((key_hash, row_hash)));
    }

    /// Rows added.
    pub fn rows(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The buckets whose digests differ from `other`'s.
    pub fn differing(&self, other: &Buckets) -> Vec<usize> {
        (0..BUCKETS)
            .filter(|&b| self.counts[b] != other.counts[b] || self.sums[b] != other.sums[b])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_ignore_order_and_see_any_change() {
        let mut a = Buckets::default();
        let mut b = Buckets::default();
        for (k, r) in [(1, 10), (2, 20), (3, 30)] {
            a.add(hash_of(k), r);
        }
        for (k, r) in [(3, 30), (1, 10), (2, 20)] {
            b.add(hash_of(k), r);
        }
        assert_eq!(a, b);
        assert!(a.differing(&b).is_empty());
        let mut c = b.clone();
        c.add(hash_of(4), 40);
        assert_eq!(c.differing(&a), vec![bucket_of(hash_of(4))]);
        let mut d = Buckets::default();
        for (k, r) in [(1, 10), (2, 21), (3, 30)] {
            d.add(hash_of(k), r);
        }
        assert_eq!(d.differing(&a), vec![bucket_of(hash_of(2))]);
    }
}
