//! The mirror's files and their key ranges: each file's first and last key, kept in its
//! `add` tags, and which file a changed key belongs to.

use std::collections::{BTreeMap, HashMap};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::row::{OwnedRow, RowConverter};
use deltalake_core::DeltaTable;
use deltalake_core::kernel::{Add, Remove};
use object_store::path::Path;
use url::Url;

use super::arrow_err;
use super::fold::{Folded, key_rows};
use crate::lake::store::LakeError;
use crate::lake::table::reader::file_batches;

/// The `add` tags holding a mirror file's first and last key.
const KEY_MIN_TAG: &str = "pg2lake.keyMin";
const KEY_MAX_TAG: &str = "pg2lake.keyMax";

/// One file of the mirror.
pub(super) struct MirrorFile {
    pub(super) path: Path,
    pub(super) remove: Remove,
    pub(super) size: u64,
    /// Its first key (row format); empty when unknown (sorted first).
    pub(super) first: Vec<u8>,
    /// Whether a committed version holds it (else this refresh wrote it).
    pub(super) committed: bool,
}

impl MirrorFile {
    pub(super) fn new(file: &deltalake_core::kernel::LogicalFileView) -> MirrorFile {
        // A file's tags are reachable only through its `add` action (deprecated in
        // favour of Arrow arrays that do not expose them).
        #[allow(deprecated)]
        let add = file.add_action();
        MirrorFile {
            path: file.object_store_path(),
            remove: file.remove_action(true),
            size: u64::try_from(file.size()).unwrap_or(0),
            first: first_key(&add),
            committed: true,
        }
    }

    /// A file this refresh wrote.
    pub(super) fn written(add: &Add) -> MirrorFile {
        MirrorFile {
            path: Path::from_url_path(&add.path).unwrap_or_else(|_| Path::from(add.path.as_str())),
            remove: remove_of(&add.path),
            size: u64::try_from(add.size).unwrap_or(0),
            first: first_key(add),
            committed: false,
        }
    }
}

/// The first key of a mirror file, from its `add` tags (empty when it has none).
fn first_key(add: &Add) -> Vec<u8> {
    add.tags
        .as_ref()
        .and_then(|tags| tags.get(KEY_MIN_TAG).cloned().flatten())
        .and_then(|hex| decode_hex(&hex))
        .unwrap_or_default()
}

/// A `remove` (with `dataChange`) of the mirror file at `path`.
pub(super) fn remove_of(path: &str) -> Remove {
    Remove {
        path: path.to_owned(),
        data_change: true,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        extended_file_metadata: None,
        partition_values: None,
        size: None,
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    }
}

/// The changed keys by the mirror file whose key range takes them (`None`: no file, a
/// new one is written). With `replace_all`, every key goes to one new group.
pub(super) fn group_by_file(
    files: &[MirrorFile],
    folded: &Folded,
    replace_all: bool,
) -> Vec<(Option<usize>, Vec<OwnedRow>)> {
    let mut groups: BTreeMap<Option<usize>, Vec<OwnedRow>> = BTreeMap::new();
    if replace_all || files.is_empty() {
        groups.insert(None, folded.keys.keys().cloned().collect());
        return groups.into_iter().collect();
    }
    let firsts: Vec<Vec<u8>> = files.iter().map(|f| f.first.clone()).collect();
    for key in folded.keys.keys() {
        let bytes = key.row().data();
        // The last file whose first key is not above this one; the first file for a key
        // below them all.
        let index = firsts.partition_point(|first| first.as_slice() <= bytes);
        groups
            .entry(Some(index.saturating_sub(1)))
            .or_default()
            .push(key.clone());
    }
    groups.into_iter().collect()
}

/// The rows of one mirror file.
pub(super) async fn read_file(
    mirror: &DeltaTable,
    location: &Url,
    path: &Path,
    layout: &SchemaRef,
) -> Result<RecordBatch, LakeError> {
    let mut batches = Vec::new();
    for batch in file_batches(mirror, location, path, &HashMap::new(), layout).await? {
        batches.push(batch?);
    }
    concat_batches(layout, &batches).map_err(arrow_err(location))
}

pub(in crate::lake) fn first_and_last_key(
    batch: &RecordBatch,
    key: &[String],
    converter: &RowConverter,
) -> Result<(String, String), arrow::error::ArrowError> {
    let rows = key_rows(batch, key, converter)?;
    let hex = |i: usize| encode_hex(rows.row(i).data());
    Ok((hex(0), hex(batch.num_rows().saturating_sub(1))))
}

pub(in crate::lake) fn with_key_range(add: Add, (first, last): &(String, String)) -> Add {
    let mut tags = add.tags.clone().unwrap_or_default();
    tags.insert(KEY_MIN_TAG.to_owned(), Some(first.clone()));
    tags.insert(KEY_MAX_TAG.to_owned(), Some(last.clone()));
    Add {
        tags: Some(tags),
        ..add
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
