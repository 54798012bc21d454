//! The detectors: credential formats as their issuers document them, and three shapes that
//! carry a credential whatever its issuer (private keys, connection strings with a password,
//! high-entropy assignments to a secret-sounding name).
//!
//! Every detector names keywords; a detector's pattern runs only on data where one of them
//! occurs (one Aho-Corasick pass finds them all), which is what keeps a scan of a source tree
//! fast. The secret is the pattern's group `s`, or the whole match. Specific detectors come
//! first: where two matches overlap, the earlier detector names the finding.

/// One credential format.
#[derive(Debug)]
pub struct Detector {
    pub name: &'static str,
    /// What it finds, for `guard secrets detectors`.
    pub what: &'static str,
    /// Literals one of which every match contains (compared without regard to ASCII case).
    pub keywords: &'static [&'static str],
    /// A `regex::bytes` pattern.
    pub pattern: &'static str,
    /// How the secret must look beyond the pattern.
    pub check: Check,
}

/// What a matched secret must also be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Check {
    /// The format identifies it (a vendor prefix, a checksum-like shape): nothing more.
    Format,
    /// At least this many bits of Shannon entropy per byte, letters and digits both present,
    /// and not a placeholder.
    Random(f32),
    /// A password inside a URL: not empty, not a placeholder or a variable reference.
    Password,
}

/// An assignment of a value to a name that contains `$name`, within a few characters.
macro_rules! named {
    ($name:literal, $value:literal) => {
        concat!(
            r#"(?i)"#,
            $name,
            r#"[a-z0-9_.\-]{0,24}["']?\s{0,3}(?:=|:|:=|=>)\s{0,3}["']?(?P<s>"#,
            $value,
            r#")"#
        )
    };
}

pub static DETECTORS: &[Detector] = &[
    Detector {
        name: "aws-access-key-id",
        what: "AWS access key id (AKIA…, ASIA… temporary)",
        keywords: &["AKIA", "ASIA", "ABIA", "ACCA"],
        pattern: r"\b(?P<s>(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
        check: Check::Format,
    },
    Detector {
        name: "aws-secret-access-key",
        what: "AWS secret access key assigned to an aws…secret/key name",
        keywords: &["aws"],
        pattern: concat!(
            r#"(?i)aws[a-z0-9_.\-]{0,20}(?:secret|key)[a-z0-9_.\-]{0,20}["']?\s{0,3}(?:=|:)"#,
            r#"\s{0,3}["']?(?P<s>[A-Za-z0-9/+=]{40})\b"#
        ),
        check: Check::Random(3.5),
    },
    Detector {
        name: "github-token",
        what: "GitHub personal, OAuth, user, server and refresh tokens (ghp_, gho_, ghu_, ghs_, ghr_)",
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        pattern: r"\b(?P<s>gh[pousr]_[A-Za-z0-9]{36,251})\b",
        check: Check::Format,
    },
    Detector {
        name: "github-fine-grained-token",
        what: "GitHub fine-grained personal access token (github_pat_)",
        keywords: &["github_pat_"],
        pattern: r"\b(?P<s>github_pat_[A-Za-z0-9_]{80,})\b",
        check: Check::Format,
    },
    Detector {
        name: "gitlab-token",
        what: "GitLab personal, project, deploy, runner, CI job and feed tokens",
        keywords: &[
            "glpat-", "glptt-", "gldt-", "glrt-", "glcbt-", "glimt-", "glft-", "glsoat-",
        ],
        pattern: r"\b(?P<s>gl(?:pat|ptt|dt|rt|cbt|imt|ft|soat)-[A-Za-z0-9_\-]{20,})",
        check: Check::Format,
    },
    Detector {
        name: "stripe-key",
        what: "Stripe secret and restricted keys (sk_live_, rk_live_, sk_test_, rk_test_)",
        keywords: &["sk_live_", "rk_live_", "sk_test_", "rk_test_"],
        pattern: r"\b(?P<s>[sr]k_(?:live|test)_[A-Za-z0-9]{20,247})\b",
        check: Check::Format,
    },
    Detector {
        name: "slack-token",
        what: "Slack bot, user, app and refresh tokens (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, xapp-)",
        keywords: &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe", "xapp-"],
        pattern: r"\b(?P<s>(?:xox[bpars]|xoxe(?:\.xox[bp])?|xapp)-[A-Za-z0-9\-]{10,})",
        check: Check::Format,
    },
    Detector {
        name: "slack-webhook",
        what: "Slack incoming webhook URL",
        keywords: &["hooks.slack.com"],
        pattern: r"(?P<s>https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]{20,})",
        check: Check::Format,
    },
    Detector {
        name: "openai-key",
        what: "OpenAI API key (sk-…T3BlbkFJ…, project, service account and admin keys)",
        keywords: &["T3BlbkFJ"],
        pattern: r"\b(?P<s>sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{16,}T3BlbkFJ[A-Za-z0-9_\-]{16,})",
        check: Check::Format,
    },
    Detector {
        name: "anthropic-key",
        what: "Anthropic API and admin keys (sk-ant-api03-, sk-ant-admin01-)",
        keywords: &["sk-ant-"],
        pattern: r"\b(?P<s>sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_\-]{80,})",
        check: Check::Format,
    },
    Detector {
        name: "google-api-key",
        what: "Google Cloud / Firebase API key (AIza…)",
        keywords: &["AIza"],
        pattern: r"\b(?P<s>AIza[0-9A-Za-z_\-]{35})",
        check: Check::Format,
    },
    Detector {
        name: "huggingface-token",
        what: "Hugging Face access token (hf_)",
        keywords: &["hf_"],
        pattern: r"\b(?P<s>hf_[A-Za-z]{34,40})\b",
        check: Check::Random(3.5),
    },
    Detector {
        name: "npm-token",
        what: "npm access token (npm_)",
        keywords: &["npm_"],
        pattern: r"\b(?P<s>npm_[A-Za-z0-9]{36})\b",
        check: Check::Random(3.5),
    },
    Detector {
        name: "pypi-token",
        what: "PyPI upload token (pypi-AgEIcHlwaS5vcmc…)",
        keywords: &["pypi-AgEIcHlwaS5vcmc"],
        pattern: r"\b(?P<s>pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,})",
        check: Check::Format,
    },
    Detector {
        name: "digitalocean-token",
        what: "DigitalOcean personal, OAuth and refresh tokens (dop_v1_, doo_v1_, dor_v1_)",
        keywords: &["dop_v1_", "doo_v1_", "dor_v1_"],
        pattern: r"\b(?P<s>do[por]_v1_[a-f0-9]{64})\b",
        check: Check::Format,
    },
    Detector {
        name: "supabase-key",
        what: "Supabase personal access token and secret API key (sbp_, sb_secret_)",
        keywords: &["sbp_", "sb_secret_"],
        pattern: r"\b(?P<s>sbp_[a-f0-9]{40}|sb_secret_[A-Za-z0-9_\-]{20,})",
        check: Check::Format,
    },
    Detector {
        name: "fly-token",
        what: "Fly.io access tokens (FlyV1 fm1_/fm2_ macaroons, fo1_ org tokens)",
        keywords: &["FlyV1", "fm1_", "fm2_", "fo1_"],
        pattern: r"(?P<s>FlyV1 fm[12][ar]?_[A-Za-z0-9+/=_,\-]{60,}|\bfm[12][ar]?_[A-Za-z0-9+/=_\-]{60,}|\bfo1_[A-Za-z0-9_\-]{40,})",
        check: Check::Format,
    },
    Detector {
        name: "heroku-key",
        what: "Heroku API key (HRKU-…, or a UUID assigned to a heroku… name)",
        keywords: &["HRKU-", "heroku"],
        pattern: r#"(?P<s>\bHRKU-[A-Za-z0-9_\-]{60,})|(?i)heroku[a-z0-9_.\-]{0,24}["']?\s{0,3}(?:=|:)\s{0,3}["']?(?P<u>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"#,
        check: Check::Format,
    },
    Detector {
        name: "railway-token",
        what: "Railway account, team or project token (a UUID assigned to a railway… name)",
        keywords: &["railway"],
        pattern: named!(
            "railway",
            r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
        ),
        check: Check::Format,
    },
    Detector {
        name: "vercel-token",
        what: "Vercel access token (vercel_… or 24 characters assigned to a vercel… name)",
        keywords: &["vercel"],
        pattern: r#"(?P<s>\bvercel_[A-Za-z0-9_\-]{24,})|(?i)vercel[a-z0-9_.\-]{0,24}["']?\s{0,3}(?:=|:)\s{0,3}["']?(?P<u>[A-Za-z0-9]{24})\b"#,
        check: Check::Random(3.5),
    },
    Detector {
        name: "cloudflare-token",
        what: "Cloudflare API token or global key assigned to a cloudflare…/cf_api… name",
        keywords: &["cloudflare", "cf_api"],
        pattern: r#"(?i)(?:cloudflare|cf_api)[a-z0-9_.\-]{0,24}["']?\s{0,3}(?:=|:)\s{0,3}["']?(?P<s>[A-Za-z0-9_\-]{37,40})\b"#,
        check: Check::Random(3.5),
    },
    Detector {
        name: "sendgrid-key",
        what: "SendGrid API key (SG.….…)",
        keywords: &["SG."],
        pattern: r"\b(?P<s>SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})\b",
        check: Check::Format,
    },
    Detector {
        name: "shopify-token",
        what: "Shopify access tokens (shpat_, shpca_, shppa_, shpss_)",
        keywords: &["shpat_", "shpca_", "shppa_", "shpss_"],
        pattern: r"\b(?P<s>shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})\b",
        check: Check::Format,
    },
    Detector {
        name: "linear-key",
        what: "Linear API key (lin_api_)",
        keywords: &["lin_api_"],
        pattern: r"\b(?P<s>lin_api_[A-Za-z0-9]{40})\b",
        check: Check::Format,
    },
    Detector {
        name: "doppler-token",
        what: "Doppler tokens (dp.pt., dp.st., dp.sa., dp.ct.)",
        keywords: &["dp.pt.", "dp.st.", "dp.sa.", "dp.ct.", "dp.scim."],
        pattern: r"\b(?P<s>dp\.(?:pt|st|sa|ct|scim)\.[A-Za-z0-9]{40,44})\b",
        check: Check::Format,
    },
    Detector {
        name: "databricks-token",
        what: "Databricks personal access token (dapi…)",
        keywords: &["dapi"],
        pattern: r"\b(?P<s>dapi[a-f0-9]{32}(?:-\d)?)\b",
        check: Check::Random(3.0),
    },
    Detector {
        name: "terraform-cloud-token",
        what: "Terraform Cloud / HCP API token (….atlasv1.…)",
        keywords: &[".atlasv1."],
        pattern: r"\b(?P<s>[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=\-]{60,70})",
        check: Check::Format,
    },
    Detector {
        name: "azure-storage-key",
        what: "Azure storage account key in a connection string (AccountKey=)",
        keywords: &["AccountKey="],
        pattern: r"AccountKey=(?P<s>[A-Za-z0-9+/]{86}==)",
        check: Check::Format,
    },
    Detector {
        name: "age-secret-key",
        what: "age encryption secret key (AGE-SECRET-KEY-1…)",
        keywords: &["AGE-SECRET-KEY-1"],
        pattern: r"(?P<s>AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})",
        check: Check::Format,
    },
    Detector {
        name: "kubeconfig-credential",
        what: "Kubernetes client key in a kubeconfig (client-key-data)",
        keywords: &["client-key-data"],
        pattern: r"client-key-data:\s{0,3}(?P<s>[A-Za-z0-9+/=]{64,})",
        check: Check::Format,
    },
    Detector {
        name: "private-key",
        what: "PEM private key (RSA, EC, DSA, OpenSSH, PKCS#8, PGP)",
        keywords: &["PRIVATE KEY"],
        pattern: r"-----BEGIN[A-Z ]{0,20} PRIVATE KEY(?: BLOCK)?-----(?P<s>[\sA-Za-z0-9+/=:,\-]{64,}?)-----END",
        check: Check::Format,
    },
    Detector {
        name: "jwt",
        what: "JSON Web Token (service-role and session tokens: Supabase, Firebase, …)",
        keywords: &["eyJ"],
        pattern: r"\b(?P<s>eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{20,})",
        check: Check::Format,
    },
    Detector {
        name: "connection-string-password",
        what: "a password in a database or broker URL (postgres://user:PASSWORD@host, mysql, mongodb, redis, amqp, …)",
        keywords: &["://"],
        pattern: r#"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|clickhouse|cockroachdb)://[^\s:@/'"]{1,64}:(?P<s>[^\s@/'"]{3,128})@[^\s'"/]"#,
        check: Check::Password,
    },
    Detector {
        name: "secret-assignment",
        what: "a random-looking value assigned to a name with secret, token, password, api key, access key or credential in it",
        keywords: &[
            "secret",
            "token",
            "passw",
            "pwd",
            "apikey",
            "api_key",
            "api-key",
            "access_key",
            "accesskey",
            "access-key",
            "auth_key",
            "credential",
            "private_key",
        ],
        pattern: concat!(
            r#"(?i)\b[a-z0-9_.\-]{0,32}(?:secret|token|passw(?:or)?d|pwd|api[_\-]?key|access[_\-]?key|auth[_\-]?key|credentials?|private[_\-]?key)"#,
            r#"[a-z0-9_.\-]{0,32}["']?\s{0,3}(?:=|:|:=|=>)\s{0,3}["'`]?(?P<s>[A-Za-z0-9+/=_\-.~!@#%^*]{16,200})"#
        ),
        check: Check::Random(3.7),
    },
];
