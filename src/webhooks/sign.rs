//! Event signatures: HMAC-SHA256 over `"<t>.<body>"` with the webhook's secret, sent as
//! `Modelpress-Signature: t=<unix seconds>,v1=<hex>` (the Stripe convention: the timestamp is
//! signed too, so a receiver can refuse replays of old events).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "Modelpress-Signature";

/// Prefix of generated secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Shortest secret a client may choose for a job's webhook.
pub const MIN_SECRET_LEN: usize = 16;

/// A new random secret (`whsec_` + 32 random bytes as hex).
pub fn generate_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{SECRET_PREFIX}{}", hex::encode(b))
}

/// Hex HMAC-SHA256 of `"<t>.<body>"`.
pub fn digest(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Modelpress-Signature` header value.
pub fn header_value(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", digest(secret, t, body))
}

/// Checks a header value the way a receiver would (constant-time compare); `tolerance_secs`
/// bounds the age of `t` against `now`. Used by the tests and the docs' example.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance_secs {
        return false;
    }
    sigs.iter().any(|s| {
        let Ok(given) = hex::decode(s) else { return false };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&given).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // Independent value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            digest("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_eq!(
            header_value("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn verify_accepts_own_and_refuses_tampering() {
        let body = br#"{"type":"job.succeeded"}"#;
        let h = header_value("s3cret-s3cret-s3cret", 1000, body);
        assert!(verify("s3cret-s3cret-s3cret", &h, body, 1010, 300));
        assert!(!verify("other-secret-value", &h, body, 1010, 300));
        assert!(!verify("s3cret-s3cret-s3cret", &h, br#"{"type":"job.failed"}"#, 1010, 300));
        assert!(!verify("s3cret-s3cret-s3cret", &h, body, 5000, 300), "too old");
        assert!(!verify("s3cret-s3cret-s3cret", "v1=00", body, 1000, 300), "no timestamp");
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let a = generate_secret();
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_ne!(a, generate_secret());
    }
}
