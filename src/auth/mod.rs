//! API keys and tenants.
//!
//! - The **admin key** (`--admin-key`) is configured, never stored; it manages tenant keys
//!   (`/v1/keys`) and acts as the **default tenant**: the one that owns everything created in
//!   open (keyless) mode, so turning keys on keeps a single-user install's data with its operator.
//! - **Tenant keys** are created by the admin. Only their SHA-256 is stored; a request's key is
//!   hashed, looked up by hash, and the stored hash is compared again in constant time. Each key
//!   belongs to a tenant (its own id unless the admin names an existing tenant, for rotation);
//!   models, datasets and jobs carry their tenant and every query filters by it.
//! - Without an admin key the service is **open**: every caller is the default tenant. That is
//!   only allowed on a loopback bind unless `--insecure-no-auth` (see [`AuthConfig::check_bind`]).
//!
//! This module is pure (no HTTP, no SQL): `api::auth` turns requests into a [`Caller`].

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use clap::Args;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of every key this service issues (helps secret scanners and humans).
pub const KEY_PREFIX: &str = "mp_";

/// Shortest admin key accepted.
pub const MIN_ADMIN_KEY_LEN: usize = 16;

/// A secret string: never printed by `Debug`/`Display` (config dumps, logs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Authentication settings (flattened into [`crate::config::Config`]).
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Admin API key (at least 16 characters). When set, every `/v1` route needs
    /// `Authorization: Bearer <key>`; the admin creates tenant keys at `/v1/keys`. Never logged.
    #[arg(long, env = "MODELPRESS_ADMIN_KEY", hide_env_values = true, conflicts_with = "admin_key_file")]
    pub admin_key: Option<Secret>,

    /// File holding the admin key (instead of `--admin-key`; first line, surrounding whitespace
    /// ignored). If the file does not exist it is created at start-up with a fresh random key
    /// (mode 0600), so a container works on first start without a secret baked into its
    /// configuration: read the key back with `cat` on that file.
    #[arg(long, env = "MODELPRESS_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<std::path::PathBuf>,

    /// Serve without keys on a non-loopback address (anyone who can reach the port can use and
    /// delete everything). Without this flag such a bind refuses to start.
    #[arg(long, env = "MODELPRESS_INSECURE_NO_AUTH", default_value_t = false)]
    pub insecure_no_auth: bool,

    /// Origins allowed to call the API from a browser (CORS): a comma-separated list such as
    /// `https://dash.example.com`, or `*`. Default: none (same-origin only).
    #[arg(long, env = "MODELPRESS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

impl AuthConfig {
    /// Loads `--admin-key-file` into `admin_key`, generating the file first when it does not
    /// exist. Returns the path when a key was generated (the caller logs it; the key itself is
    /// never logged). Errors are configuration errors, worded for the operator.
    pub fn load_key_file(&mut self) -> Result<Option<std::path::PathBuf>, String> {
        let Some(path) = self.admin_key_file.clone() else { return Ok(None) };
        let mut generated = None;
        if !path.exists() {
            write_new_key_file(&path)
                .map_err(|e| format!("cannot create the admin key file {}: {e}", path.display()))?;
            generated = Some(path.clone());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the admin key file {}: {e}", path.display()))?;
        let key = text.lines().next().unwrap_or_default().trim();
        if key.is_empty() {
            return Err(format!("the admin key file {} is empty", path.display()));
        }
        self.admin_key = Some(Secret::new(key));
        Ok(generated)
    }

    /// Refuses configurations that would expose the service without keys, or with a weak
    /// admin key. Logs which mode the service runs in.
    pub fn check_bind(&self, bind: SocketAddr) -> Result<(), String> {
        match &self.admin_key {
            Some(k) if k.expose().trim().len() < MIN_ADMIN_KEY_LEN => Err(format!(
                "--admin-key must be at least {MIN_ADMIN_KEY_LEN} characters (use e.g. `openssl rand -hex 32`)"
            )),
            Some(_) => {
                tracing::info!("API keys required on /v1 (admin key configured)");
                Ok(())
            }
            None if bind.ip().is_loopback() => {
                tracing::warn!(
                    %bind,
                    "no --admin-key: running open in single-user mode (anyone on this machine can use the API)"
                );
                Ok(())
            }
            None if self.insecure_no_auth => {
                tracing::warn!(
                    %bind,
                    "no --admin-key and --insecure-no-auth on a non-loopback address: ANYONE who can reach \
                     this port can read, run and delete everything"
                );
                Ok(())
            }
            None => Err(format!(
                "refusing to serve on the non-loopback address {bind} without API keys: set --admin-key \
                 (MODELPRESS_ADMIN_KEY), bind 127.0.0.1, or pass --insecure-no-auth to accept the risk"
            )),
        }
    }
}

pub use crate::tenant::Tenant;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No keys configured: everyone is the default tenant, and there is nothing to manage.
    Open,
    Admin,
    Tenant,
}

/// The authenticated caller of a request (a request extension set by the middleware).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub tenant: Tenant,
    /// Id of the tenant key used (rate limits are per key); `admin` / `open` otherwise.
    pub key_id: String,
}

impl Caller {
    pub fn open() -> Caller {
        Caller { role: Role::Open, tenant: Tenant::Default, key_id: "open".into() }
    }
    pub fn admin() -> Caller {
        Caller { role: Role::Admin, tenant: Tenant::Default, key_id: "admin".into() }
    }
}

/// Creates `path` (and its parent) holding a fresh [`generate_key`], owner-only, never
/// overwriting an existing file (`create_new`: two processes racing cannot swap keys).
fn write_new_key_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    writeln!(f, "{}", generate_key())?;
    f.sync_all()
}

/// A fresh key: `mp_` + 64 hex digits (32 random bytes from the OS-seeded CSPRNG).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// SHA-256 of a key, hex. Keys are 256-bit random, so a plain hash (no salt, no KDF) is
/// enough: there is nothing to brute-force.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the optimiser from short-circuiting the loop.
    std::hint::black_box(diff) == 0
}

/// Checks a presented key against the admin key: both hashed first, so the comparison is
/// over fixed-length digests and leaks nothing about the admin key's length.
pub fn is_admin_key(presented: &str, admin: &Secret) -> bool {
    constant_time_eq(&Sha256::digest(presented.as_bytes()), &Sha256::digest(admin.expose().as_bytes()))
}

/// Validates a tenant id chosen by the admin: 1-64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_tenant_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hash_stably() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(hash_key(&a).len(), 64);
        // Known vector: sha256("abc").
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn admin_key_check() {
        let admin = Secret::new("0123456789abcdef-admin");
        assert!(is_admin_key("0123456789abcdef-admin", &admin));
        assert!(!is_admin_key("0123456789abcdef-admiN", &admin));
        assert!(!is_admin_key("", &admin));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        let c = AuthConfig { admin_key: Some(s), insecure_no_auth: false, cors_origins: vec![], admin_key_file: None };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn key_file_is_generated_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.key");
        let mut c = AuthConfig {
            admin_key: None,
            insecure_no_auth: false,
            cors_origins: vec![],
            admin_key_file: Some(path.clone()),
        };
        assert_eq!(c.load_key_file().unwrap(), Some(path.clone()));
        let first = c.admin_key.clone().unwrap();
        assert!(first.expose().starts_with(KEY_PREFIX) && first.expose().len() > MIN_ADMIN_KEY_LEN);
        assert!(c.check_bind("0.0.0.0:8080".parse().unwrap()).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Second start: the same key, nothing generated.
        let mut again = AuthConfig { admin_key: None, ..c.clone() };
        assert_eq!(again.load_key_file().unwrap(), None);
        assert_eq!(again.admin_key.unwrap(), first);
        // An operator-written file with surrounding whitespace.
        std::fs::write(&path, "  a-long-enough-admin-key \n").unwrap();
        let mut op = AuthConfig { admin_key: None, ..c.clone() };
        op.load_key_file().unwrap();
        assert_eq!(op.admin_key.unwrap().expose(), "a-long-enough-admin-key");
        std::fs::write(&path, "\n").unwrap();
        let mut empty = AuthConfig { admin_key: None, ..c };
        assert!(empty.load_key_file().unwrap_err().contains("empty"));
    }

    #[test]
    fn bind_policy() {
        let open = AuthConfig { admin_key: None, insecure_no_auth: false, cors_origins: vec![], admin_key_file: None };
        assert!(open.check_bind("127.0.0.1:0".parse().unwrap()).is_ok());
        assert!(open.check_bind("[::1]:0".parse().unwrap()).is_ok());
        let e = open.check_bind("0.0.0.0:8080".parse().unwrap()).unwrap_err();
        assert!(e.contains("--admin-key") && e.contains("--insecure-no-auth"), "{e}");
        let insecure = AuthConfig { insecure_no_auth: true, ..open.clone() };
        assert!(insecure.check_bind("0.0.0.0:8080".parse().unwrap()).is_ok());
        let weak = AuthConfig { admin_key: Some(Secret::new("short")), ..open.clone() };
        assert!(weak.check_bind("127.0.0.1:0".parse().unwrap()).is_err());
        let keyed = AuthConfig { admin_key: Some(Secret::new("a-long-enough-admin-key")), ..open };
        assert!(keyed.check_bind("0.0.0.0:8080".parse().unwrap()).is_ok());
    }

    #[test]
    fn tenant_ids() {
        assert!(valid_tenant_id("team-a_1.x"));
        assert!(!valid_tenant_id(""));
        assert!(!valid_tenant_id("a b"));
        assert!(!valid_tenant_id(&"x".repeat(65)));
        assert_eq!(Tenant::from_column(None), Tenant::Default);
        assert_eq!(Tenant::Named("t".into()).id(), Some("t"));
    }
}
