//! Where things live in the lake: `<lake>/<schema>/<table>/`, partitions `date=YYYY-MM-DD/`.

use url::Url;

/// The location of the Delta table that mirrors the Postgres table `schema.table`.
///
/// Names are used as single path segments; `Url::join` percent-encodes what a URL needs,
/// and a `/` inside a Postgres identifier is replaced so it cannot create a subfolder.
pub fn table_location(root: &Url, schema: &str, table: &str) -> Url {
    let mut url = root.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        segments.push(&segment(schema));
        segments.push(&segment(table));
    }
    url
}

fn segment(name: &str) -> String {
    name.replace('/', "_")
}

/// The Delta `txn` application id of a pg2lake deployment: one per replication slot,
/// because the slot is what the recorded LSNs are positions of.
pub fn app_id(slot: &str) -> String {
    format!("pg2lake:{slot}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_location_appends_schema_and_table() {
        let root = Url::parse("s3://bucket/prefix/").unwrap();
        assert_eq!(
            table_location(&root, "public", "orders").as_str(),
            "s3://bucket/prefix/public/orders"
        );
        let root = Url::parse("file:///tmp/lake").unwrap();
        assert_eq!(
            table_location(&root, "Sales", "a/b").as_str(),
            "file:///tmp/lake/Sales/a_b"
        );
    }

    #[test]
    fn app_id_names_the_slot() {
        assert_eq!(app_id("pg2lake"), "pg2lake:pg2lake");
    }
}
