//! TLS for the replication connection: rustls with the ring provider, with libpq's
//! meaning of each sslmode.
//!
//! | sslmode      | chain verified | host name verified |
//! |--------------|----------------|--------------------|
//! | prefer       | no             | no                 |
//! | require      | no             | no                 |
//! | verify-ca    | yes            | no                 |
//! | verify-full  | yes            | yes                |
//!
//! prefer and require deliberately accept any certificate: that is what libpq does
//! (unless a root certificate file exists, which pg2lake does not look for implicitly),
//! and what users who copy a `sslmode=require` URL from their cloud provider expect to
//! work with the provider's private CA. They still encrypt, and the handshake signatures
//! are still checked against the presented key. verify-ca / verify-full are the modes that
//! defend against an active attacker.

use std::sync::Arc;

use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{WebPkiServerVerifier, verify_server_name};
use tokio_rustls::rustls::crypto::{
    WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    SignatureScheme,
};

use super::ReplicationError;
use super::params::{ConnectParams, Host, SslMode};

/// Builds the connector and the server name to present for `params`.
pub(crate) fn connector(
    params: &ConnectParams,
) -> Result<(TlsConnector, ServerName<'static>), ReplicationError> {
    let host = match &params.host {
        Host::Tcp(host) => host.clone(),
        Host::Unix(_) => {
            return Err(tls_error(
                params,
                "tls is never used on unix sockets".into(),
            ));
        }
    };
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| tls_error(params, format!("{host:?} is not a valid tls server name")))?;
    Ok((TlsConnector::from(tls_client_config(params)?), server_name))
}

/// The rustls client configuration implementing `params.sslmode` (see the module doc).
/// Shared by the replication connection and the SQL connection so that both accept
/// exactly the same certificates.
pub fn tls_client_config(params: &ConnectParams) -> Result<Arc<ClientConfig>, ReplicationError> {
    let tls_err = |reason: String| tls_error(params, reason);
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match params.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(AcceptAnyCert {
            algorithms: provider.signature_verification_algorithms,
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let (roots, pinned) = load_roots(params).map_err(&tls_err)?;
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| tls_err(format!("cannot build certificate verifier: {e}")))?;
            Arc::new(VerifyChain {
                inner,
                pinned,
                check_name: params.sslmode == SslMode::VerifyFull,
            })
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("tls configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn tls_error(params: &ConnectParams, reason: String) -> ReplicationError {
    ReplicationError::Tls {
        target: params.target(),
        source: std::io::Error::other(reason),
    }
}

/// Root store for verify-ca / verify-full: `sslrootcert`, else the system's roots, else
/// the bundled Mozilla roots. Also returns the DER of every certificate in `sslrootcert`.
fn load_roots(
    params: &ConnectParams,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), String> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &params.sslrootcert {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "sslrootcert {} holds no PEM certificate",
                path.display()
            ));
        }
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
        }
        return Ok((roots, certs));
    }
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok((roots, Vec::new()))
}

/// require / prefer: any certificate is accepted (see the module doc for why), but the
/// handshake signatures must still verify against the certificate's key.
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// verify-ca / verify-full: webpki chain verification, with two allowances:
/// - verify-ca ignores a host name mismatch (only the chain matters in that mode, as in
///   libpq);
/// - a server certificate byte-identical to one in `sslrootcert` is trusted as is
///   (pinning). This is what makes a self-signed server certificate usable as its own
///   root, which OpenSSL (hence libpq) accepts but webpki refuses because such a
///   certificate is a CA used as an end entity. The host name is still checked under
///   verify-full; the validity period is not checked for a pinned certificate.
#[derive(Debug)]
struct VerifyChain {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    check_name: bool,
}

impl ServerCertVerifier for VerifyChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let result = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match result {
            Ok(verified) => Ok(verified),
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            Err(err) => {
                if self
                    .pinned
                    .iter()
                    .any(|root| root.as_ref() == end_entity.as_ref())
                {
                    if self.check_name {
                        let parsed = ParsedCertificate::try_from(end_entity)?;
                        verify_server_name(&parsed, server_name)?;
                    }
                    return Ok(ServerCertVerified::assertion());
                }
                Err(err)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
