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
//!
//! With `sslcert` and `sslkey` set, the client certificate is offered whenever the
//! server asks for one (any sslmode that ends in TLS), for `cert` authentication or
//! `clientcert=verify-full`. [`tls_server_end_point`] computes the channel binding data
//! of SCRAM-SHA-256-PLUS from the server certificate the handshake saw.

use std::sync::Arc;

use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{WebPkiServerVerifier, verify_server_name};
use tokio_rustls::rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384,
};
use tokio_rustls::rustls::crypto::{
    WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError,
    RootCertStore, SignatureScheme,
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
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("tls configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&params.sslcert, &params.sslkey) {
        (Some(cert), Some(key)) => {
            let chain = load_client_chain(cert).map_err(&tls_err)?;
            let key_der = load_client_key(key).map_err(&tls_err)?;
            // rustls parses the key here and checks that it belongs to the certificate;
            // its messages never quote key material.
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                tls_err(format!(
                    "client certificate sslcert {} with sslkey {}: {e} (fix: give the private key that belongs to the certificate)",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(tls_err(
                "sslcert and sslkey must be set together (fix: set both, or neither)".into(),
            ));
        }
    };
    Ok(Arc::new(config))
}

/// The client certificate chain of `sslcert`: the client's own certificate first.
fn load_client_chain(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read sslcert {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "sslcert {} holds no PEM certificate (fix: point sslcert at the client certificate)",
            path.display()
        ));
    }
    Ok(chain)
}

/// The private key of `sslkey`. Parse errors are described without the parser's own
/// text, which can quote the file, and the file is a secret.
fn load_client_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| match err {
        pem::Error::Io(io) => format!("cannot read sslkey {}: {io}", path.display()),
        pem::Error::NoItemsFound => format!(
            "sslkey {} holds no unencrypted PEM private key (fix: give a PKCS#8, PKCS#1 or SEC1 key; pg2lake cannot decrypt an encrypted key: openssl pkey -in KEY -out PLAIN)",
            path.display()
        ),
        _ => format!(
            "sslkey {} is not a valid PEM file (fix: point sslkey at the client certificate's PEM private key)",
            path.display()
        ),
    })
}

/// The hash of RFC 5929's tls-server-end-point channel binding for a certificate
/// signed with a given algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha256,
    Sha384,
}

/// Signature algorithm OIDs (DER contents) with the hash tls-server-end-point uses for
/// them: the signature's own hash, MD5 and SHA-1 upgraded to SHA-256 (RFC 5929 4.1), as
/// Postgres does in `be_tls_get_certificate_hash`. `None`: no hash pg2lake can compute
/// (SHA-512 and SHA-224 are not in the TLS stack's provider), none defined at all
/// (Ed25519, Ed448), or none Postgres computes either (RSASSA-PSS, whose hash sits in
/// the parameters: OpenSSL's signature-to-digest table that Postgres 15 consults has
/// none for it, so the server could not check a binding).
const SIGNATURE_HASHES: &[(&[u8], &str, Option<EndPointHash>)] = &[
    (
        &[42, 134, 72, 134, 247, 13, 1, 1, 4],
        "md5WithRSAEncryption",
        Some(EndPointHash::Sha256),
    ),
    (
        &[42, 134, 72, 134, 247, 13, 1, 1, 5],
        "sha1WithRSAEncryption",
        Some(EndPointHash::Sha256),
    ),
    (
        &[42, 134, 72, 134, 247, 13, 1, 1, 11],
        "sha256WithRSAEncryption",
        Some(EndPointHash::Sha256),
    ),
    (
        &[42, 134, 72, 134, 247, 13, 1, 1, 12],
        "sha384WithRSAEncryption",
        Some(EndPointHash::Sha384),
    ),
    (
        &[42, 134, 72, 134, 247, 13, 1, 1, 13],
        "sha512WithRSAEncryption",
        None,
    ),
    (
        &[42, 134, 72, 134, 247, 13, 1, 1, 14],
        "sha224WithRSAEncryption",
        None,
    ),
    (&[42, 134, 72, 134, 247, 13, 1, 1, 10], "RSASSA-PSS", None),
    (
        &[42, 134, 72, 206, 61, 4, 1],
        "ecdsa-with-SHA1",
        Some(EndPointHash::Sha256),
    ),
    (&[42, 134, 72, 206, 61, 4, 3, 1], "ecdsa-with-SHA224", None),
    (
        &[42, 134, 72, 206, 61, 4, 3, 2],
        "ecdsa-with-SHA256",
        Some(EndPointHash::Sha256),
    ),
    (
        &[42, 134, 72, 206, 61, 4, 3, 3],
        "ecdsa-with-SHA384",
        Some(EndPointHash::Sha384),
    ),
    (&[42, 134, 72, 206, 61, 4, 3, 4], "ecdsa-with-SHA512", None),
    (
        &[42, 134, 72, 206, 56, 4, 3],
        "dsa-with-sha1",
        Some(EndPointHash::Sha256),
    ),
    (
        &[96, 134, 72, 1, 101, 3, 4, 3, 2],
        "dsa-with-sha256",
        Some(EndPointHash::Sha256),
    ),
    (&[43, 101, 112], "Ed25519", None),
    (&[43, 101, 113], "Ed448", None),
];

/// The tls-server-end-point channel binding data (RFC 5929) of the server's end-entity
/// certificate `cert` (DER): its hash by the hash function of its own signature
/// algorithm. The server computes the same from its certificate and refuses the login
/// when they differ, which is what unmasks a man in the middle. An error says why no
/// binding is possible for this certificate.
pub(crate) fn tls_server_end_point(cert: &[u8]) -> Result<Vec<u8>, String> {
    let oid = signature_algorithm(cert)
        .ok_or_else(|| "the server certificate could not be parsed".to_owned())?;
    let hash = match SIGNATURE_HASHES.iter().find(|(known, _, _)| *known == oid) {
        Some((_, _, Some(hash))) => *hash,
        Some((_, name, None)) => {
            return Err(format!(
                "the server certificate is signed with {name}, for which pg2lake has no tls-server-end-point hash"
            ));
        }
        None => {
            return Err(format!(
                "the server certificate is signed with an algorithm pg2lake does not know (OID {})",
                dotted_oid(oid)
            ));
        }
    };
    // The TLS provider's own hash implementations: no second crypto library.
    let suite = match hash {
        EndPointHash::Sha256 => TLS13_AES_128_GCM_SHA256,
        EndPointHash::Sha384 => TLS13_AES_256_GCM_SHA384,
    };
    let hasher = suite
        .tls13()
        .map(|suite| suite.common.hash_provider)
        .ok_or_else(|| "the tls provider has no hash for channel binding".to_owned())?;
    Ok(hasher.hash(cert).as_ref().to_vec())
}

/// The signatureAlgorithm OID of a DER certificate:
/// `SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, params }, … }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, certificate, _) = der_element(cert)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = der_element(certificate)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _) = der_element(rest)? else {
        return None;
    };
    let (OID, oid, _) = der_element(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// One DER element: its tag, its contents and the bytes after it; `None` when the
/// input is cut short or uses a length form DER does not allow.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length bytes; 4 covers any certificate.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = rest.get(..count)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest.get(count..)?)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// An OID's DER contents as dotted decimal, for messages.
fn dotted_oid(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = value.saturating_mul(128) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                // The first byte packs the first two arcs as 40 * a + b.
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The fix for a failed handshake, for the certificate problems an operator can fix.
pub(crate) fn handshake_fix(err: &std::io::Error) -> Option<&'static str> {
    match err.get_ref().and_then(|e| e.downcast_ref::<TlsError>())? {
        TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some(
            "connect with a host name the server certificate names, or set sslmode to verify-ca",
        ),
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => {
            Some("set sslrootcert to the CA certificate that signed the server's certificate")
        }
        TlsError::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate,
        ) => Some(
            "the server refused the client certificate: set sslcert and sslkey to a certificate signed by a CA in the server's ssl_ca_file",
        ),
        _ => None,
    }
}

/// A failed handshake's error with its [`handshake_fix`]; its kind is kept, since that
/// is what tells a cut connection (transient) from a refused certificate.
pub(crate) fn handshake_error(err: std::io::Error) -> std::io::Error {
    match handshake_fix(&err) {
        Some(fix) => std::io::Error::new(err.kind(), format!("{err} (fix: {fix})")),
        None => err,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256`.
    const ECDSA_SHA256: &str = "-----BEGIN CERTIFICATE-----
MIIBfjCCASWgAwIBAgIUFmNJ8w6umj4MHkQ8SCYttrseNSEwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJY2Itc2hhMjU2MCAXDTI2MTIwMjAyNTAyNFoYDzIxMjYxMTA4
MDI1MDI0WjAUMRIwEAYDVQQDDAljYi1zaGEyNTYwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQycBY4NUqeSukdZe6HOZB1xlAVbujS3y7HxYAcazHBCPKO66cGU0ix
3GxWaP6z/i74K75CB/G2MCzMCedXM8AAo1MwUTAdBgNVHQ4EFgQUw7u39I4OfLqx
BNVHRrvD5cwIy+swHwYDVR0jBBgwFoAUw7u39I4OfLqxBNVHRrvD5cwIy+swDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBbXROhd3awvWhwO7CGmaH5
FtOft06xPL/j5oE7s6pbvwIgASKLdSwl0mSyHZymzvYs0y8iDEeZUvH6OSoXFqgi
CTM=
-----END CERTIFICATE-----";
    /// `openssl x509 -noout -fingerprint -sha256` of [`ECDSA_SHA256`].
    const ECDSA_SHA256_HASH: &str = "8B:A2:B9:34:D8:2A:D1:C3:B6:61:DE:9A:57:EE:18:40:2F:C7:E2:78:89:31:5F:8D:16:AF:CB:EE:5D:C9:64:77";

    /// P-384 key, `-sha384`.
    const ECDSA_SHA384: &str = "-----BEGIN CERTIFICATE-----
MIIBvTCCAUKgAwIBAgIUf6lmgIP0SPetO+WSELZzhsq0Re0wCgYIKoZIzj0EAwMw
FDESMBAGA1UEAwwJY2Itc2hhMzg0MCAXDTI2MTIwMjAyNTAyNFoYDzIxMjYxMTA4
MDI1MDI0WjAUMRIwEAYDVQQDDAljYi1zaGEzODQwdjAQBgcqhkjOPQIBBgUrgQQA
IgNiAAQUHT1DBWK862Lt/8Lzjh2lj0FinDf8mdGg42mb0JfL11csO2BioDF0NIJq
bJKElCJ1MTedohcEDU1LVoIEdaBiNc4rywVc890sMhbOpHhk9NgoFo/xZHehDO21
okAPOcujUzBRMB0GA1UdDgQWBBRrQIRTibeC6c9Y1XXspiO3HqpHbzAfBgNVHSME
GDAWgBRrQIRTibeC6c9Y1XXspiO3HqpHbzAPBgNVHRMBAf8EBTADAQH/MAoGCCqG
SM49BAMDA2kAMGYCMQDIn4G3RHIKCMQcgWqOAWBQCwqGhhe1ByddsFCQaUY2fO2S
kn/hFk/RdyJ0T5WIMKwCMQCSnG1MM4Ch0UT7V857naSD/IWx84r8R9tv4CWbs+xN
9Ezo6/s19hH+yz1RI6I6/tU=
-----END CERTIFICATE-----";
    /// `openssl x509 -noout -fingerprint -sha384` of [`ECDSA_SHA384`].
    const ECDSA_SHA384_HASH: &str = "5D:F0:D8:32:A6:DB:AD:57:DE:16:1C:1D:8B:0D:F9:3E:9B:25:DE:8D:9F:0B:87:67:8A:BF:22:F2:C6:84:5B:C8:3C:BC:8E:10:B4:AE:12:CE:46:8D:C5:11:09:DD:D9:DD";

    /// `-sha1`: ecdsa-with-SHA1, whose binding hash is upgraded to SHA-256.
    const ECDSA_SHA1: &str = "-----BEGIN CERTIFICATE-----
MIIBejCCASCgAwIBAgIUAM5VEKBNpy9ess6N4aCfkmJUqiwwCQYHKoZIzj0EATAS
MRAwDgYDVQQDDAdjYi1zaGExMCAXDTI2MTIwMjAyNTAyNFoYDzIxMjYxMTA4MDI1
MDI0WjASMRAwDgYDVQQDDAdjYi1zaGExMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcD
QgAEMnAWODVKnkrpHWXuhzmQdcZQFW7o0t8ux8WAHGsxwQjyjuunBlNIsdxsVmj+
s/4u+Cu+QgfxtjAszAnnVzPAAKNTMFEwHQYDVR0OBBYEFMO7t/SODny6sQTVR0a7
w+XMCMvrMB8GA1UdIwQYMBaAFMO7t/SODny6sQTVR0a7w+XMCMvrMA8GA1UdEwEB
/wQFMAMBAf8wCQYHKoZIzj0EAQNJADBGAiEAoR521xNLreUyWfxTZLH1OZLAzxN3
zywFaqEHbCxLBN8CIQCW+EIt/ZYhxCdfZfXe3kRSFkmP8BOAia8I2uxUXfVm/A==
-----END CERTIFICATE-----";
    /// `openssl x509 -noout -fingerprint -sha256` of [`ECDSA_SHA1`].
    const ECDSA_SHA1_HASH: &str = "2A:0E:00:CE:E7:EC:BA:9D:B9:B5:38:47:5B:91:95:63:E3:30:68:35:90:C6:D1:00:8C:F3:01:2A:5A:D2:2A:33";

    /// `-sha512`.
    const ECDSA_SHA512: &str = "-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUBQSI4JJ5LLal5TXVzbRbWsDYSN4wCgYIKoZIzj0EAwQw
FDESMBAGA1UEAwwJY2Itc2hhNTEyMCAXDTI2MTIwMjAyNTAyNFoYDzIxMjYxMTA4
MDI1MDI0WjAUMRIwEAYDVQQDDAljYi1zaGE1MTIwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQycBY4NUqeSukdZe6HOZB1xlAVbujS3y7HxYAcazHBCPKO66cGU0ix
3GxWaP6z/i74K75CB/G2MCzMCedXM8AAo1MwUTAdBgNVHQ4EFgQUw7u39I4OfLqx
BNVHRrvD5cwIy+swHwYDVR0jBBgwFoAUw7u39I4OfLqxBNVHRrvD5cwIy+swDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDBANIADBFAiEA9Z01o1hJHPEXq4+vkHn7
xHRMZqtTlf8cpkD6OUDEIa8CIC/DSVZK6nm7GKWh+CGEPqunz1ohMpSsuEC5ffc8
Givr
-----END CERTIFICATE-----";

    /// `openssl req -x509 -newkey ed25519`.
    const ED25519: &str = "-----BEGIN CERTIFICATE-----
MIIBQDCB86ADAgECAhRkPYQfVK0xBJoflt8g3EsdPUnD4jAFBgMrZXAwFTETMBEG
A1UEAwwKY2ItZWQyNTUxOTAgFw0yNjEyMDIwMjUwMjRaGA8yMTI2MTEwODAyNTAy
NFowFTETMBEGA1UEAwwKY2ItZWQyNTUxOTAqMAUGAytlcAMhAOj+vVsNor0KrRX+
xdkulFtg75W4rSyW6VsMlorWpQglo1MwUTAdBgNVHQ4EFgQUkUfw1yzeYa8ldSvh
rpganHvbHxswHwYDVR0jBBgwFoAUkUfw1yzeYa8ldSvhrpganHvbHxswDwYDVR0T
AQH/BAUwAwEB/zAFBgMrZXADQQCyBkZJ4nuBJLT77RjS8qwebC4Ige9OPAKthv/N
2qdUPrvJdoG+Nj/N0vJ/ICirP6VR92wNJhqxr5KiV908lVQE
-----END CERTIFICATE-----";

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn fingerprint(hex: &str) -> Vec<u8> {
        hex.split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn end_point_is_the_certificate_hash_by_its_signature_hash() {
        assert_eq!(
            tls_server_end_point(&der(ECDSA_SHA256)).unwrap(),
            fingerprint(ECDSA_SHA256_HASH)
        );
        assert_eq!(
            tls_server_end_point(&der(ECDSA_SHA384)).unwrap(),
            fingerprint(ECDSA_SHA384_HASH)
        );
        // RFC 5929 4.1: SHA-1 (and MD5) signatures bind with SHA-256.
        assert_eq!(
            tls_server_end_point(&der(ECDSA_SHA1)).unwrap(),
            fingerprint(ECDSA_SHA1_HASH)
        );
    }

    #[test]
    fn end_point_names_what_it_cannot_hash() {
        let err = tls_server_end_point(&der(ECDSA_SHA512)).unwrap_err();
        assert!(err.contains("ecdsa-with-SHA512"), "{err}");
        let err = tls_server_end_point(&der(ED25519)).unwrap_err();
        assert!(err.contains("Ed25519"), "{err}");
    }

    #[test]
    fn end_point_survives_malformed_certificates() {
        let cert = der(ECDSA_SHA256);
        // Every truncation, and garbage: an error, never a panic.
        for len in 0..cert.len() {
            assert!(tls_server_end_point(&cert[..len]).is_err(), "{len}");
        }
        assert!(tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(tls_server_end_point(&[0x30, 0x80, 0x00, 0x00]).is_err());
        assert!(tls_server_end_point(b"not a certificate").is_err());
        // An unknown algorithm is named by its OID.
        let mut unknown = cert.clone();
        let at = unknown
            .windows(8)
            .rposition(|w| w == [42, 134, 72, 206, 61, 4, 3, 2])
            .unwrap();
        unknown[at + 7] = 9;
        let err = tls_server_end_point(&unknown).unwrap_err();
        assert!(err.contains("OID 1.2.840.10045.4.3.9"), "{err}");
    }

    #[test]
    fn formats_oids() {
        assert_eq!(
            dotted_oid(&[42, 134, 72, 134, 247, 13, 1, 1, 11]),
            "1.2.840.113549.1.1.11"
        );
        assert_eq!(dotted_oid(&[43, 101, 112]), "1.3.101.112");
        assert_eq!(dotted_oid(&[96, 134, 72, 1]), "2.16.840.1");
    }

    #[test]
    fn handshake_errors_carry_the_fix() {
        let name = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::InvalidCertificate(CertificateError::NotValidForName),
        );
        let err = handshake_error(name);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("fix: connect with a host name"),
            "{err}"
        );
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::AlertReceived(AlertDescription::UnknownCA),
        );
        assert!(
            handshake_error(refused)
                .to_string()
                .contains("refused the client certificate")
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(handshake_error(reset).to_string(), "connection reset");
    }

    fn params_with_client_cert(cert: &std::path::Path, key: &std::path::Path) -> ConnectParams {
        let mut params = ConnectParams::from_url("postgres://u@db.example.com/app").unwrap();
        params.sslcert = Some(cert.to_path_buf());
        params.sslkey = Some(key.to_path_buf());
        params
    }

    #[test]
    fn client_certificate_problems_name_the_file_not_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.crt");
        std::fs::write(&cert, ECDSA_SHA256).unwrap();
        let message = |key: &std::path::Path| {
            tls_client_config(&params_with_client_cert(&cert, key))
                .err()
                .unwrap()
                .to_string()
        };

        let missing = dir.path().join("missing.key");
        let err = message(&missing);
        assert!(err.contains("cannot read sslkey"), "{err}");
        assert!(err.contains("missing.key"), "{err}");

        // A certificate where the key should be: no key found.
        let err = message(&cert);
        assert!(
            err.contains("holds no unencrypted PEM private key"),
            "{err}"
        );

        // A broken key file: described without quoting it.
        let broken = dir.path().join("broken.key");
        std::fs::write(
            &broken,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = message(&broken);
        assert!(err.contains("is not a valid PEM file"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");

        // A key that parses but is not the certificate's.
        let other = dir.path().join("other.key");
        std::fs::write(
            &other,
            "-----BEGIN PRIVATE KEY-----\n\
             MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgaaaaaaaaaaaaaaaa\n\
             aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaahRANCAAQycBY4NUqeSukdZe6HOZB1xlAV\n\
             bujS3y7HxYAcazHBCPKO66cGU0ix3GxWaP6z/i74K75CB/G2MCzMCedXM8AA\n\
             -----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = message(&other);
        assert!(err.contains("sslkey"), "{err}");
        assert!(!err.contains("aaaaaaaa"), "{err}");

        let mut only_cert = params_with_client_cert(&cert, &missing);
        only_cert.sslkey = None;
        assert!(tls_client_config(&only_cert).is_err());
    }
}
