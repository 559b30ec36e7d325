//! TLS on a connection: mutual authentication with certificates of one authority (rustls,
//! TLS 1.3 only), and the value that binds the cohort handshake to the TLS session.

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
#[cfg(feature = "tls")]
use tokio_rustls::rustls::crypto::aws_lc_rs;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::pki_types::pem::PemObject;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
#[cfg(feature = "tls")]
use tokio_rustls::rustls::server::WebPkiClientVerifier;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, RootCertStore, ServerConfig, version,
};
#[cfg(feature = "tls")]
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::Error;

/// The ALPN protocol both sides offer: a TLS endpoint of another protocol fails the handshake
/// instead of reading cohort frames.
#[cfg(feature = "tls")]
const ALPN: &[u8] = b"cohort/1";

/// The exporter label of the handshake binding (RFC 5705 / RFC 8446 section 7.5).
#[cfg(feature = "tls")]
const BINDING_LABEL: &[u8] = b"EXPORTER-cohort-wire-v1 handshake binding";

/// The length of the handshake binding.
pub(crate) const BINDING_LEN: usize = 32;

/// TLS for a listener and the connections it dials: this endpoint's certificate and key, and
/// the authority that signs every certificate of the cohort. Mutual: each side presents its
/// certificate and checks the other's, so a listener with TLS accepts only peers whose
/// certificate the authority signed, and a client checks that the server's certificate names
/// the address it dialled (an IP address or DNS name among its subject alternative names).
///
/// With TLS the frames after the handshake are encrypted and integrity-protected. A shared
/// token may be used as well; its proofs then also cover a value exported from the TLS session,
/// so that a proof cannot be relayed into another session. Cheap to clone.
///
/// Built without the `tls` feature, it cannot be made: its constructors say so.
#[derive(Clone)]
pub struct TlsConfig {
    #[cfg(feature = "tls")]
    server: Arc<ServerConfig>,
    #[cfg(feature = "tls")]
    client: Arc<ClientConfig>,
    #[cfg(not(feature = "tls"))]
    never: std::convert::Infallible,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads PEM files: `cert` (this endpoint's certificate, then any intermediates), `key` (its
    /// private key: PKCS#8, SEC1 or PKCS#1) and `ca` (the authority's certificate, or several).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the file and what is wrong with it.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        ca: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                invalid(format!(
                    "cannot read the TLS {what} {}: {e}",
                    path.display()
                ))
            })
        };
        let (cert, key, ca) = (cert.as_ref(), key.as_ref(), ca.as_ref());
        Self::build(
            (&read("certificate", cert)?, &cert.display().to_string()),
            (&read("key", key)?, &key.display().to_string()),
            (&read("authority", ca)?, &ca.display().to_string()),
        )
    }

    /// As [`from_pem_files`](Self::from_pem_files), from PEM text in memory.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] saying which of the three is wrong.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, Error> {
        Self::build((cert, "(certificate)"), (key, "(key)"), (ca, "(authority)"))
    }

    #[cfg(not(feature = "tls"))]
    fn build(_: (&[u8], &str), _: (&[u8], &str), _: (&[u8], &str)) -> Result<Self, Error> {
        Err(invalid(
            "this build of cohort-wire has no TLS (its `tls` feature is off)".to_owned(),
        ))
    }

    #[cfg(feature = "tls")]
    fn build(
        (cert, cert_name): (&[u8], &str),
        (key, key_name): (&[u8], &str),
        (ca, ca_name): (&[u8], &str),
    ) -> Result<Self, Error> {
        let chain = certificates(cert, cert_name, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
            invalid(format!(
                "the TLS key {key_name} holds no usable private key ({e}); give the PEM key \
                 that goes with the certificate"
            ))
        })?;
        let mut roots = RootCertStore::empty();
        for authority in certificates(ca, ca_name, "authority")? {
            roots.add(authority).map_err(|e| {
                invalid(format!(
                    "the TLS authority {ca_name} holds a certificate that cannot be used as one: {e}"
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(aws_lc_rs::default_provider());
        let tls_error = |what: &str, e: rustls::Error| {
            invalid(format!(
                "cannot set up TLS with {cert_name}, {key_name} and {ca_name}: {what}: {e}"
            ))
        };

        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| {
                    invalid(format!(
                        "cannot check client certificates against {ca_name}: {e}"
                    ))
                })?;
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&version::TLS13])
            .map_err(|e| tls_error("TLS 1.3", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_error("the certificate and key do not go together", e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&version::TLS13])
            .map_err(|e| tls_error("TLS 1.3", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error("the certificate and key do not go together", e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig { reason }
}

#[cfg(feature = "tls")]
fn certificates(pem: &[u8], name: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("the TLS {what} {name} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "the TLS {what} {name} holds no certificate (no \"BEGIN CERTIFICATE\" block)"
        )));
    }
    Ok(certs)
}

/// The stream a connection runs over: the raw byte stream, or TLS on top of it.
pub(crate) enum Transport<S> {
    Plain(S),
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream<S>>),
}

impl<S> Transport<S> {
    /// A value both sides of a TLS session derive from it and nobody else can: none without
    /// TLS.
    #[cfg(not(feature = "tls"))]
    pub(crate) fn binding(&self) -> Option<[u8; BINDING_LEN]> {
        None
    }

    /// Whether the stream runs TLS: never without the feature.
    #[cfg(not(feature = "tls"))]
    pub(crate) fn is_tls(&self) -> bool {
        false
    }

    /// A value both sides of a TLS session derive from it and nobody else can: the cohort
    /// handshake's proofs cover it. `None` without TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn binding(&self) -> Option<[u8; BINDING_LEN]> {
        let Transport::Tls(stream) = self else {
            return None;
        };
        let out = [0u8; BINDING_LEN];
        // Fails only before the handshake completed, which never happens here.
        match stream.as_ref() {
            TlsStream::Client(s) => s
                .get_ref()
                .1
                .export_keying_material(out, BINDING_LABEL, None),
            TlsStream::Server(s) => s
                .get_ref()
                .1
                .export_keying_material(out, BINDING_LABEL, None),
        }
        .ok()
    }

    #[cfg(feature = "tls")]
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Transport<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Transport<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The server side of the TLS handshake.
#[cfg(not(feature = "tls"))]
pub(crate) async fn accept<S>(config: &TlsConfig, _: S, _: &str) -> Result<Transport<S>, Error> {
    match config.never {}
}

/// The client side of the TLS handshake.
#[cfg(not(feature = "tls"))]
pub(crate) async fn connect<S>(
    config: &TlsConfig,
    _: S,
    _: &str,
    _: &str,
) -> Result<Transport<S>, Error> {
    match config.never {}
}

/// The TLS failure an IO error carries: none without TLS.
#[cfg(not(feature = "tls"))]
pub(crate) fn failure_in(_: &str, _: &io::Error) -> Option<Error> {
    None
}

/// The server side of the TLS handshake.
#[cfg(feature = "tls")]
pub(crate) async fn accept<S>(
    config: &TlsConfig,
    stream: S,
    peer: &str,
) -> Result<Transport<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = TlsAcceptor::from(Arc::clone(&config.server))
        .accept(stream)
        .await
        .map_err(|e| failed(peer, None, &e))?;
    Ok(Transport::Tls(Box::new(TlsStream::Server(stream))))
}

/// The client side of the TLS handshake with the server reached as `dialled` (`HOST:PORT`, as
/// given: its host must be among the server certificate's names).
#[cfg(feature = "tls")]
pub(crate) async fn connect<S>(
    config: &TlsConfig,
    stream: S,
    peer: &str,
    dialled: &str,
) -> Result<Transport<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let host = host_of(dialled);
    let name = ServerName::try_from(host.to_owned()).map_err(|_| {
        invalid(format!(
            "cannot check the TLS certificate of {dialled}: {host:?} is neither an IP address \
             nor a DNS name; dial HOST:PORT"
        ))
    })?;
    let stream = TlsConnector::from(Arc::clone(&config.client))
        .connect(name, stream)
        .await
        .map_err(|e| failed(peer, Some(host), &e))?;
    Ok(Transport::Tls(Box::new(TlsStream::Client(stream))))
}

/// The host of `HOST:PORT` (brackets of an IPv6 address removed); the whole text without a
/// port.
#[cfg(feature = "tls")]
fn host_of(address: &str) -> &str {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => address,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The TLS failure an IO error of a TLS stream carries (an alert the peer sent after the client
/// finished its side of the handshake, say), if any.
#[cfg(feature = "tls")]
pub(crate) fn failure_in(peer: &str, e: &io::Error) -> Option<Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(|_| failed(peer, None, e))
}

/// A failed TLS handshake, in words that say what to fix. `host` is the name the client
/// checked the server's certificate against (on the client side).
#[cfg(feature = "tls")]
fn failed(peer: &str, host: Option<&str>, e: &io::Error) -> Error {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let reason = match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "its certificate is not signed by this side's authority (--tls-ca): give both \
                 sides certificates of the same authority"
                    .to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "its certificate is not valid for {}: issue it for the address others dial \
                     (cohort certs NAME --host {})",
                    host.unwrap_or("the address dialled"),
                    host.unwrap_or("HOST")
                )
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                format!("its certificate is outside its validity period ({cert:?}): renew it")
            }
            other => format!("its certificate was refused: {other:?}"),
        },
        Some(rustls::Error::NoCertificatesPresented) => {
            "it presented no certificate: give it --tls-cert and --tls-key too (mutual TLS)"
                .to_owned()
        }
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "it refused this side's certificate or settings ({alert:?}): check that both sides \
             use certificates of the same authority, and that this side's is valid"
        ),
        Some(rustls::Error::InvalidMessage(_)) => {
            "it does not speak TLS: give every coordinator, node and CLI the same --tls-* \
             options (or none)"
                .to_owned()
        }
        Some(rustls::Error::NoApplicationProtocol) => {
            "it is a TLS endpoint of another protocol than cohort: check the address".to_owned()
        }
        Some(other) => other.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "it closed the connection during the TLS handshake (does it use TLS?)".to_owned()
        }
        None => e.to_string(),
    };
    Error::Tls {
        peer: peer.to_owned(),
        reason,
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_dialled_addresses() {
        assert_eq!(host_of("10.0.0.5:7411"), "10.0.0.5");
        assert_eq!(host_of("coord-1.example.com:7411"), "coord-1.example.com");
        assert_eq!(host_of("[fd00::1]:7411"), "fd00::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn unusable_pem_is_a_clear_configuration_error() {
        let err = TlsConfig::from_pem(b"not pem", b"", b"").unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");
        let err = TlsConfig::from_pem_files("/nonexistent/c.pem", "k", "ca").unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot read the TLS certificate /nonexistent/c.pem"),
            "{err}"
        );
    }
}
