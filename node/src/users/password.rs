//! argon2id password hashing, on the node that receives the password: the password itself
//! never travels further, only its PHC-format hash enters the log.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

use super::config::UsersConfig;

/// Hash `password` with a fresh random salt. CPU-bound: call through `raft_store::blocking`.
pub fn hash_password(config: &UsersConfig, password: &str) -> Result<String, String> {
    let params = Params::new(
        config.password_memory_kib,
        config.password_iterations,
        config.password_parallelism,
        None,
    )
    .map_err(|e| e.to_string())?;
    let mut salt = [0u8; 16];
    api::runtime::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let c = UsersConfig {
            password_memory_kib: 64,
            password_iterations: 1,
            ..UsersConfig::default()
        };
        let a = hash_password(&c, "correct horse").unwrap();
        let b = hash_password(&c, "correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(!a.contains("correct horse"));
        let parsed = PasswordHash::new(&a).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
    }
}
