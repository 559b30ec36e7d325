//! The behaviour suite (`cohort_checkpoint::testing::suite`) against every backend: memory,
//! local disk, and an S3-compatible server (s3s-fs, started by `scripts/with-s3.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch files uniquely"
)]

use cohort_checkpoint::testing::suite::{self, Capabilities};
use cohort_checkpoint::{CheckpointStore, Error, StoreOptions};

#[tokio::test]
async fn memory() {
    let store = CheckpointStore::open("memory://", StoreOptions::default())
        .await
        .unwrap();
    suite::run(&store, Capabilities::atomic()).await;
}

#[tokio::test]
async fn local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    suite::run(&store, Capabilities::atomic()).await;
}

/// The S3 URL of the test server, or `None` (with a note) when none was started. In CI a
/// missing server is a failure, never a silent skip.
fn s3_url() -> Option<String> {
    match std::env::var("COHORT_TEST_S3_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!(
            "COHORT_TEST_S3_URL is not set but CI is: run the tests through scripts/with-s3.sh"
        ),
        _ => {
            eprintln!(
                "skipped: COHORT_TEST_S3_URL is not set; run through scripts/with-s3.sh to test S3"
            );
            None
        }
    }
}

/// A unique prefix per test run under the server's bucket.
fn unique(url: &str, name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}/{name}-{}-{nanos}",
        url.trim_end_matches('/'),
        std::process::id()
    )
}

#[tokio::test]
async fn s3_compatible_server() {
    let Some(url) = s3_url() else { return };
    // s3s-fs honours If-None-Match one request at a time, so the probe passes; it does not make
    // two concurrent creates atomic, so racing writers are left to the local backends.
    let store = CheckpointStore::open(&unique(&url, "suite"), StoreOptions::default())
        .await
        .unwrap();
    suite::run(&store, Capabilities::single_writer()).await;
}

#[tokio::test]
async fn unreachable_endpoint_is_reported_as_unavailable() {
    let mut options = StoreOptions::default();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    options
        .config
        .insert("aws_endpoint".into(), "http://127.0.0.1:1".into());
    options
        .config
        .insert("aws_allow_http".into(), "true".into());
    options
        .config
        .insert("aws_access_key_id".into(), "k".into());
    options
        .config
        .insert("aws_secret_access_key".into(), "s".into());
    options
        .config
        .insert("aws_region".into(), "us-east-1".into());
    options.retry.max_retries = 1;
    let err = CheckpointStore::open("s3://bucket/prefix", options)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());
    let msg = err.to_string();
    assert!(msg.contains("http://127.0.0.1:1"), "{msg}");
}
