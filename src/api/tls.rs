//! Which certificate authorities the client trusts, and what to tell the operator when a server's
//! certificate is refused.
//!
//! reqwest verifies with `rustls-platform-verifier`, which on Linux reads the system's CA store
//! through `rustls-native-certs`: `/etc/ssl/certs` and the like, or only the file named by
//! `SSL_CERT_FILE` (and the directories in `SSL_CERT_DIR`) when that is set, as OpenSSL does.
//! `api.ca_file` adds its certificates on top of that store (`tls_certs_merge`). Both files are
//! read and checked here, at start, so a typo fails the start naming the setting instead of
//! surfacing later as "certificate not trusted" — or, for `SSL_CERT_FILE`, as an empty store.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{ConfigError, Settings};

/// The CA certificates of `api.ca_file` (none when unset), checked to be usable trust anchors.
pub fn ca_file_roots(settings: &Settings) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    match &settings.api.ca_file {
        None => Ok(Vec::new()),
        Some(path) => read_ca_bundle(path).map_err(|m| ConfigError::invalid("api.ca_file", m)),
    }
}

/// Checks the bundle named by `SSL_CERT_FILE`, if set: it replaces the system's CA store, so an
/// unreadable one would leave the daemon trusting nothing (or only `api.ca_file`).
pub fn check_ssl_cert_file() -> Result<(), ConfigError> {
    match std::env::var_os("SSL_CERT_FILE") {
        None => Ok(()),
        Some(path) => read_ca_bundle(Path::new(&path))
            .map(drop)
            .map_err(|m| ConfigError::invalid("SSL_CERT_FILE", m)),
    }
}

/// Reads a PEM file of one or more CA certificates; anything else in it (comments, text dumps
/// as `openssl x509 -text` writes them) is skipped, as OpenSSL does.
fn read_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| {
            format!(
                "{}: certificate {} is not valid PEM: {e}",
                path.display(),
                i + 1
            )
        })?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| {
                format!(
                    "{}: certificate {} is not a usable CA certificate: {e}",
                    path.display(),
                    i + 1
                )
            })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// What was wrong with a server's certificate, and what to do about it, when that is why a
/// request failed: `(reason, hint)`.
pub fn certificate_problem(
    e: &(dyn std::error::Error + 'static),
) -> Option<(String, &'static str)> {
    let cert = find_certificate_error(e)?;
    use rustls::CertificateError as C;
    let hint = match &cert {
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "check this machine's clock; if it is right, the server's certificate is out of date"
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "the certificate is for another name: check api.base_url, or whether a proxy intercepts TLS (then trust its CA with api.ca_file)"
        }
        _ => {
            "if a private CA or a TLS-inspecting proxy signs it, add that CA's certificate (PEM) with api.ca_file, or point SSL_CERT_FILE at a bundle that holds it, and restart"
        }
    };
    Some((cert.to_string(), hint))
}

/// Walks the error chain for rustls's verdict. hyper wraps it in an `io::Error`, whose
/// `source()` skips the wrapped error, so each `io::Error` is looked into as well.
fn find_certificate_error(
    e: &(dyn std::error::Error + 'static),
) -> Option<rustls::CertificateError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::InvalidCertificate(c)) = err.downcast_ref::<rustls::Error>() {
            return Some(c.clone());
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(c) = find_certificate_error(inner)
        {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_must_hold_usable_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(
            read_ca_bundle(&missing)
                .unwrap_err()
                .contains("cannot read")
        );
        let text = dir.path().join("text.pem");
        std::fs::write(&text, "not a certificate\n").unwrap();
        assert!(
            read_ca_bundle(&text)
                .unwrap_err()
                .contains("holds no PEM certificate")
        );
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(
            read_ca_bundle(&broken)
                .unwrap_err()
                .contains("certificate 1")
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(
            read_ca_bundle(&garbage)
                .unwrap_err()
                .contains("not a usable CA certificate")
        );
    }

    #[test]
    fn the_certificate_verdict_is_found_inside_io_errors() {
        let rustls_error =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let (reason, hint) = certificate_problem(&io).expect("found");
        assert!(reason.contains("UnknownIssuer"), "{reason}");
        assert!(hint.contains("api.ca_file") && hint.contains("SSL_CERT_FILE"));
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(certificate_problem(&other).is_none());
    }
}
