//! TLS to Postgres with libpq's `sslmode` meanings, against the test cluster (Debian's `ssl = on` with its
//! snakeoil certificate, issued to `localhost`).

use std::path::{Path, PathBuf};

use pgspout::report::chain;
use pgspout::startup::Application;

use crate::faults::PrivateCluster;
use crate::helpers::{TestDb, serve, settings_for, small_table};
use crate::jobs::temp_dir;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// A CA of the test's own, which signed nothing the server has.
fn other_ca(dir: &Path) -> PathBuf {
    make_ca(dir, "other-ca", "/CN=other test CA");
    dir.join("other-ca.pem")
}

/// `<stem>.pem` and `<stem>.key` in `dir`: a self-signed CA called `subject`.
fn make_ca(dir: &Path, stem: &str, subject: &str) {
    let (key, pem) = (format!("{stem}.key"), format!("{stem}.pem"));
    openssl(
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", subject, "-keyout", &key, "-out",
            &pem,
        ],
        dir,
    );
}

async fn export_over(db: &TestDb, tls: &str) -> Result<String, String> {
    let settings = settings_for(
        format!("{} {tls}", db.url_on("localhost")),
        &[("small", "small", Some("id"))],
    );
    match Application::build(settings).await {
        Ok(app) => {
            let address = format!("127.0.0.1:{}", app.port());
            tokio::spawn(app.run_until_stopped(std::future::pending()));
            let body = reqwest::get(format!("http://{address}/v1/datasets/small/rows"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            Ok(body)
        }
        Err(error) => Err(chain(&error)),
    }
}

#[tokio::test]
async fn verify_full_serves_over_encrypted_connections_and_wrong_cas_or_names_fail_at_start_up() {
    let db = TestDb::new().await;
    small_table(&db, 10).await;
    let dir = temp_dir("tls");

    let body = export_over(&db, &format!("sslmode=verify-full sslrootcert={SNAKEOIL}"))
        .await
        .unwrap();
    assert_eq!(body.lines().count(), 10);
    assert_eq!(
        db.pgspout_ssl().await,
        Some(true),
        "pg_stat_ssl shows pgspout's backends encrypted"
    );

    let wrong_ca = other_ca(&dir);
    let error = export_over(&db, &format!("sslmode=verify-full sslrootcert={}", wrong_ca.display()))
        .await
        .unwrap_err();
    assert!(
        error.contains("UnknownIssuer") || error.contains("unknown issuer"),
        "{error}"
    );

    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca (no name check) serves.
    let by_address = |mode: &str| {
        let url = format!("{} sslmode={mode} sslrootcert={SNAKEOIL}", db.url_on("127.0.0.1"));
        settings_for(url, &[("small", "small", Some("id"))])
    };
    let error = chain(
        &Application::build(by_address("verify-full"))
            .await
            .err()
            .expect("a name mismatch fails"),
    );
    assert!(
        error.contains("NotValidForName") || error.contains("not valid for name"),
        "{error}"
    );
    let address = serve(by_address("verify-ca")).await;
    let served = reqwest::get(format!("http://{address}/v1/datasets/small/rows"))
        .await
        .unwrap();
    assert_eq!(served.text().await.unwrap().lines().count(), 10);

    // Without sslrootcert, verify-full is a configuration error that says what is missing.
    let error = export_over(&db, "sslmode=verify-full").await.unwrap_err();
    assert!(error.contains("needs sslrootcert"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn require_encrypts_without_verifying_and_disable_does_not_encrypt() {
    let db = TestDb::new().await;
    small_table(&db, 10).await;
    // A postgres:// URL with the options in its query string, and the database.* keys, both work.
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let password = std::env::var("PGPASSWORD").unwrap_or_default();
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    let url = format!(
        "postgres://{user}:{password}@localhost:{port}/{}?sslmode=require",
        db.name
    );
    let address = serve(settings_for(url, &[("small", "small", Some("id"))])).await;
    let served = reqwest::get(format!("http://{address}/v1/datasets/small/rows"))
        .await
        .unwrap();
    assert_eq!(served.text().await.unwrap().lines().count(), 10);
    assert_eq!(db.pgspout_ssl().await, Some(true));

    let db = TestDb::new().await;
    small_table(&db, 10).await;
    let mut settings = settings_for(db.url_on("localhost"), &[("small", "small", Some("id"))]);
    settings.database.sslmode = Some(pgspout::settings::SslMode::Disable);
    let address = serve(settings).await;
    let served = reqwest::get(format!("http://{address}/v1/datasets/small/rows"))
        .await
        .unwrap();
    assert_eq!(served.text().await.unwrap().lines().count(), 10);
    assert_eq!(db.pgspout_ssl().await, Some(false));
}

/// In `dir`: a CA of its own (`ca.pem`, `ca.key`) and `<name>.pem`/`<name>.key`, a certificate for
/// `subject` that the CA signed, with the v3 `extensions` (rustls refuses v1 certificates).
pub(crate) fn issue(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), extensions).unwrap();
    make_ca(dir, "ca", "/CN=pgspout test CA");
    openssl(
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
        dir,
    );
}

pub(crate) fn openssl(args: &[&str], dir: &Path) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

#[tokio::test]
async fn a_hostssl_only_server_refuses_disable_and_accepts_a_client_certificate() {
    let dir = temp_dir("tls-cert");
    // A CA the server trusts for client certificates, and a certificate for the user `postgres`.
    issue(
        &dir,
        "client",
        "/CN=postgres",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    );
    let ca_option = format!("ssl_ca_file={}", dir.join("ca.pem").display());
    let cluster = PrivateCluster::create_with(&[&ca_option]).await;
    let admin = cluster.client().await;
    admin
        .batch_execute(
            "CREATE TABLE small (id int PRIMARY KEY, label text); \
             INSERT INTO small SELECT g, 'row ' || g FROM generate_series(1, 10) g",
        )
        .await
        .unwrap();
    cluster
        .set_hba("local all all trust\nhostssl all all 127.0.0.1/32 cert\nhostnossl all all 127.0.0.1/32 reject\n")
        .await;
    let datasets = [("small", "small", Some("id"))];

    let refused = Application::build(settings_for(format!("{} sslmode=disable", cluster.url()), &datasets))
        .await
        .err()
        .expect("a hostssl-only server refuses a plain connection");
    let refused = chain(&refused);
    assert!(refused.contains("no encryption"), "{refused}");

    let without_cert = Application::build(settings_for(format!("{} sslmode=require", cluster.url()), &datasets))
        .await
        .err()
        .expect("cert authentication needs a certificate");
    assert!(chain(&without_cert).contains("certificate"), "{}", chain(&without_cert));

    let url = format!(
        "{} sslmode=verify-ca sslrootcert={SNAKEOIL} sslcert={} sslkey={}",
        cluster.url(),
        dir.join("client.pem").display(),
        dir.join("client.key").display()
    );
    let address = serve(settings_for(url, &datasets)).await;
    let served = reqwest::get(format!("http://{address}/v1/datasets/small/rows"))
        .await
        .unwrap();
    assert_eq!(served.text().await.unwrap().lines().count(), 10);
    let _ = std::fs::remove_dir_all(&dir);
}
