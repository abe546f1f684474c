//! A throwaway PKI made by the test (rcgen): one CA, a server certificate for the given names
//! (IP addresses become IP SANs), and a client certificate, as PEM.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM certificates and keys.
pub struct Pki {
    pub ca_pem: String,
    /// (certificate, key)
    pub server: (String, String),
    /// (certificate, key)
    pub client: (String, String),
}

impl Pki {
    /// A CA, a server certificate for `server_names`, a client certificate for
    /// `envoy.mesh.local`.
    pub fn new(server_names: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: OpenSSL (redis-server) takes a leaf whose subject equals its
        // issuer for a self-signed certificate and refuses it.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sessiongate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names.clone()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, names[0].as_str());
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Pki {
            ca_pem: ca.pem(),
            server: leaf(server_names.iter().map(|n| n.to_string()).collect()),
            client: leaf(vec!["envoy.mesh.local".into()]),
        }
    }
}

/// Writes `content` to `dir/name`.
pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}
