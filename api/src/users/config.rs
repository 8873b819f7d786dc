//! `[users]`: the sign-up flow's settings.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// HMAC key of activation tokens; the nodes and the mail consumer share it. Empty means
    /// activation is not configured (its endpoints answer 503).
    pub activation_secret: String,
    /// How long an activation link stays valid.
    pub activation_ttl_s: u64,
    /// Base of the activation link in emails (`{public_base_url}/v1/users/activate?token=`).
    pub public_base_url: String,
    /// argon2id cost: memory, passes and lanes. Cheap in tests, OWASP's minimum by default.
    pub password_memory_kib: u32,
    pub password_iterations: u32,
    pub password_parallelism: u32,
    /// Longest accepted password (hashing cost is bounded by it).
    pub password_bytes_max: usize,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            activation_secret: String::new(),
            activation_ttl_s: 24 * 60 * 60,
            public_base_url: "http://127.0.0.1:7001".into(),
            password_memory_kib: 19 * 1024,
            password_iterations: 2,
            password_parallelism: 1,
            password_bytes_max: 1024,
        }
    }
}

impl UsersConfig {
    /// The error names the key.
    pub fn validate(&self) -> Result<(), String> {
        argon2::Params::new(
            self.password_memory_kib,
            self.password_iterations,
            self.password_parallelism,
            None,
        )
        .map_err(|e| format!("users.password_*: {e}"))?;
        if self.activation_ttl_s == 0 {
            return Err("users.activation_ttl_s: must be positive".into());
        }
        if !self.public_base_url.starts_with("http://")
            && !self.public_base_url.starts_with("https://")
        {
            return Err("users.public_base_url: must start with http:// or https://".into());
        }
        if self.password_bytes_max < 8 {
            return Err("users.password_bytes_max: must be at least 8".into());
        }
        Ok(())
    }
}
