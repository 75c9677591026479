//! An object store that counts its requests and failures by operation, for
//! `pg2lake_object_store_requests_total` and `pg2lake_object_store_errors_total`, and an
//! HTTP connector under the S3 client that counts the attempts it retries, for
//! `pg2lake_object_store_retries_total`.
//!
//! ```text
//!  Delta log / Parquet writer ─► MeteredStore ─► S3 client ─► MeteredConnector ─► HTTP
//!                                  count op,      retries       count retryable
//!                                  and failure    with backoff  failed attempts
//! ```
//!
//! What counts as a failure: an error the caller sees after the store's own retries
//! (the S3 client retries throttling, 5xx and connection errors itself, with backoff).
//! What counts as a retry: an HTTP attempt that failed in a way the S3 client retries
//! (5xx such as S3's 503 Slow Down, 429, 408, a connection or timeout error); the last
//! attempt of a request whose retry budget is spent is counted too, and is also a failure.
//! Answers that are part of normal operation are not failures: not found (probing for a
//! checkpoint or a table), already exists and precondition failed (a create-only put that
//! lost a race, which is how Delta detects a concurrent commit), not modified.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpService, ReqwestConnector,
};
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
        if location.as_ref().ends_with("_delta_log/_last_checkpoint") {
            // A checkpoint's Parquet file is written; the pointer readers start from is not.
            crate::crash_point!("lake::checkpoint");
        }
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

/// Builds the S3 client's HTTP clients (object requests and credential fetches) so that
/// every attempt passes through [`MeteredHttp`].
#[derive(Debug, Default)]
pub struct MeteredConnector {
    inner: ReqwestConnector,
}

impl HttpConnector for MeteredConnector {
    fn connect(&self, options: &ClientOptions) -> Result<HttpClient> {
        let inner = self.inner.connect(options)?;
        Ok(HttpClient::new(MeteredHttp { inner }))
    }
}

/// One HTTP client of the S3 client; counts the attempts that will be retried.
#[derive(Debug)]
struct MeteredHttp {
    inner: HttpClient,
}

#[async_trait]
impl HttpService for MeteredHttp {
    async fn call(&self, request: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        let op = s3_op(&request);
        let result = self.inner.execute(request).await;
        let retryable = match &result {
            Ok(response) => status_is_retried(response.status().as_u16()),
            Err(error) => matches!(
                error.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            ),
        };
        if retryable {
            metrics::global()
                .object_store_retries
                .with_label_values(&[op])
                .inc();
        }
        result
    }
}

/// Whether the S3 client retries an answer with this status: server errors (S3 answers
/// throttling with 503 Slow Down), too many requests, request timeout.
fn status_is_retried(status: u16) -> bool {
    (500..600).contains(&status) || status == 429 || status == 408
}

/// The operation (a value of `OBJECT_STORE_OPS`, or `credentials`) an S3 HTTP request
/// performs, from its method, query and headers.
fn s3_op(request: &HttpRequest) -> &'static str {
    let query = request.uri().query().unwrap_or("");
    let has = |key: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key))
    };
    // STS (web identity, assume role) and the instance and container metadata endpoints.
    let host = request.uri().host().unwrap_or("");
    if has("Action") || host.starts_with("169.254.") || host.contains("fd00:ec2::254") {
        return "credentials";
    }
    match request.method().as_str() {
        "PUT" if request.headers().contains_key("x-amz-copy-source") => "copy",
        "PUT" if has("partNumber") => "multipart_part",
        "PUT" => "put",
        "POST" if has("uploads") => "multipart_start",
        "POST" if has("uploadId") => "multipart_complete",
        "POST" if has("delete") => "delete",
        "DELETE" if has("uploadId") => "multipart_abort",
        "DELETE" => "delete",
        "GET" if has("list-type") => "list",
        _ => "get",
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

    fn request(method: &str, uri: &str, copy: bool) -> HttpRequest {
        let mut request = HttpRequest::new(object_store::client::HttpRequestBody::empty());
        *request.method_mut() = method.parse().unwrap();
        *request.uri_mut() = uri.parse().unwrap();
        if copy {
            request.headers_mut().insert(
                "x-amz-copy-source",
                object_store::HeaderValue::from_static("/bucket/a"),
            );
        }
        request
    }

    #[test]
    fn s3_requests_are_named_by_the_operation_they_perform() {
        let base = "http://127.0.0.1:9000/bucket/lake/t/part-1.parquet";
        let cases = [
            ("PUT", base.to_owned(), false, "put"),
            ("PUT", base.to_owned(), true, "copy"),
            (
                "PUT",
                format!("{base}?partNumber=2&uploadId=x"),
                false,
                "multipart_part",
            ),
            ("POST", format!("{base}?uploads"), false, "multipart_start"),
            (
                "POST",
                format!("{base}?uploadId=x"),
                false,
                "multipart_complete",
            ),
            (
                "DELETE",
                format!("{base}?uploadId=x"),
                false,
                "multipart_abort",
            ),
            ("DELETE", base.to_owned(), false, "delete"),
            (
                "POST",
                "http://127.0.0.1:9000/bucket?delete".to_owned(),
                false,
                "delete",
            ),
            ("GET", base.to_owned(), false, "get"),
            ("HEAD", base.to_owned(), false, "get"),
            (
                "GET",
                "http://127.0.0.1:9000/bucket?list-type=2&prefix=lake%2F".to_owned(),
                false,
                "list",
            ),
            (
                "POST",
                "https://sts.amazonaws.com/?Action=AssumeRoleWithWebIdentity".to_owned(),
                false,
                "credentials",
            ),
            (
                "PUT",
                "http://169.254.169.254/latest/api/token".to_owned(),
                false,
                "credentials",
            ),
        ];
        for (method, uri, copy, op) in cases {
            assert_eq!(s3_op(&request(method, &uri, copy)), op, "{method} {uri}");
        }
    }

    #[test]
    fn only_answers_the_s3_client_retries_are_retries() {
        for status in [500, 502, 503, 504, 429, 408] {
            assert!(status_is_retried(status), "{status}");
        }
        for status in [200, 204, 304, 400, 403, 404, 409, 412] {
            assert!(!status_is_retried(status), "{status}");
        }
    }
}
