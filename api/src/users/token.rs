//! Activation tokens: `<user id>.<expiry unix seconds>.<HMAC-SHA256 of both>`, base64url.
//! Stateless, so any node (and the mail consumer, which makes the links) can check them with
//! the shared secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the activation token is malformed")]
    Malformed,
    #[error("the activation token's signature is wrong")]
    BadSignature,
    #[error("the activation token has expired")]
    Expired,
}

fn mac(secret: &str, payload: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    m.update(payload.as_bytes());
    m
}

/// A token for `id` that expires at `expires_s` (Unix seconds).
pub fn make_token(secret: &str, id: Uuid, expires_s: u64) -> String {
    let payload = format!("{id}.{expires_s}");
    let sig = URL_SAFE_NO_PAD.encode(mac(secret, &payload).finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// The user id of a valid, unexpired token. The signature is compared in constant time.
pub fn check_token(secret: &str, token: &str, now_s: u64) -> Result<Uuid, TokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some(id), Some(exp), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let id: Uuid = id.parse().map_err(|_| TokenError::Malformed)?;
    let expires: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    mac(secret, &format!("{id}.{expires}"))
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    if now_s >= expires {
        return Err(TokenError::Expired);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let id = Uuid::from_u128(42);
        let t = make_token("s3cret", id, 1000);
        assert_eq!(check_token("s3cret", &t, 999), Ok(id));
        assert_eq!(check_token("s3cret", &t, 1000), Err(TokenError::Expired));
        assert_eq!(check_token("other", &t, 1), Err(TokenError::BadSignature));
        let later = t.replace(".1000.", ".9999.");
        assert_eq!(
            check_token("s3cret", &later, 1),
            Err(TokenError::BadSignature)
        );
        let other_id = t.replacen(&id.to_string(), &Uuid::from_u128(43).to_string(), 1);
        assert_eq!(
            check_token("s3cret", &other_id, 1),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            check_token("s3cret", "garbage", 1),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            check_token("s3cret", "a.b.c", 1),
            Err(TokenError::Malformed)
        );
    }
}
