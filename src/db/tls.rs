//! TLS to Postgres through rustls, with libpq's meaning of `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and none of the file options, so they are taken
//! out of the connection string here (URL and `key=value` forms) and applied in the rustls configuration:
//! - `disable`: plain TCP; `prefer` (the default): TLS if the server offers it, unverified, else plain;
//! - `require`: TLS, unverified (like libpq: encryption without authentication), unless `sslrootcert` is
//!   given, which makes it `verify-ca`, as in libpq;
//! - `verify-ca`: the chain must lead to `sslrootcert`; `verify-full`: and the name must match the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

/// The TLS connector every connection uses (with `sslmode = disable` it is never asked to connect).
pub(crate) type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` (`allow` is not supported: tokio-postgres cannot try plain TCP first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified; else plain TCP.
    #[default]
    Prefer,
    /// TLS, unverified (verified against `sslrootcert` when one is given).
    Require,
    /// TLS; the server's chain must lead to `sslrootcert`.
    VerifyCa,
    /// TLS; the chain must lead to `sslrootcert` and the certificate name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, TlsError> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(TlsError::Mode(other.to_owned())),
        }
    }
}

/// The TLS options of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    pub(crate) mode: Option<SslMode>,
    pub(crate) root_cert: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

impl TlsOptions {
    /// `self`, with what it lacks taken from `other`.
    pub(crate) fn or(self, other: TlsOptions) -> TlsOptions {
        TlsOptions {
            mode: self.mode.or(other.mode),
            root_cert: self.root_cert.or(other.root_cert),
            cert: self.cert.or(other.cert),
            key: self.key.or(other.key),
        }
    }

    /// The mode in effect: `prefer` by default, and `require` with a root certificate is `verify-ca`.
    pub(crate) fn effective_mode(&self) -> SslMode {
        match self.mode.unwrap_or_default() {
            SslMode::Require if self.root_cert.is_some() => SslMode::VerifyCa,
            mode => mode,
        }
    }

    /// tokio-postgres's mode for [`TlsOptions::effective_mode`].
    pub(crate) fn postgres_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self.effective_mode() {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// An unknown `sslmode`.
    #[error("sslmode {0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    /// A verifying mode without a root certificate.
    #[error("sslmode={0} needs sslrootcert (a PEM file of the CA that signed the server's certificate)")]
    NoRootCert(&'static str),
    /// A certificate or key file could not be read.
    #[error("cannot read {what} {path}: {reason}")]
    File {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Only one of `sslcert` and `sslkey`.
    #[error("sslcert and sslkey must be given together")]
    HalfClientCert,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The connection string does not parse.
    #[error("the connection string is malformed: {0}")]
    Malformed(String),
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn take(options: &mut TlsOptions, key: &str, value: &str) -> Result<(), TlsError> {
    match key {
        "sslmode" => options.mode = Some(SslMode::parse(value)?),
        "sslrootcert" => options.root_cert = Some(value.into()),
        "sslcert" => options.cert = Some(value.into()),
        _ => options.key = Some(value.into()),
    }
    Ok(())
}

/// Takes the TLS options out of a connection string (a `postgres://` URL or libpq `key=value` pairs): the
/// string tokio-postgres can parse, and the options.
pub(crate) fn split(connection: &str) -> Result<(String, TlsOptions), TlsError> {
    let mut options = TlsOptions::default();
    let trimmed = connection.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_owned(), options));
        };
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| TlsError::Malformed(e.to_string()))?;
        let mut rest = Vec::new();
        for (key, value) in pairs {
            if TLS_KEYS.contains(&key.as_str()) {
                take(&mut options, &key, &value)?;
            } else {
                rest.push((key, value));
            }
        }
        let query = serde_urlencoded::to_string(&rest).map_err(|e| TlsError::Malformed(e.to_string()))?;
        let url = if query.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{query}")
        };
        return Ok((url, options));
    }
    let mut rest = Vec::new();
    for (key, value) in key_values(trimmed)? {
        if TLS_KEYS.contains(&key.as_str()) {
            take(&mut options, &key, &value)?;
        } else {
            rest.push(key_value(&key, &value));
        }
    }
    Ok((rest.join(" "), options))
}

/// One libpq `key='value'` pair, the value quoted.
pub(crate) fn key_value(key: &str, value: &str) -> String {
    format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// libpq `key=value` pairs: spaces around `=` allowed, values in single quotes with `\` escapes.
fn key_values(text: &str) -> Result<Vec<(String, String)>, TlsError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(TlsError::Malformed(format!("{key:?} has no '='")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(
                        chars
                            .next()
                            .ok_or_else(|| TlsError::Malformed("a trailing '\\'".into()))?,
                    ),
                    Some(c) => value.push(c),
                    None => return Err(TlsError::Malformed(format!("the value of {key:?} is not closed"))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(
                        chars
                            .next()
                            .ok_or_else(|| TlsError::Malformed("a trailing '\\'".into()))?,
                    );
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The rustls connector for `options`.
pub(crate) fn connector(options: &TlsOptions) -> Result<Tls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let mode = options.effective_mode();
    let roots = || -> Result<Arc<RootCertStore>, TlsError> {
        let name = if mode == SslMode::VerifyFull {
            "verify-full"
        } else {
            "verify-ca"
        };
        let path = options.root_cert.as_deref().ok_or(TlsError::NoRootCert(name))?;
        let mut store = RootCertStore::empty();
        for cert in read_certs("sslrootcert", path)? {
            store.add(cert).map_err(|e| TlsError::File {
                what: "sslrootcert",
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(Arc::new(store))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Unverified(provider)),
        SslMode::VerifyCa => Arc::new(AnyName(
            WebPkiServerVerifier::builder_with_provider(roots()?, provider)
                .build()
                .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?,
        )),
        SslMode::VerifyFull => WebPkiServerVerifier::builder_with_provider(roots()?, provider)
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?,
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let config = match (&options.cert, &options.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs("sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                what: "sslkey",
                path: key.display().to_string(),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => return Err(TlsError::HalfClientCert),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `prefer` and `require`: the handshake's signatures are checked, the certificate is not (libpq's meaning).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is verified, the host name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_come_out_of_urls_and_the_rest_stays() {
        let (url, options) = split(
            "postgres://u:p%40ss@db.example:5433/app?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p%40ss@db.example:5433/app?application_name=x");
        assert_eq!(options.mode, Some(SslMode::VerifyFull));
        assert_eq!(options.root_cert, Some(PathBuf::from("/ca.pem")));
        let (url, options) = split("postgresql://db/app?sslmode=require").unwrap();
        assert_eq!(
            (url.as_str(), options.mode),
            ("postgresql://db/app", Some(SslMode::Require))
        );
        assert!(url.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn tls_options_come_out_of_key_value_strings_with_quoting_kept() {
        let (rest, options) = split(
            r"host=localhost port = 5433 password='it\'s' sslmode=verify-ca sslcert='/a b/c.pem' sslkey=/k.pem dbname=x",
        )
        .unwrap();
        assert_eq!(options.mode, Some(SslMode::VerifyCa));
        assert_eq!(options.cert, Some(PathBuf::from("/a b/c.pem")));
        assert_eq!(options.key, Some(PathBuf::from("/k.pem")));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's"[..]));
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(config.get_dbname(), Some("x"));
    }

    #[test]
    fn modes_follow_libpq() {
        assert!(matches!(split("host=h sslmode=allow"), Err(TlsError::Mode(_))));
        let require_with_root = TlsOptions {
            mode: Some(SslMode::Require),
            root_cert: Some("/ca.pem".into()),
            ..TlsOptions::default()
        };
        assert_eq!(require_with_root.effective_mode(), SslMode::VerifyCa);
        assert_eq!(TlsOptions::default().effective_mode(), SslMode::Prefer);
        let full = TlsOptions {
            mode: Some(SslMode::VerifyFull),
            ..TlsOptions::default()
        };
        assert!(matches!(connector(&full), Err(TlsError::NoRootCert("verify-full"))));
        let half = TlsOptions {
            cert: Some("/c.pem".into()),
            ..TlsOptions::default()
        };
        assert!(matches!(connector(&half), Err(TlsError::HalfClientCert)));
    }
}
