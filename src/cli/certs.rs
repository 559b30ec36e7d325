//! `cohort certs NAME`: a small certificate authority for mutual TLS between coordinators, nodes
//! and the CLI.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use cohort_object_api::Clock;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::cli::failure::{Code, Failure};
use crate::cli::output;

/// The subject of the authority this command creates; it is rebuilt, with the authority's key,
/// to issue each later certificate.
const CA_COMMON_NAME: &str = "cohort certificate authority";

/// Issue a certificate (and key) for one coordinator, node or operator, signed by the
/// certificate authority in --dir, which is created on first use.
///
/// Every process of a cohort then runs with its own --tls-cert DIR/NAME.pem and --tls-key
/// DIR/NAME.key, and --tls-ca DIR/ca.pem: each side presents its certificate and checks the
/// other's against the authority (mutual TLS). Give every address and DNS name others use to
/// reach the process as --host (a coordinator's or node's advertised address); the CLI's
/// certificate needs none. Keys are written readable by their owner only; keep ca.key off the
/// hosts, since whoever holds it can issue certificates. Certificates made elsewhere (openssl,
/// a company CA) work as well: PEM files, keys in PKCS#8, SEC1 or PKCS#1.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 written; 2 usage or IO error (a file that exists, a bad --host).

Examples:
  cohort certs --dir certs coordinator-1 --host 10.0.0.5 --host coord-1.example.com
  cohort certs --dir certs node-1 --host 10.0.0.21
  cohort certs --dir certs operator")]
pub(crate) struct Args {
    /// The certificate's name: its file names (NAME.pem, NAME.key) and its common name.
    #[arg(value_name = "NAME")]
    name: String,

    /// Where the authority (ca.pem, ca.key) and the certificates live.
    #[arg(long, value_name = "DIR", default_value = "cohort-certs")]
    dir: PathBuf,

    /// An address or DNS name the certificate is valid for (repeat it).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,

    /// How long the certificate is valid, in days from today.
    #[arg(long, value_name = "DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,

    /// Replace NAME.pem and NAME.key if they exist.
    #[arg(long)]
    force: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let valid_name = !args.name.is_empty()
        && args.name.len() <= 64
        && args
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !args.name.starts_with('.');
    if !valid_name || args.name == "ca" {
        return Err(Failure::usage(format!(
            "certificate name {:?}: use 1-64 of [A-Za-z0-9._-], not starting with a dot, and not \"ca\"",
            args.name
        ))
        .into());
    }
    let sans = args
        .hosts
        .iter()
        .map(|h| san(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let cert_path = args.dir.join(format!("{}.pem", args.name));
    let key_path = args.dir.join(format!("{}.key", args.name));
    if !args.force {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(Failure::usage(format!("{} exists", path.display()))
                    .hint("pass --force to replace it, or pick another name")
                    .into());
            }
        }
    }

    let mut out = output::stdout();
    let (ca, created) = authority(&args.dir)?;
    if created {
        writeln!(
            out,
            "created the certificate authority {} (its key {} stays private: whoever holds it can issue certificates)",
            args.dir.join("ca.pem").display(),
            args.dir.join("ca.key").display()
        )?;
    }

    let key = KeyPair::generate().context("cannot generate a key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, args.name.clone());
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Both ends of a connection present one: a coordinator serves nodes, and a node dials it.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, args.days)?;
    let cert = params
        .signed_by(&key, &ca)
        .context("cannot sign the certificate")?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    writeln!(
        out,
        "issued {} for {} ({}), valid {} days; run with --tls-cert {} --tls-key {} --tls-ca {}",
        cert_path.display(),
        args.name,
        if args.hosts.is_empty() {
            "no host: a client certificate".to_owned()
        } else {
            args.hosts.join(", ")
        },
        args.days,
        cert_path.display(),
        key_path.display(),
        args.dir.join("ca.pem").display()
    )?;
    Ok(Code::Ok)
}

/// A subject alternative name: an IP address, or a DNS name.
fn san(host: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let not_a_host = || {
        Failure::usage(format!(
            "--host {host:?} is neither an IP address nor a DNS name"
        ))
    };
    // A DNS name, possibly a wildcard (`*.example.com`).
    let labels = host.strip_prefix("*.").unwrap_or(host);
    let valid = !labels.is_empty()
        && labels.len() <= 253
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(not_a_host().into());
    }
    let name = host.to_owned().try_into().map_err(|_| not_a_host())?;
    Ok(SanType::DnsName(name))
}

/// The authority's parameters: rebuilt the same each time, so that certificates issued later
/// name the same issuer as ca.pem's subject.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The authority of `dir`: loaded (its key), or created; and whether it was created.
fn authority(dir: &Path) -> anyhow::Result<(Issuer<'static, KeyPair>, bool)> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let pem = fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&pem).map_err(|e| {
                Failure::usage(format!("{} is not a usable key: {e}", key_path.display()))
            })?;
            Ok((Issuer::new(ca_params(), key), false))
        }
        (false, false) => {
            let key = KeyPair::generate().context("cannot generate the authority's key")?;
            let mut params = ca_params();
            set_validity(&mut params, 3650)?;
            let cert = params
                .self_signed(&key)
                .context("cannot sign the authority's certificate")?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            fs::write(&cert_path, cert.pem())
                .with_context(|| format!("cannot write {}", cert_path.display()))?;
            Ok((Issuer::new(params, key), true))
        }
        _ => Err(Failure::usage(format!(
            "{} holds one of ca.pem and ca.key but not the other",
            dir.display()
        ))
        .hint("restore the missing file, or use another --dir for a new authority")
        .into()),
    }
}

/// Valid from the start of today (UTC) to `days` later.
fn set_validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    // The command's one wall-clock read, at its edge.
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(Clock::system().wall_ms());
    let later = now + Duration::from_secs(u64::from(days) * 86_400);
    let (year, month, day) = date_of(now)?;
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = date_of(later)?;
    params.not_after = rcgen::date_time_ymd(year, month, day);
    Ok(())
}

/// The UTC calendar date `t` falls on.
fn date_of(t: SystemTime) -> anyhow::Result<(i32, u8, u8)> {
    // RFC 3339 starts with YYYY-MM-DD.
    let text = humantime::format_rfc3339_seconds(t).to_string();
    let field = |range: std::ops::Range<usize>| -> anyhow::Result<u32> {
        text.get(range)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("cannot read the date in {text}"))
    };
    Ok((
        i32::try_from(field(0..4)?)?,
        u8::try_from(field(5..7)?)?,
        u8::try_from(field(8..10)?)?,
    ))
}

/// Writes a private key, readable by its owner only, never over an existing file's mode.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
