//! Object-store setup: a local folder or S3 (and S3-compatible stores) behind one `Lake`.
//!
//! deltalake-core knows only `file://` and `memory://` by itself. pg2lake builds the S3
//! store with object_store (standard AWS credential chain from the environment: keys,
//! profile, IRSA web identity) and registers the plain conditional-put log store for
//! `s3://`: commits are `PUT … If-None-Match: *`, which S3 has supported natively since
//! 2024, so no DynamoDB lock table is needed.

use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use super::metered::{MeteredConnector, MeteredStore};
use deltalake_core::logstore::{
    LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore, logstore_factories,
};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

/// Where and how the lake is written; built from the `lake` config section.
#[derive(Debug, Clone)]
pub struct LakeOptions {
    /// A local path, `file://` URL or `s3://bucket/prefix`.
    pub url: String,
    /// S3 endpoint for S3-compatible stores (MinIO, moto, R2 …).
    pub endpoint: Option<String>,
    /// S3 region; the AWS chain's region when absent.
    pub region: Option<String>,
    /// Allow plain-HTTP endpoints (test servers).
    pub allow_http: bool,
    /// A Delta checkpoint every this many commits (`delta.checkpointInterval`).
    pub checkpoint_interval: u64,
    /// How long Delta log entries are kept after a checkpoint (`delta.logRetentionDuration`).
    pub log_retention: Duration,
    /// How long a removed data file stays for time travel before VACUUM deletes it
    /// (`delta.deletedFileRetentionDuration`).
    pub retention: Duration,
    /// Parquet files roll over at about this size.
    pub target_file_size: u64,
    /// Parquet files are sealed once they hold this many rows.
    pub target_file_rows: usize,
}

/// Errors from setting up or reaching the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The lake URL cannot be used.
    #[error("lake url {url:?} is not usable: {reason}")]
    InvalidUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The local lake folder cannot be created or written.
    #[error(
        "lake folder {path} is not writable: {source} (fix: create it and give the pg2lake user write access, or point lake.url elsewhere)"
    )]
    LocalNotWritable {
        /// The folder.
        path: PathBuf,
        /// The file-system error.
        #[source]
        source: std::io::Error,
    },
    /// The object store refused or failed a request.
    #[error("lake at {url} is not reachable or not writable: {source}")]
    Store {
        /// The lake URL.
        url: String,
        /// The object-store error.
        #[source]
        source: object_store::Error,
    },
    /// The store accepted a second create-only put of the same object, so concurrent
    /// commits could overwrite each other.
    #[error(
        "lake at {url} does not support conditional writes (If-None-Match); Delta commits would not be atomic (fix: use an S3-compatible store with conditional put support)"
    )]
    NoConditionalPut {
        /// The lake URL.
        url: String,
    },
    /// deltalake-core failed.
    #[error("delta table {table}: {source}")]
    Delta {
        /// The table location.
        table: String,
        /// The Delta error.
        #[source]
        source: Box<deltalake_core::DeltaTableError>,
    },
    /// A Delta table holds a txn version that is not a valid LSN.
    #[error("delta table {table} has an invalid pg2lake txn version {version}")]
    InvalidTxnVersion {
        /// The table location.
        table: String,
        /// The stored version.
        version: i64,
    },
    /// The lake table was written from a source table that has since been dropped and
    /// created again under the same name.
    #[error(
        "table {table} was dropped and created again since pg2lake began replicating it (relation oid {recorded}, now {current}): the lake table at {location} holds the old table's changes, and the new table's rows from before it joined the publication are not in it (fix: move that folder away, or delete it, and restart pg2lake to load the new table)"
    )]
    SourceReplaced {
        /// `schema.table`.
        table: String,
        /// The table location.
        location: String,
        /// The relation OID the lake table was created from.
        recorded: u32,
        /// The relation OID of the source table now.
        current: u32,
    },
    /// Another writer replaced files this commit removes (a compaction beside a widening
    /// rewrite, or two compactions): the work is redone from the new version.
    #[error("delta table {table}: a concurrent commit conflicts with this one: {reason}")]
    Conflict {
        /// The table location.
        table: String,
        /// What the other writer changed.
        reason: String,
    },
    /// A Delta table exists but was written with a different schema.
    #[error(
        "delta table {table} has a schema pg2lake cannot write to: {reason} (fix: point lake.url at a fresh location or drop that table's folder)"
    )]
    SchemaMismatch {
        /// The table location.
        table: String,
        /// The difference.
        reason: String,
    },
}

impl LakeError {
    pub(crate) fn delta(table: &Url, source: deltalake_core::DeltaTableError) -> Self {
        LakeError::Delta {
            table: table.to_string(),
            source: Box::new(source),
        }
    }

    /// Whether retrying later may succeed (network, throttling, a store that is down),
    /// as opposed to a configuration or data problem that needs a human.
    pub fn is_transient(&self) -> bool {
        match self {
            LakeError::Store { source, .. } => store_error_is_transient(source),
            LakeError::Conflict { .. } => true,
            LakeError::Delta { source, .. } => match source.as_ref() {
                deltalake_core::DeltaTableError::ObjectStore { source } => {
                    store_error_is_transient(source)
                }
                // Reading the log fails this way: the kernel's error holds the store's
                // without naming it as its source.
                deltalake_core::DeltaTableError::KernelError(delta_kernel::Error::ObjectStore(
                    source,
                )) => store_error_is_transient(source),
                deltalake_core::DeltaTableError::Io { .. } => true,
                // A log entry the loaded version still reads was deleted: `forget` ends
                // the history before an erasure there. The table loaded again reads from
                // the checkpoint it wrote.
                deltalake_core::DeltaTableError::InvalidVersion(_) => true,
                deltalake_core::DeltaTableError::Transaction { .. } => true,
                // A failed upload reaches here wrapped, e.g. as a Parquet error whose
                // source is the store's: what decides is the store error inside.
                other => store_error_within(other).is_some_and(store_error_is_transient),
            },
            _ => false,
        }
    }
}

/// The first object-store error in `err`'s chain of sources.
fn store_error_within<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a object_store::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(store) = err.downcast_ref::<object_store::Error>() {
            return Some(store);
        }
        // The Parquet writer hands store errors on inside an io::Error, whose source()
        // skips the error it wraps: look at that one too.
        if let Some(store) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<object_store::Error>())
        {
            return Some(store);
        }
        next = err.source();
    }
    None
}

fn store_error_is_transient(err: &object_store::Error) -> bool {
    !matches!(
        err,
        object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
    )
}

/// The lake: its root URL, the object store behind it and the table settings.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Url,
    store: ObjectStoreRef,
    options: LakeOptions,
}

impl Lake {
    /// Sets up the store for `options.url`. Local folders are created when missing; no
    /// request is sent to a remote store yet (see [`Lake::check_writable`]).
    pub fn open(options: LakeOptions) -> Result<Lake, LakeError> {
        let root = lake_root_url(&options.url)?;
        let store: ObjectStoreRef = match root.scheme() {
            "file" => {
                let path = root.to_file_path().map_err(|()| LakeError::InvalidUrl {
                    url: options.url.clone(),
                    reason: "not a local path".into(),
                })?;
                std::fs::create_dir_all(&path)
                    .map_err(|source| LakeError::LocalNotWritable { path, source })?;
                Arc::new(LocalFileSystem::new())
            }
            "s3" | "s3a" => {
                register_s3_log_store();
                Arc::new(s3_store(&root, &options)?)
            }
            other => {
                return Err(LakeError::InvalidUrl {
                    url: options.url.clone(),
                    reason: format!("unsupported scheme {other}: use a path, file:// or s3://"),
                });
            }
        };
        Ok(Lake {
            root,
            store: Arc::new(MeteredStore::new(store)),
            options,
        })
    }

    /// The lake's root URL (a local path is made absolute).
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The table settings of this lake.
    pub fn options(&self) -> &LakeOptions {
        &self.options
    }

    /// The log store of the Delta table at `location`, sharing this lake's object store.
    pub fn log_store(&self, location: &Url) -> Result<Arc<dyn LogStore>, LakeError> {
        deltalake_core::DeltaTableBuilder::from_url(location.clone())
            .map_err(|e| LakeError::delta(location, e))?
            .with_storage_backend(self.store.clone(), location.clone())
            .build_storage()
            .map_err(|e| LakeError::delta(location, e))
    }

    /// Whether a Delta table exists at `location`.
    pub async fn table_exists(&self, location: &Url) -> Result<bool, LakeError> {
        self.log_store(location)?
            .is_delta_table_location()
            .await
            .map_err(|e| LakeError::delta(location, e))
    }

    /// The latest version of the Delta table at `location`, for maintenance, which
    /// compacts, vacuums and counts files on one load.
    pub async fn load_table(
        &self,
        location: &Url,
    ) -> Result<deltalake_core::DeltaTable, LakeError> {
        let mut table = deltalake_core::DeltaTable::new(self.log_store(location)?);
        table
            .load()
            .await
            .map_err(|e| LakeError::delta(location, e))?;
        Ok(table)
    }

    /// The Delta tables of the lake named in `wanted` (`schema.name`), or all of them when
    /// it is empty (see [`Lake::tables`]).
    pub async fn tables_among(
        &self,
        wanted: &[String],
    ) -> Result<Vec<(String, String)>, LakeError> {
        let mut tables = self.tables().await?;
        if !wanted.is_empty() {
            tables.retain(|(schema, name)| wanted.contains(&format!("{schema}.{name}")));
        }
        Ok(tables)
    }

    /// The Delta tables in the lake, as `(schema, table)` folder names, sorted: every
    /// `<lake>/<schema>/<table>/` holding a `_delta_log`.
    pub async fn tables(&self) -> Result<Vec<(String, String)>, LakeError> {
        let store_err = |source| LakeError::Store {
            url: self.root.to_string(),
            source,
        };
        let root = self.root_path();
        let mut tables = Vec::new();
        let namespaces = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(store_err)?;
        for namespace in namespaces.common_prefixes {
            let Some(schema) = namespace.filename().map(str::to_owned) else {
                continue;
            };
            if schema.starts_with('_') {
                continue;
            }
            let folders = self
                .store
                .list_with_delimiter(Some(&namespace))
                .await
                .map_err(store_err)?;
            for folder in folders.common_prefixes {
                let Some(table) = folder.filename().map(str::to_owned) else {
                    continue;
                };
                let log = folder.clone().join("_delta_log");
                let first = self.store.list(Some(&log)).next().await;
                if first.transpose().map_err(store_err)?.is_some() {
                    tables.push((schema.clone(), table));
                }
            }
        }
        tables.sort();
        Ok(tables)
    }

    /// Proves the lake is reachable and writable, and that create-only puts are atomic:
    /// writes a probe object twice with `PutMode::Create` (the second must be refused),
    /// then deletes it. Touches no table.
    pub async fn check_writable(&self) -> Result<(), LakeError> {
        let probe = self.root_path().clone().join(format!(
            "_pg2lake_probe_{}",
            uuid::Uuid::new_v4().as_simple()
        ));
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let url = self.root.to_string();
        let store_err = |source| LakeError::Store {
            url: url.clone(),
            source,
        };
        self.store
            .put_opts(&probe, PutPayload::from_static(b"probe"), create.clone())
            .await
            .map_err(store_err)?;
        let second = self
            .store
            .put_opts(&probe, PutPayload::from_static(b"probe"), create)
            .await;
        let cleanup = self.store.delete(&probe).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Ok(_) => {
                return Err(LakeError::NoConditionalPut {
                    url: self.root.to_string(),
                });
            }
            Err(other) => return Err(store_err(other)),
        }
        cleanup.map_err(store_err)?;
        Ok(())
    }

    /// The lake root inside the store: the bucket-relative prefix on S3, the absolute
    /// path on a local file system (whose store is rooted at `/`).
    fn root_path(&self) -> Path {
        Path::from_url_path(self.root.path()).unwrap_or_default()
    }
}

/// Turns the configured lake location into an absolute URL ending without a slash.
fn lake_root_url(raw: &str) -> Result<Url, LakeError> {
    let invalid = |reason: String| LakeError::InvalidUrl {
        url: raw.to_owned(),
        reason,
    };
    if raw.trim().is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let url = match Url::parse(raw) {
        Ok(url) if url.scheme().len() > 1 => url,
        // A relative path, or a Windows drive letter parsed as a scheme.
        _ => {
            let path = absolute(FsPath::new(raw)).map_err(|e| invalid(e.to_string()))?;
            Url::from_directory_path(&path).map_err(|()| invalid("not an absolute path".into()))?
        }
    };
    if url.scheme() == "s3" && url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(
            "an s3 url needs a bucket: s3://bucket/prefix".into(),
        ));
    }
    let mut url = url;
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    Ok(url)
}

fn absolute(path: &FsPath) -> std::io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

fn s3_store(root: &Url, options: &LakeOptions) -> Result<object_store::aws::AmazonS3, LakeError> {
    let bucket = root.host_str().unwrap_or_default();
    // from_env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
    // AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN (IRSA), AWS_ENDPOINT_URL, …
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_http_connector(MeteredConnector::default());
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if options.allow_http {
        builder = builder.with_allow_http(true);
    }
    // Path-style requests work with every S3-compatible store; virtual-hosted style
    // stays the default on AWS itself.
    if options.endpoint.is_some() {
        builder = builder.with_config(AmazonS3ConfigKey::VirtualHostedStyleRequest, "false");
    }
    builder.build().map_err(|source| LakeError::Store {
        url: root.to_string(),
        source,
    })
}

#[derive(Debug, Default)]
struct S3LogStoreFactory;

impl LogStoreFactory for S3LogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_s3_log_store() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let factories = logstore_factories();
        for scheme in ["s3://", "s3a://"] {
            if let Ok(url) = Url::parse(scheme) {
                factories.insert(url, Arc::new(S3LogStoreFactory));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_file_urls() {
        let url = lake_root_url("./lake").unwrap();
        assert_eq!(url.scheme(), "file");
        assert!(url.path().ends_with("/lake"), "{url}");
        let url = lake_root_url("/tmp/x/").unwrap();
        assert_eq!(url.as_str(), "file:///tmp/x");
    }

    #[test]
    fn an_upload_that_failed_inside_the_parquet_writer_is_transient() {
        let url = Url::parse("s3://bucket/lake/public/t").unwrap();
        // As the Parquet writer wraps it: the store error inside an io::Error.
        let store = |source: object_store::Error| {
            LakeError::delta(
                &url,
                deltalake_core::DeltaTableError::Parquet {
                    source: parquet::errors::ParquetError::External(Box::new(
                        std::io::Error::other(source),
                    )),
                },
            )
        };
        let down = store(object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        });
        assert!(down.is_transient(), "{down}");
        let denied = store(object_store::Error::PermissionDenied {
            path: "x".into(),
            source: "403".into(),
        });
        assert!(!denied.is_transient(), "{denied}");
        let data = LakeError::delta(
            &url,
            deltalake_core::DeltaTableError::Parquet {
                source: parquet::errors::ParquetError::General("bad".into()),
            },
        );
        assert!(!data.is_transient(), "{data}");
    }

    #[test]
    fn a_log_read_that_failed_in_the_store_is_transient() {
        let url = Url::parse("s3://bucket/lake/public/t").unwrap();
        // As reading the log reports it (a list request during the store outage).
        let kernel = |source: object_store::Error| {
            LakeError::delta(
                &url,
                deltalake_core::DeltaTableError::KernelError(delta_kernel::Error::ObjectStore(
                    source,
                )),
            )
        };
        let down = kernel(object_store::Error::Generic {
            store: "S3",
            source: "error sending request".into(),
        });
        assert!(down.is_transient(), "{down}");
        let denied = kernel(object_store::Error::PermissionDenied {
            path: "x".into(),
            source: "403".into(),
        });
        assert!(!denied.is_transient(), "{denied}");
        let broken = LakeError::delta(
            &url,
            deltalake_core::DeltaTableError::KernelError(delta_kernel::Error::generic("bad log")),
        );
        assert!(!broken.is_transient(), "{broken}");
    }

    #[test]
    fn s3_urls_need_a_bucket() {
        assert!(lake_root_url("s3://bucket/prefix/").is_ok());
        assert!(lake_root_url("s3:///prefix").is_err());
        assert!(lake_root_url("").is_err());
    }

    #[tokio::test]
    async fn local_lake_is_writable_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(LakeOptions {
            url: dir.path().join("lake").display().to_string(),
            endpoint: None,
            region: None,
            allow_http: false,
            checkpoint_interval: 100,
            log_retention: Duration::from_secs(86400),
            retention: Duration::from_secs(86400),
            target_file_size: 1 << 20,
            target_file_rows: 1000,
        })
        .unwrap();
        lake.check_writable().await.unwrap();
    }
}
