//! TLS and mutual TLS: a server certificate from the configured files, and
//! client certificates whose names map to callers.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use authgate::grpc::proto::admin_service_client::AdminServiceClient;
use authgate::grpc::proto::{self, Decision};

use crate::helpers::*;

/// A throwaway CA, a server certificate for localhost and a client
/// certificate named `ops.example`, as PEM files in `dir`.
fn certificates(dir: &Path) -> (String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "authgate test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, cn: &str, file: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    leaf(vec!["localhost".into()], "localhost", "server");
    leaf(vec!["ops.example".into()], "ops.example", "client");
    leaf(
        vec!["stranger.example".into()],
        "stranger.example",
        "stranger",
    );
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let toml = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        p("server.crt"),
        p("server.key"),
        p("ca.crt")
    );
    (toml, p("ca.crt"))
}

async fn connect(addr: std::net::SocketAddr, dir: &Path, identity: Option<&str>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(
            std::fs::read(dir.join("ca.crt")).unwrap(),
        ));
    if let Some(name) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join(format!("{name}.crt"))).unwrap(),
            std::fs::read(dir.join(format!("{name}.key"))).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_over_tls_and_client_certificates_as_callers() {
    let dir = tempfile::tempdir().unwrap();
    let (tls_toml, _) = certificates(dir.path());
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(
        Backend::Sqlite,
        &format!(
            "{tls_toml}{}certs = [{{ name = \"ops.example\", roles = [\"admin\"] }}]\n",
            keys.toml
        ),
    )
    .await;

    // A bot with only the CA and its key.
    let verdict = keyed_access(connect(server.addr, dir.path(), None).await, &keys.check)
        .check_access(proto::CheckAccessRequest {
            context: "login".into(),
            subject: subject("alice", "192.0.2.10"),
        })
        .await
        .expect("key over TLS")
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(decision(&verdict), Decision::Allow);

    // An operator tool with a client certificate and no key.
    let stats = || proto::GetStatsRequest {
        actor_user_id: "admin".into(),
    };
    AdminServiceClient::new(connect(server.addr, dir.path(), Some("client")).await)
        .get_stats(stats())
        .await
        .expect("the mapped certificate is an admin caller");

    // A valid certificate that no caller is mapped to proves nothing.
    let err = AdminServiceClient::new(connect(server.addr, dir.path(), Some("stranger")).await)
        .get_stats(stats())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Nor does TLS alone.
    let err = AdminServiceClient::new(connect(server.addr, dir.path(), None).await)
        .get_stats(stats())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Plaintext does not get through at all: the connection breaks (how
    // the client reports it varies) before any service answers.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let answer = keyed_access(channel, &keys.check)
            .check_access(proto::CheckAccessRequest {
                context: "login".into(),
                subject: subject("alice", ""),
            })
            .await;
        assert!(answer.is_err(), "{answer:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_turns_away_connections_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (tls_toml, _) = certificates(dir.path());
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(
        Backend::Sqlite,
        &format!("{tls_toml}require_client_cert = true\n{}", keys.toml),
    )
    .await;
    let request = || proto::CheckAccessRequest {
        context: "login".into(),
        subject: subject("alice", ""),
    };
    keyed_access(
        connect(server.addr, dir.path(), Some("client")).await,
        &keys.check,
    )
    .check_access(request())
    .await
    .expect("with a certificate and a key");
    let without = Endpoint::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .domain_name("localhost")
                .ca_certificate(Certificate::from_pem(
                    std::fs::read(dir.path().join("ca.crt")).unwrap(),
                )),
        )
        .unwrap()
        .connect()
        .await;
    // The handshake may fail at connect or at the first call, depending on
    // when the client learns of the alert.
    if let Ok(channel) = without {
        let answer = keyed_access(channel, &keys.check)
            .check_access(request())
            .await;
        assert!(answer.is_err(), "{answer:?}");
    }
    server.stop().await;
}
