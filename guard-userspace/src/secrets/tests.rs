//! Each detector against a sample of its format, and the near misses it must leave alone.
//! Samples are assembled at run time, so this file holds no credential-shaped string.

use super::*;

/// A random-looking alphanumeric string of `n` characters (fixed, so tests are stable).
fn rnd(n: usize) -> String {
    const A: &[u8] = b"aZ3kP9qL2mX7vB4nR8tY1wC6sD5fG0hJ";
    (0..n)
        .map(|i| A[(i * 7 + i / 3) % A.len()] as char)
        .collect()
}

fn hex(n: usize) -> String {
    (0..n)
        .map(|i| b"0123456789abcdef"[(i * 5 + i / 4) % 16] as char)
        .collect()
}

fn key() -> Key {
    Key::random().unwrap()
}

fn detected(text: &str) -> Vec<&'static str> {
    Scanner::get()
        .scan(text.as_bytes(), &key())
        .into_iter()
        .map(|f| f.detector)
        .collect()
}

#[test]
fn every_detector_finds_its_format() {
    let uuid = "3f2b8c1d-9a4e-4b7f-8c2d-1e5f6a7b8c9d";
    let samples: Vec<(&str, String)> = vec![
        (
            "aws-access-key-id",
            format!("key = AKIA{}", "Q3ZXW7PLM2RT4VBN"),
        ),
        (
            "aws-secret-access-key",
            format!("aws_secret_access_key = {}", rnd(40)),
        ),
        ("github-token", format!("token: ghp_{}", rnd(36))),
        (
            "github-fine-grained-token",
            format!("github_pat_{}", rnd(82)),
        ),
        ("gitlab-token", format!("glpat-{}", rnd(20))),
        ("stripe-key", format!("sk_live_{}", rnd(24))),
        ("slack-token", format!("xoxb-{}-{}", hex(12), rnd(24))),
        (
            "slack-webhook",
            format!(
                "https://hooks.slack.com/services/T{}/B{}/{}",
                "ABC123",
                "DEF456",
                rnd(24)
            ),
        ),
        (
            "openai-key",
            format!("sk-proj-{}T3BlbkFJ{}", rnd(20), rnd(20)),
        ),
        ("anthropic-key", format!("sk-ant-api03-{}", rnd(93))),
        ("google-api-key", format!("AIza{}", rnd(35))),
        (
            "npm-token",
            format!("//registry.npmjs.org/:_authToken=npm_{}", rnd(36)),
        ),
        ("digitalocean-token", format!("dop_v1_{}", hex(64))),
        ("supabase-key", format!("sbp_{}", hex(40))),
        ("fly-token", format!("FlyV1 fm2_{}", rnd(80))),
        ("heroku-key", format!("HEROKU_API_KEY={uuid}")),
        ("railway-token", format!("RAILWAY_TOKEN={uuid}")),
        ("vercel-token", format!("VERCEL_TOKEN={}", rnd(24))),
        (
            "cloudflare-token",
            format!("CLOUDFLARE_API_TOKEN={}", rnd(40)),
        ),
        ("sendgrid-key", format!("SG.{}.{}", rnd(22), rnd(43))),
        ("shopify-token", format!("shpat_{}", hex(32))),
        ("linear-key", format!("lin_api_{}", rnd(40))),
        ("doppler-token", format!("dp.pt.{}", rnd(43))),
        ("databricks-token", format!("dapi{}", hex(32))),
        (
            "terraform-cloud-token",
            format!("{}.atlasv1.{}", rnd(14), rnd(64)),
        ),
        ("azure-storage-key", format!("AccountKey={}==", rnd(86))),
        (
            "kubeconfig-credential",
            format!("    client-key-data: {}", rnd(120)),
        ),
        (
            "private-key",
            format!(
                "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n{}\n-----END OPENSSH PRIVATE KEY-----",
                rnd(70),
                rnd(70)
            ),
        ),
        ("jwt", format!("eyJ{}.eyJ{}.{}", rnd(20), rnd(40), rnd(43))),
        (
            "connection-string-password",
            "DATABASE_URL=postgres://app:Tr0ub4dor-x9@db.prod.internal:5432/app".to_owned(),
        ),
        (
            "secret-assignment",
            format!("client_secret: \"{}\"", rnd(32)),
        ),
    ];
    let tested: std::collections::BTreeSet<&str> = samples.iter().map(|(d, _)| *d).collect();
    for d in DETECTORS {
        assert!(
            tested.contains(d.name)
                || ["pypi-token", "huggingface-token", "age-secret-key"].contains(&d.name),
            "detector {} has no sample",
            d.name
        );
    }
    for (want, text) in &samples {
        let got = detected(text);
        assert_eq!(got.first(), Some(want), "{want}: found {got:?}");
    }
}

#[test]
fn placeholders_identifiers_and_hashes_are_not_secrets() {
    for text in [
        "password = \"changeme\"",
        "token = self.next_token()",
        "api_key: ${API_KEY}",
        "postgres://user:${DB_PASSWORD}@localhost/db",
        "postgres://postgres:password@localhost/db",
        "AKIAIOSFODNN7EXAMPLE is the documentation key",
        "let secret_len = secret.len();",
        "integrity: sha512-abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
        "checksum = \"1f3c2a9d8e7b6c5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a\"",
        "AUTH_TOKEN_HEADER=authorization",
        "    pub CredentialKey: MSV1_0_CREDENTIAL_KEY,",
        "    pub credentials: MI_UserCredentials_0,",
        "    check_private_key_bytes: x25519_check_private_key_bytes,",
        "    pub PresentHistoryToken: D3DKMT_PRESENTHISTORYTOKEN,",
        "const PrivateKeyAttestMask: X509CertificateTemplatePrivateKeyFlag = 12288i32;",
    ] {
        assert!(detected(text).is_empty(), "{text}: {:?}", detected(text));
    }
}

#[test]
fn fingerprints_are_keyed_stable_and_never_the_secret() {
    let secret = format!("ghp_{}", rnd(36));
    let (k1, k2) = (key(), key());
    let a = Scanner::get().scan(secret.as_bytes(), &k1);
    let b = Scanner::get().scan(secret.as_bytes(), &k1);
    let c = Scanner::get().scan(secret.as_bytes(), &k2);
    assert_eq!(a[0].fingerprint, b[0].fingerprint);
    assert_ne!(
        a[0].fingerprint, c[0].fingerprint,
        "another key, another fingerprint"
    );
    assert!(a[0].fingerprint.starts_with("fp:") && a[0].fingerprint.len() == 19);
    assert!(!a[0].fingerprint.contains(&secret[4..12]));
}

#[test]
fn lines_and_ranges_point_at_the_secret() {
    let token = format!("ghp_{}", rnd(36));
    let text = format!("one\ntwo\nexport GH={token}\n");
    let f = &Scanner::get().scan(text.as_bytes(), &key())[0];
    assert_eq!(f.line, 3);
    assert_eq!(&text[f.range.clone()], token);
}

#[test]
fn command_lines_are_redacted_argument_by_argument() {
    let k = key();
    let token = format!("ghp_{}", rnd(36));
    let password = "Tr0ub4dor-x9-zQ";
    let mut argv: Vec<String> = vec![
        "curl".into(),
        "-H".into(),
        format!("Authorization: token {token}"),
        "--password".into(),
        format!("{password}{}", rnd(8)),
        "https://api.github.com/repos".into(),
    ];
    redact_argv(&mut argv, &k);
    let joined = argv.join(" ");
    assert!(!joined.contains(&token), "{joined}");
    assert!(!joined.contains(password), "{joined}");
    assert!(joined.contains("[secret:github-token:fp:"), "{joined}");
    assert_eq!(argv[0], "curl");
    assert_eq!(argv[5], "https://api.github.com/repos");
    let mut plain = vec!["ls".to_owned(), "-la".to_owned(), "/tmp".to_owned()];
    redact_argv(&mut plain, &k);
    assert_eq!(plain, ["ls", "-la", "/tmp"]);
}

#[test]
fn files_binary_large_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "todo\nrailway token: RAILWAY_TOKEN=3f2b8c1d-9a4e-4b7f-8c2d-1e5f6a7b8c9d\n",
    )
    .unwrap();
    let bin = dir.path().join("blob");
    std::fs::write(&bin, format!("\0\0ELF ghp_{}", rnd(36))).unwrap();
    let k = key();
    let (v, s) = file::scan_file(&file::open(&text).unwrap(), &k).unwrap();
    match &s {
        file::Scanned::Text {
            findings,
            truncated,
            ..
        } => {
            assert_eq!(findings.len(), 1);
            assert_eq!(findings[0].detector, "railway-token");
            assert!(!truncated);
        }
        other => panic!("{other:?}"),
    }
    let (_, b) = file::scan_file(&file::open(&bin).unwrap(), &k).unwrap();
    assert_eq!(b, file::Scanned::Binary);
    let mut cache = file::Cache::new(1);
    cache.insert(v, s.clone());
    assert_eq!(cache.get(&v).as_deref(), Some(&s));
    std::fs::write(&text, "rewritten, no secret any more, a different size\n").unwrap();
    let v2 = file::Version::of(&std::fs::metadata(&text).unwrap());
    assert_ne!(v, v2, "a rewrite is another version");
    assert!(cache.get(&v2).is_none());
    cache.insert(v2, file::Scanned::Binary);
    assert_eq!(cache.len(), 1, "bounded");
}
