//! Stable storage for cohort: the checkpoint format (segments and manifests), the stores it
//! lives in (local disk, S3-compatible, memory), the atomic commit point, integrity checks and
//! retention.
