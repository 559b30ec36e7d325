//! The `--tls-cert`, `--tls-key` and `--tls-ca` options of every command that listens or
//! connects.

use std::path::PathBuf;

use cohort_wire::TlsConfig;

use crate::cli::failure::Failure;

/// Mutual TLS: this process's certificate and key, and the authority every certificate of the
/// cohort is signed by.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TlsArgs {
    /// This process's certificate (PEM). With --tls-key and --tls-ca, every connection uses
    /// mutual TLS: the recommended mode across hosts (`cohort certs` makes the files).
    #[arg(
        long,
        value_name = "PEM",
        env = "COHORT_TLS_CERT",
        requires_all = ["tls_key", "tls_ca"],
        help_heading = "TLS"
    )]
    pub(crate) tls_cert: Option<PathBuf>,

    /// This process's private key (PEM).
    #[arg(
        long,
        value_name = "PEM",
        env = "COHORT_TLS_KEY",
        requires_all = ["tls_cert", "tls_ca"],
        help_heading = "TLS"
    )]
    pub(crate) tls_key: Option<PathBuf>,

    /// The certificate authority (PEM) that signs the certificates of every coordinator, node
    /// and operator of the cohort.
    #[arg(
        long,
        value_name = "PEM",
        env = "COHORT_TLS_CA",
        requires_all = ["tls_cert", "tls_key"],
        help_heading = "TLS"
    )]
    pub(crate) tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS configuration, or `None` without the options.
    pub(crate) fn config(&self) -> anyhow::Result<Option<TlsConfig>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca)
        else {
            return Ok(None);
        };
        TlsConfig::from_pem_files(cert, key, ca)
            .map(Some)
            .map_err(|e| {
                Failure::usage(e.to_string())
                    .hint("`cohort certs NAME --host ADDRESS` makes a certificate and key signed by an authority in cohort-certs/")
                    .into()
            })
    }
}
