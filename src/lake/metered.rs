//! An object store that counts its requests and failures by operation, for
//! `pg2lake_object_store_requests_total` and `pg2lake_object_store_errors_total`.
//!
//! ```text
//!  Delta log / Parquet writer ─► MeteredStore ─► S3 or local folder
//!                                  count op, and its failure
//! ```
//!
//! What counts as a failure: an error the caller sees after the store's own retries
//! (the S3 client retries throttling, 5xx and connection errors itself, with backoff).
//! Answers that are part of normal operation are not failures: not found (probing for a
//! checkpoint or a table), already exists and precondition failed (a create-only put that
//! lost a race, which is how Delta detects a concurrent commit), not modified.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

use crate::metrics;

/// Counts the requests of `inner`.
#[derive(Debug)]
pub struct MeteredStore<T> {
    inner: T,
}

impl<T> MeteredStore<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        MeteredStore { inner }
    }
}

impl<T: fmt::Display> fmt::Display for MeteredStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metered({})", self.inner)
    }
}

/// Whether `error` is an answer of normal operation rather than a failed request.
fn is_expected(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    )
}

/// Counts one request of `op` and, if it failed unexpectedly, one error.
fn record<R>(op: &str, result: &Result<R>) {
    let metrics = metrics::global();
    metrics.object_store_requests.with_label_values(&[op]).inc();
    if let Err(error) = result
        && !is_expected(error)
    {
        metrics.object_store_errors.with_label_values(&[op]).inc();
    }
}

#[async_trait]
impl<T: ObjectStore> ObjectStore for MeteredStore<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await;
        record("put", &result);
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let result = self.inner.put_multipart_opts(location, opts).await;
        record("multipart_start", &result);
        Ok(Box::new(MeteredUpload { inner: result? }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let result = self.inner.get_opts(location, options).await;
        record("get", &result);
        result
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let result = self.inner.get_ranges(location, ranges).await;
        record("get", &result);
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner
            .delete_stream(locations)
            .inspect(|result| record("delete", result))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        // One count per listing (and per failed page), not per object listed.
        let mut first = true;
        self.inner
            .list(prefix)
            .inspect(move |result| {
                if std::mem::take(&mut first) || result.is_err() {
                    record("list", result);
                }
            })
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let mut first = true;
        self.inner
            .list_with_offset(prefix, offset)
            .inspect(move |result| {
                if std::mem::take(&mut first) || result.is_err() {
                    record("list", result);
                }
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let result = self.inner.list_with_delimiter(prefix).await;
        record("list", &result);
        result
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let result = self.inner.copy_opts(from, to, options).await;
        record("copy", &result);
        result
    }
}

/// A multipart upload whose parts and completion are counted.
#[derive(Debug)]
struct MeteredUpload {
    inner: Box<dyn MultipartUpload>,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.inner.put_part(data);
        Box::pin(async move {
            let result = part.await;
            record("multipart_part", &result);
            result
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await;
        record("multipart_complete", &result);
        result
    }

    async fn abort(&mut self) -> Result<()> {
        let result = self.inner.abort().await;
        record("multipart_abort", &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    fn count(op: &str) -> (u64, u64) {
        let metrics = metrics::global();
        (
            metrics.object_store_requests.with_label_values(&[op]).get(),
            metrics.object_store_errors.with_label_values(&[op]).get(),
        )
    }

    #[tokio::test]
    async fn requests_are_counted_and_only_real_failures_are_errors() {
        let store = MeteredStore::new(InMemory::new());
        let path = Path::from("metered/a");
        let (puts, put_errors) = count("put");
        let (gets, get_errors) = count("get");
        store
            .put(&path, PutPayload::from_static(b"x"))
            .await
            .unwrap();
        store.get(&path).await.unwrap();
        // Not found is an answer, not a failure.
        assert!(store.get(&Path::from("metered/missing")).await.is_err());
        // A create-only put that finds the object is how commits detect a race.
        let create = PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        assert!(
            store
                .put_opts(&path, PutPayload::from_static(b"y"), create)
                .await
                .is_err()
        );
        // Other tests share the global metrics: compare at least, not exactly.
        let (puts_now, put_errors_now) = count("put");
        let (gets_now, get_errors_now) = count("get");
        assert!(puts_now >= puts + 2);
        assert!(gets_now >= gets + 2);
        assert_eq!(put_errors_now, put_errors);
        assert_eq!(get_errors_now, get_errors);
        let listed: Vec<_> = store.list(Some(&Path::from("metered"))).collect().await;
        assert_eq!(listed.len(), 1);
    }
}
