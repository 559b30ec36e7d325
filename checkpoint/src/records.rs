//! Small create-only records under `groups/`, for the replication layer (fault-tolerance group
//! configurations, per-slot fencing epochs and fenced logs). This crate does not interpret them;
//! it only guarantees that keys stay inside `groups/` and that creates are create-if-absent,
//! with the same probe and error mapping as manifests.

use bytes::Bytes;
use object_store::{ObjectStore, PutMode, PutPayload};

use crate::error::{Error, Result};
use crate::keys;
use crate::store::CheckpointStore;

/// The folder that group records live under, relative to the store's prefix.
const GROUPS: &str = "groups";

/// Checks a record key relative to `groups/`: 1 to 8 `/`-separated tokens of 1-64
/// `[A-Za-z0-9_-]`, so that no key can leave `groups/`.
fn validate_key(key: &str) -> Result<()> {
    let parts: Vec<&str> = key.split('/').collect();
    if parts.len() > 8 {
        return Err(Error::InvalidInput(format!(
            "group record key {:?} has {} parts; at most 8",
            key.escape_debug().to_string(),
            parts.len()
        )));
    }
    parts
        .iter()
        .try_for_each(|part| keys::validate_token("group record key part", part))
}

impl CheckpointStore {
    /// Creates the record `groups/<key>` create-only: `Ok(true)` if this call created it,
    /// `Ok(false)` if it already existed (read it to learn whether it is yours, after a lost
    /// response). `key` is 1 to 8 `/`-separated tokens of `[A-Za-z0-9_-]`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad key, [`Error::ReadOnly`], and the store's errors
    /// ([`Error::Unavailable`] is retryable).
    pub async fn create_group_record(&self, key: &str, bytes: Bytes) -> Result<bool> {
        self.check_writable("create a group record")?;
        validate_key(key)?;
        let full = format!("{GROUPS}/{key}");
        let put = self
            .inner
            .store
            .put_opts(
                &self.inner.path(&full),
                PutPayload::from(bytes),
                PutMode::Create.into(),
            )
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.inner.map_err(format!("create {full}"), e)),
        }
    }

    /// Reads the record `groups/<key>`; `Ok(None)` if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad key, and the store's errors.
    pub async fn read_group_record(&self, key: &str) -> Result<Option<Bytes>> {
        validate_key(key)?;
        match self.inner.get(&format!("{GROUPS}/{key}")).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists the record keys under `groups/<dir>/`, relative to `groups/`, in no particular
    /// order. Keys that are not valid record keys (stray files) are left out.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad `dir`, and the store's errors.
    pub async fn list_group_records(&self, dir: &str) -> Result<Vec<String>> {
        validate_key(dir)?;
        let listed = self.inner.list(&format!("{GROUPS}/{dir}")).await?;
        Ok(listed
            .into_iter()
            .filter_map(|(key, _size)| {
                let rest = key.strip_prefix(GROUPS)?.strip_prefix('/')?;
                validate_key(rest).is_ok().then(|| rest.to_owned())
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_create_only_and_stay_under_groups() {
        let store = CheckpointStore::memory();
        let key = "g1/slots/0/00000000000000000001";
        assert!(
            store
                .create_group_record(key, Bytes::from_static(b"a"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .create_group_record(key, Bytes::from_static(b"b"))
                .await
                .unwrap()
        );
        let read = store.read_group_record(key).await.unwrap().unwrap();
        assert_eq!(&read[..], b"a");
        assert_eq!(store.read_group_record("g1/none").await.unwrap(), None);
        assert_eq!(
            store.list_group_records("g1/slots").await.unwrap(),
            vec![key.to_owned()]
        );
        assert!(store.list_group_records("g2").await.unwrap().is_empty());

        for bad in ["", "../x", "g1//x", "g1/x.y", "a/b/c/d/e/f/g/h/i"] {
            let err = store
                .create_group_record(bad, Bytes::new())
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn read_only_stores_refuse_records() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap();
        let store = CheckpointStore::open_read_only(url).await.unwrap();
        let err = store
            .create_group_record("g/config", Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    }
}
