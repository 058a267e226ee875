//! `[auth]`: tokens and API keys become Postgres roles and claims; GRANTs and row-level security decide what
//! each caller sees, on every path (rows in both consistencies, pages, counts, the catalog, OpenAPI, jobs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgspout::settings::{ApiKeySettings, AuthSettings, Settings};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{BIG_VIEW, TestDb, serve, settings, wait_for};

const SECRET: &str = "a-test-secret-of-at-least-32-characters!";
const API_KEY: &str = "etl-key-0123456789";

/// The roles of one test (roles are cluster-wide): a NOINHERIT login role that may switch to `anon` and
/// `member`, and `stranger`, which it may not.
struct Roles {
    login: String,
    anon: String,
    member: String,
    stranger: String,
}

impl Roles {
    fn new(db: &TestDb) -> Roles {
        let suffix = &db.name[db.name.len() - 8..];
        Roles {
            login: format!("authenticator_{suffix}"),
            anon: format!("web_anon_{suffix}"),
            member: format!("member_{suffix}"),
            stranger: format!("stranger_{suffix}"),
        }
    }

    async fn drop_all(&self) {
        let admin = TestDb::new().await;
        for role in [&self.login, &self.anon, &self.member, &self.stranger] {
            let _ = admin.client.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
        }
    }
}

/// Tenants `a` (ids 1–10) and `b` (11–25) in `docs` under a policy on the `tenant` claim; `notice` for
/// everyone; `secret` for no one; a `pre_request` that refuses tokens with `"blocked": true`.
async fn multi_tenant() -> (TestDb, Roles) {
    let db = TestDb::new().await;
    let roles = Roles::new(&db);
    let Roles {
        login,
        anon,
        member,
        stranger,
    } = &roles;
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {login} LOGIN NOINHERIT PASSWORD 'login-password';
             CREATE ROLE {anon} NOLOGIN; CREATE ROLE {member} NOLOGIN; CREATE ROLE {stranger} NOLOGIN;
             GRANT {anon}, {member} TO {login};
             CREATE TABLE docs (id int PRIMARY KEY, tenant text NOT NULL, body text);
             INSERT INTO docs SELECT g, CASE WHEN g <= 10 THEN 'a' ELSE 'b' END, 'doc ' || g
               FROM generate_series(1, 25) g;
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
             CREATE POLICY by_tenant ON docs
               USING (tenant = current_setting('request.jwt.claims', true)::json ->> 'tenant');
             CREATE TABLE notice (id int PRIMARY KEY, text text);
             INSERT INTO notice VALUES (1, 'hello');
             CREATE TABLE secret (id int PRIMARY KEY);
             {BIG_VIEW};
             GRANT SELECT ON docs, big TO {member};
             GRANT SELECT ON notice TO {anon}, {member};
             CREATE FUNCTION check_request() RETURNS void LANGUAGE plpgsql AS $$
             BEGIN
               IF current_setting('request.jwt.claims', true)::json ->> 'blocked' = 'true' THEN
                 RAISE EXCEPTION 'blocked by pre_request';
               END IF;
             END $$;"
        ))
        .await
        .unwrap();
    (db, roles)
}

fn auth_settings(db: &TestDb, roles: &Roles) -> Settings {
    let mut settings = settings(
        db,
        &[
            ("docs", "docs", Some("id")),
            ("notice", "notice", Some("id")),
            ("secret", "secret", Some("id")),
            ("big", "big", Some("id")),
        ],
    );
    let url = settings.database.url.take().unwrap();
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let password = std::env::var("PGPASSWORD").unwrap_or_default();
    settings.database.url = Some(
        url.replace(&format!("user={user}"), &format!("user={}", roles.login))
            .replace(&format!("password={password}"), "password=login-password"),
    );
    settings.query.aggregates = true;
    settings.auth = Some(AuthSettings {
        jwt_secret: Some(SECRET.into()),
        jwks: None,
        jwt_audience: Some("pgspout".into()),
        role_claim: "$.role".into(),
        anon_role: Some(roles.anon.clone()),
        leeway: Duration::from_secs(1),
        cookie: Some("access_token".into()),
        pre_request: Some("public.check_request".into()),
        api_keys: vec![ApiKeySettings {
            name: "nightly-etl".into(),
            sha256: format!("{:x}", Sha256::digest(API_KEY.as_bytes())),
            role: roles.member.clone(),
        }],
    });
    settings
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn tenant_token(roles: &Roles, tenant: &str) -> String {
    token(json!({"role": roles.member, "tenant": tenant, "sub": format!("user-{tenant}"), "exp": now() + 600}))
}

async fn get(address: &str, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// `(status, ids)` of an NDJSON `/rows` export.
async fn ids(address: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<i64>) {
    let response = get(address, path, headers).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    if status != 200 {
        return (status, Vec::new());
    }
    let ids = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_i64().unwrap())
        .collect();
    (status, ids)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn row_level_security_decides_what_each_caller_sees_on_every_path() {
    let (db, roles) = multi_tenant().await;
    let address = serve(auth_settings(&db, &roles)).await;
    let (a, b) = (bearer(&tenant_token(&roles, "a")), bearer(&tenant_token(&roles, "b")));
    let tenant_a: Vec<i64> = (1..=10).collect();
    let tenant_b: Vec<i64> = (11..=25).collect();

    for consistency in ["snapshot", "chunked"] {
        let path = format!("/v1/datasets/docs/rows?consistency={consistency}");
        assert_eq!(
            ids(&address, &path, &[("Authorization", &a)]).await,
            (200, tenant_a.clone())
        );
        assert_eq!(
            ids(&address, &path, &[("Authorization", &b)]).await,
            (200, tenant_b.clone())
        );
    }
    let page: Value = get(&address, "/v1/datasets/docs/page?limit=100", &[("Authorization", &b)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["rows"].as_array().unwrap().len(), 15);
    let counted = get(
        &address,
        "/v1/datasets/docs/rows?limit=0",
        &[("Authorization", &a), ("Prefer", "count=exact")],
    )
    .await;
    assert_eq!(counted.headers()["x-total-count"], "10");
    // A tenant's summary counts only its rows.
    for (token, tenant, count) in [(&a, "a", 10), (&b, "b", 15)] {
        let path = "/v1/datasets/docs/rows?select=tenant,count()";
        let summary = get(&address, path, &[("Authorization", token)]).await;
        assert_eq!(summary.status(), 200);
        let expected = format!("{{\"tenant\":\"{tenant}\",\"count\":{count}}}\n");
        assert_eq!(summary.text().await.unwrap(), expected);
    }
    // The cookie carries a token too (for EventSource).
    let cookie = format!("access_token={}", tenant_token(&roles, "a"));
    assert_eq!(
        ids(&address, "/v1/datasets/docs/rows", &[("Cookie", &cookie)]).await,
        (200, tenant_a)
    );

    // Anonymous: what the anonymous role is granted, and a 401 (send a token) for the rest.
    assert_eq!(ids(&address, "/v1/datasets/notice/rows", &[]).await, (200, vec![1]));
    let refused = get(&address, "/v1/datasets/docs/rows", &[]).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    // Authenticated without the grant: 403.
    assert_eq!(
        get(&address, "/v1/datasets/secret/rows", &[("Authorization", &a)])
            .await
            .status(),
        403
    );

    // The catalog and OpenAPI list what the caller's role may read.
    let names = |headers: Vec<(&'static str, String)>| {
        let address = address.clone();
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let response = get(&address, "/v1/datasets", &headers).await;
            let body: Value = response.json().await.unwrap();
            assert!(body["datasets"].is_array(), "{body}");
            let mut names: Vec<String> = body["datasets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(names(vec![]).await, ["notice"]);
    assert_eq!(
        names(vec![("Authorization", a.clone())]).await,
        ["big", "docs", "notice"]
    );
    let openapi = get(&address, "/v1/openapi.json", &[]).await.text().await.unwrap();
    assert!(openapi.contains("/v1/datasets/notice/rows") && !openapi.contains("/v1/datasets/docs/rows"));
    assert_eq!(get(&address, "/v1/datasets/docs", &[]).await.status(), 401);
    assert_eq!(
        get(&address, "/v1/datasets/secret", &[("Authorization", &a)])
            .await
            .status(),
        403
    );

    // An API key runs as its role (no tenant claim: the policy shows it nothing of docs).
    let key = bearer(API_KEY);
    assert_eq!(
        ids(&address, "/v1/datasets/notice/rows", &[("Authorization", &key)]).await,
        (200, vec![1])
    );
    assert_eq!(
        ids(&address, "/v1/datasets/docs/rows", &[("Authorization", &key)]).await,
        (200, vec![])
    );

    // pre_request refuses; a role pgspout may not switch to is a 403 that names the GRANT.
    let blocked = token(json!({"role": roles.member, "tenant": "a", "blocked": true}));
    let response = get(
        &address,
        "/v1/datasets/docs/rows",
        &[("Authorization", &bearer(&blocked))],
    )
    .await;
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("blocked by pre_request"));
    let stranger = token(json!({"role": roles.stranger}));
    let response = get(
        &address,
        "/v1/datasets/notice/rows",
        &[("Authorization", &bearer(&stranger))],
    )
    .await;
    assert_eq!(response.status(), 403);
    let body = response.text().await.unwrap();
    assert!(body.contains(&format!("GRANT \\\"{}\\\" TO", roles.stranger)), "{body}");

    drop(db);
    roles.drop_all().await;
}

#[tokio::test]
async fn every_rejected_token_is_a_401_and_opens_no_connection() {
    let (db, roles) = multi_tenant().await;
    let address = serve(auth_settings(&db, &roles)).await;
    let claims = |extra: Value| {
        let mut claims = json!({"role": roles.member, "tenant": "a", "exp": now() + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    };
    let wrong_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-characters"),
    )
    .unwrap();
    let b64 = |v: &Value| base64_url(v.to_string().as_bytes());
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    let rs256_header = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(&claims(json!({}))),
        base64_url(b"not a signature")
    );
    let cases = [
        ("expired", token(claims(json!({"exp": now() - 120})))),
        ("not yet valid", token(claims(json!({"nbf": now() + 120})))),
        ("issued in the future", token(claims(json!({"iat": now() + 120})))),
        ("wrong audience", token(claims(json!({"aud": "someone-else"})))),
        ("bad signature", wrong_secret),
        ("alg none", alg_none),
        ("an algorithm the key cannot verify", rs256_header),
        ("garbage", "not-a-token-and-not-a-key".into()),
        ("oversized", "x".repeat(20_000)),
    ];
    for (case, token) in &cases {
        let response = get(
            &address,
            "/v1/datasets/notice/rows",
            &[("Authorization", &bearer(token))],
        )
        .await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{case}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 401, "{case}");
    }
    let basic = get(
        &address,
        "/v1/datasets/notice/rows",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_eq!(basic.status(), 401);
    // The audience rule: a token naming ours, or none, is accepted.
    let ours = token(claims(json!({"aud": ["other", "pgspout"]})));
    let accepted = ids(
        &address,
        "/v1/datasets/notice/rows",
        &[("Authorization", &bearer(&ours))],
    )
    .await;
    assert_eq!(
        accepted,
        (200, vec![1]),
        "read to its end, so its connection goes back to the pool"
    );
    // Only that last request ever opened a connection: the rejected ones ran no query.
    let connections: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = 'pgspout'",
            &[&roles.login],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(connections, 1, "one pooled connection, opened by the accepted request");

    drop(db);
    roles.drop_all().await;
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn jobs_belong_to_their_creator_and_keep_its_rows_after_its_token_expired() {
    let (db, roles) = multi_tenant().await;
    let directory = std::env::temp_dir().join(format!("pgspout-auth-jobs-{}", db.name));
    // The job table is pgspout's own: its login role creates it.
    db.client
        .batch_execute(&format!("GRANT CREATE ON DATABASE {} TO {}", db.name, roles.login))
        .await
        .unwrap();
    let mut settings = auth_settings(&db, &roles);
    settings.jobs.directory = Some(directory.clone());
    settings.jobs.max_running = 1;
    settings.jobs.poll_interval = Duration::from_millis(100);
    let address = serve(settings).await;
    let a = bearer(&tenant_token(&roles, "a"));
    let b = bearer(&tenant_token(&roles, "b"));
    let post = |authorization: String, body: Value| {
        let address = address.clone();
        async move {
            reqwest::Client::new()
                .post(format!("http://{address}/v1/exports"))
                .header("Authorization", authorization)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let id_of = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 202);
        let created: Value = response.json().await.unwrap();
        created["id"].as_str().unwrap().to_owned()
    };

    // A long job holds the only runner slot, so the next one starts after its creator's token expired.
    let blocker = id_of(post(a.clone(), json!({"dataset": "big", "format": "csv"})).await).await;
    let short_lived = token(json!({"role": roles.member, "tenant": "a", "sub": "user-a", "exp": now() + 2}));
    let job = id_of(post(bearer(&short_lived), json!({"dataset": "docs", "format": "csv"})).await).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let expired = get(
        &address,
        &format!("/v1/exports/{job}"),
        &[("Authorization", &bearer(&short_lived))],
    )
    .await;
    assert_eq!(expired.status(), 401, "the expired token itself is refused");
    let cancelled = reqwest::Client::new()
        .delete(format!("http://{address}/v1/exports/{blocker}"))
        .header("Authorization", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);

    // Same owner (sub), fresh token: the job completed with tenant a's rows only.
    let status = wait_for(Duration::from_secs(20), || async {
        let status: Value = get(&address, &format!("/v1/exports/{job}"), &[("Authorization", &a)])
            .await
            .json()
            .await
            .unwrap();
        (status["status"] == "completed").then_some(status)
    })
    .await;
    assert_eq!(status["rows_written"], 10, "{status}");
    let file = get(
        &address,
        &format!("/v1/exports/{job}/download"),
        &[("Authorization", &a)],
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(file.lines().count(), 11, "a header and tenant a's ten rows");
    assert!(file.lines().skip(1).all(|l| l.contains(",a,")), "{file}");

    // Anyone else: 404 everywhere, as if it did not exist.
    for path in [format!("/v1/exports/{job}"), format!("/v1/exports/{job}/download")] {
        assert_eq!(
            get(&address, &path, &[("Authorization", &b)]).await.status(),
            404,
            "{path}"
        );
        assert_eq!(
            get(&address, &path, &[("Authorization", &bearer(API_KEY))])
                .await
                .status(),
            404,
            "{path}"
        );
    }
    let delete = |authorization: String| {
        let url = format!("http://{address}/v1/exports/{job}");
        async move {
            reqwest::Client::new()
                .delete(url)
                .header("Authorization", authorization)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(delete(b.clone()).await, 404);
    assert_eq!(delete(a.clone()).await, 204);

    // An Idempotency-Key is the caller's own: the same key from another owner is another export.
    let keyed = |authorization: String| {
        let address = address.clone();
        async move {
            let response = reqwest::Client::new()
                .post(format!("http://{address}/v1/exports"))
                .header("Authorization", authorization)
                .header("Idempotency-Key", "\"nightly-2026-11-30\"")
                .json(&json!({"dataset": "docs", "format": "csv"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (first_a, again_a, first_b) = (keyed(a.clone()).await, keyed(a.clone()).await, keyed(b.clone()).await);
    assert_eq!(first_a, again_a, "one owner, one key: one export");
    assert_ne!(first_a, first_b, "another owner's key is another export");

    let _ = std::fs::remove_dir_all(&directory);
    drop(db);
    roles.drop_all().await;
}

/// A key pair made by `openssl genpkey` (PKCS#8), as a signing key and its public JWK under `kid`.
fn key_pair(dir: &std::path::Path, name: &str, algorithm: &[&str], alg: Algorithm, kid: &str) -> (EncodingKey, Value) {
    let file = format!("{name}.pem");
    let mut args = vec!["genpkey", "-out", &file];
    args.extend(algorithm);
    crate::tls::openssl(&args, dir);
    let pem = std::fs::read(dir.join(&file)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    (key, serde_json::to_value(jwk).unwrap())
}

fn signed(key: &EncodingKey, alg: Algorithm, kid: &str, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// An HTTPS server on loopback that answers every request with `body()`'s current value, with a certificate
/// for 127.0.0.1 signed by a CA of the test's own (returned, for SSL_CERT_FILE).
async fn jwks_server(
    dir: &std::path::Path,
    body: std::sync::Arc<std::sync::Mutex<String>>,
) -> (String, std::path::PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    crate::tls::issue(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n",
    );
    let certs: Vec<_> = rustls::pki_types::pem::PemObject::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::pem::PemObject::from_pem_file(dir.join("server.key")).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/jwks.json", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let body = body.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, dir.join("ca.pem"))
}

#[tokio::test]
async fn rs256_and_es256_verify_through_a_jwks_file_and_a_rotating_jwks_url() {
    let (db, roles) = multi_tenant().await;
    let dir = crate::jobs::temp_dir("jwks");
    let (rsa, rsa_jwk) = key_pair(
        &dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        Algorithm::RS256,
        "rsa-1",
    );
    let (ec, ec_jwk) = key_pair(
        &dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        Algorithm::ES256,
        "ec-1",
    );
    let (rotated, rotated_jwk) = key_pair(
        &dir,
        "rotated",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        Algorithm::ES256,
        "ec-2",
    );
    let claims = json!({"role": roles.member, "tenant": "a", "exp": now() + 600});
    let docs = |address: String, token: String| async move {
        ids(
            &address,
            "/v1/datasets/docs/rows",
            &[("Authorization", &bearer(&token))],
        )
        .await
    };
    let tenant_a: Vec<i64> = (1..=10).collect();

    // From a file.
    std::fs::write(dir.join("jwks.json"), json!({"keys": [rsa_jwk, ec_jwk]}).to_string()).unwrap();
    let mut settings = auth_settings(&db, &roles);
    let auth = settings.auth.as_mut().unwrap();
    auth.jwt_secret = None;
    auth.jwks = Some(format!("@{}", dir.join("jwks.json").display()));
    let address = serve(settings).await;
    for (key, alg, kid) in [(&rsa, Algorithm::RS256, "rsa-1"), (&ec, Algorithm::ES256, "ec-1")] {
        assert_eq!(
            docs(address.clone(), signed(key, alg, kid, claims.clone())).await,
            (200, tenant_a.clone()),
            "{kid}"
        );
    }
    // HS256 with the RSA public key as its secret (the classic confusion) is refused, and so is an unknown kid.
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims,
        &EncodingKey::from_secret(rsa_jwk.to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(docs(address.clone(), confused).await.0, 401);
    assert_eq!(
        docs(
            address.clone(),
            signed(&rotated, Algorithm::ES256, "ec-2", claims.clone())
        )
        .await
        .0,
        401
    );

    // From an https URL, served by the test; the key set rotates and the new kid is picked up.
    let body = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": [ec_jwk, rsa_jwk]}).to_string()));
    let (url, ca) = jwks_server(&dir, body.clone()).await;
    let mut config = format!(
        "[auth]\njwks = \"{url}\"\nanon_role = \"{}\"\n\n[[datasets]]\nname = \"docs\"\ntable = \"docs\"\nkey = \"id\"\n",
        roles.anon
    );
    config.push_str("\n[database]\nurl = \"\"\n");
    let login_url = auth_settings(&db, &roles).database.url.unwrap();
    let config = config.replace("url = \"\"", &format!("url = {login_url:?}"));
    let log = dir.join("pgspout.log");
    let server = crate::helpers::ServerProcess::start_with(
        &db,
        &config,
        &[
            ("RUST_LOG", "debug"),
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
            ("DATABASE_URL", &login_url),
        ],
        std::fs::File::create(&log).unwrap(),
    )
    .await;
    assert_eq!(
        docs(
            server.base.clone(),
            signed(&ec, Algorithm::ES256, "ec-1", claims.clone())
        )
        .await,
        (200, tenant_a.clone())
    );
    assert_eq!(
        docs(
            server.base.clone(),
            signed(&rsa, Algorithm::RS256, "rsa-1", claims.clone())
        )
        .await,
        (200, tenant_a.clone())
    );
    let next = signed(&rotated, Algorithm::ES256, "ec-2", claims.clone());
    *body.lock().unwrap() = json!({"keys": [ec_jwk, rotated_jwk]}).to_string();
    // At most one fetch per interval: within a few seconds the new key verifies.
    let accepted = wait_for(Duration::from_secs(15), || async {
        let (status, rows) = docs(server.base.clone(), next.clone()).await;
        (status == 200).then_some(rows)
    })
    .await;
    assert_eq!(accepted, tenant_a);
    drop(server);
    // Tokens and claims never reach the logs, even at debug level.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("JWKS refreshed"), "{logged}");
    for secret in [next.as_str(), "\"tenant\""] {
        assert!(!logged.contains(secret), "the log holds {secret}");
    }

    let _ = std::fs::remove_dir_all(&dir);
    drop(db);
    roles.drop_all().await;
}

#[tokio::test]
async fn start_up_names_the_grant_a_fixed_role_lacks() {
    let (db, roles) = multi_tenant().await;
    let mut settings = auth_settings(&db, &roles);
    settings.auth.as_mut().unwrap().anon_role = Some(roles.stranger.clone());
    let error = match pgspout::startup::Application::build(settings).await {
        Ok(_) => panic!("pgspout started with an anonymous role it cannot switch to"),
        Err(error) => pgspout::report::chain(&error),
    };
    assert!(
        error.contains(&format!("GRANT \"{}\" TO \"{}\"", roles.stranger, roles.login)),
        "{error}"
    );
    let mut settings = auth_settings(&db, &roles);
    settings.auth.as_mut().unwrap().api_keys[0].role = "no_such_role_at_all".into();
    let error = match pgspout::startup::Application::build(settings).await {
        Ok(_) => panic!("pgspout started with an API key for a missing role"),
        Err(error) => pgspout::report::chain(&error),
    };
    assert!(
        error.contains("nightly-etl") && error.contains("does not exist"),
        "{error}"
    );
    drop(db);
    roles.drop_all().await;
}

#[tokio::test]
async fn flight_calls_run_as_their_token_under_row_level_security() {
    let (db, roles) = multi_tenant().await;
    let mut settings = auth_settings(&db, &roles);
    let port = crate::helpers::free_port();
    settings.server.flight_listen = Some(format!("127.0.0.1:{port}"));
    let http = format!("http://{}", serve(settings).await);
    let location = format!("grpc://127.0.0.1:{port}");
    let flight = crate::flight::flight;
    let a = tenant_token(&roles, "a");

    // ListFlights shows what the caller's role may read.
    let listed = flight(&["list", &location, &a]).await;
    let mut names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"][0].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["big", "docs", "notice"]);
    let anonymous = flight(&["list", &location]).await;
    assert_eq!(
        anonymous.as_array().unwrap().len(),
        1,
        "the anonymous role reads notice only: {anonymous}"
    );

    // Rows under the policy, equal to HTTP under the same token; an API key is a token too.
    let docs = flight(&["get", &location, &http, "path:docs", &a]).await;
    assert_eq!((docs["rows"].as_i64(), docs["id_sum"].as_i64()), (Some(10), Some(55)));
    assert_eq!(docs["equal_to_http"], true, "{docs}");
    let b = tenant_token(&roles, "b");
    let summary = flight(&["get", &location, &http, "cmd:docs?select=tenant,count()", &b]).await;
    assert_eq!(summary["rows"], 1, "{summary}");
    assert_eq!(summary["equal_to_http"], true, "{summary}");
    let keyed = flight(&["get", &location, &http, "path:notice", API_KEY]).await;
    assert_eq!(keyed["rows"], 1);

    // Refusals are gRPC codes: no token where one is needed, a bad token, a table the role may not read.
    for (descriptor, token, error) in [
        ("path:docs", None, "FlightUnauthenticatedError"),
        ("path:docs", Some("not-a-token"), "FlightUnauthenticatedError"),
        ("path:secret", Some(a.as_str()), "FlightUnauthorizedError"),
    ] {
        let mut args = vec!["error", location.as_str(), descriptor];
        args.extend(token);
        let refused = flight(&args).await;
        assert_eq!(refused["error"], error, "{descriptor} {token:?}: {refused}");
    }
    let blocked = token(json!({"role": roles.member, "tenant": "a", "blocked": true, "exp": now() + 600}));
    let refused = flight(&["error", &location, "path:docs", &blocked]).await;
    assert!(
        refused["message"].as_str().unwrap().contains("blocked"),
        "pre_request runs: {refused}"
    );
    roles.drop_all().await;
}
