//! Activation tokens: `<user id>.<expiry unix seconds>.<HMAC-SHA256>`, the MAC in base64url,
//! over the id, the expiry and the email address the link was sent to. Stateless, so any node
//! (and the mail consumer, which makes the links) can check them with the shared secret.
//!
//! The address is in the MAC but not in the token (a link should not carry it): checking a
//! token needs the account's current address, from its folded stream. A link sent before an
//! email change therefore stops working, and a link is only ever good for the mailbox it
//! reached.

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
    #[error(
        "the activation token's signature is wrong, or the link was sent to an address the \
         account no longer has"
    )]
    BadSignature,
    #[error("the activation token has expired")]
    Expired,
}

fn mac(secret: &str, id: Uuid, expires_s: u64, email: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    m.update(format!("activate.{id}.{expires_s}.{email}").as_bytes());
    m
}

/// A token for account `id` at address `email` that expires at `expires_s` (Unix seconds).
pub fn make_token(secret: &str, id: Uuid, email: &str, expires_s: u64) -> String {
    let sig = URL_SAFE_NO_PAD.encode(mac(secret, id, expires_s, email).finalize().into_bytes());
    format!("{id}.{expires_s}.{sig}")
}

/// A token as read from a link, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationToken {
    pub id: Uuid,
    pub expires_s: u64,
    sig: Vec<u8>,
}

impl ActivationToken {
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let mut parts = token.splitn(3, '.');
        let (Some(id), Some(exp), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        Ok(ActivationToken {
            id: id.parse().map_err(|_| TokenError::Malformed)?,
            expires_s: exp.parse().map_err(|_| TokenError::Malformed)?,
            sig: URL_SAFE_NO_PAD
                .decode(sig)
                .map_err(|_| TokenError::Malformed)?,
        })
    }

    pub fn check_expiry(&self, now_s: u64) -> Result<(), TokenError> {
        if now_s >= self.expires_s {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// Whether it was made with `secret` for the account at `email`, compared in constant
    /// time.
    pub fn verify(&self, secret: &str, email: &str) -> Result<(), TokenError> {
        mac(secret, self.id, self.expires_s, email)
            .verify_slice(&self.sig)
            .map_err(|_| TokenError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(secret: &str, token: &str, email: &str, now_s: u64) -> Result<Uuid, TokenError> {
        let t = ActivationToken::parse(token)?;
        t.check_expiry(now_s)?;
        t.verify(secret, email)?;
        Ok(t.id)
    }

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let id = Uuid::from_u128(42);
        let t = make_token("s3cret", id, "a@x.io", 1000);
        assert_eq!(check("s3cret", &t, "a@x.io", 999), Ok(id));
        assert_eq!(
            check("s3cret", &t, "a@x.io", 1000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            check("other", &t, "a@x.io", 1),
            Err(TokenError::BadSignature)
        );
        let later = t.replace(".1000.", ".9999.");
        assert_eq!(
            check("s3cret", &later, "a@x.io", 1),
            Err(TokenError::BadSignature)
        );
        let other_id = t.replacen(&id.to_string(), &Uuid::from_u128(43).to_string(), 1);
        assert_eq!(
            check("s3cret", &other_id, "a@x.io", 1),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            check("s3cret", "garbage", "a@x.io", 1),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            check("s3cret", "a.b.c", "a@x.io", 1),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn a_token_is_good_only_for_the_address_it_was_sent_to() {
        let id = Uuid::from_u128(7);
        let t = make_token("s3cret", id, "old@x.io", 1000);
        assert_eq!(check("s3cret", &t, "old@x.io", 1), Ok(id));
        assert_eq!(
            check("s3cret", &t, "new@x.io", 1),
            Err(TokenError::BadSignature)
        );
    }
}
