//! `[users]`: the sign-up flow's settings.

use serde::Deserialize;

use crate::secret::Secret;

/// The `activation_secret` of the shipped `cluster.toml`: public, so good for loopback only.
pub const SHIPPED_ACTIVATION_SECRET: &str = "dev-only-secret-change-me";

/// The shortest `activation_secret` a node on a non-loopback address accepts.
pub const ACTIVATION_SECRET_BYTES_MIN: usize = 32;

/// OWASP's argon2id minimums (Password Storage Cheat Sheet): (memory KiB, passes), any one of
/// them, with one lane.
pub const PASSWORD_COST_FLOORS: [(u32, u32); 5] = [
    (47_104, 1),
    (19_456, 2),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
];

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// HMAC key of activation tokens; the nodes and the mail consumer share it. Empty means
    /// activation is not configured (its endpoints answer 503). Prefer
    /// `activation_secret_file` or `UNIQLOG_ACTIVATION_SECRET` to keeping it in the config.
    pub activation_secret: Secret,
    /// A file holding the activation secret (trailing whitespace ignored).
    pub activation_secret_file: Option<std::path::PathBuf>,
    /// How soon after an activation email the next may be asked for, per account.
    pub activation_resend_interval_s: u64,
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
            activation_secret: Secret::default(),
            activation_secret_file: None,
            activation_resend_interval_s: 60,
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
    /// Whether the activation secret is one a node reachable from other machines may use: not
    /// the shipped one, at least [`ACTIVATION_SECRET_BYTES_MIN`] bytes. Empty (activation off)
    /// is fine.
    pub fn weak_activation_secret(&self) -> Option<String> {
        let s = &self.activation_secret;
        if s.is_empty() {
            None
        } else if s.expose() == SHIPPED_ACTIVATION_SECRET {
            Some("is the one shipped in cluster.toml, which anyone can read".into())
        } else if s.len() < ACTIVATION_SECRET_BYTES_MIN {
            Some(format!(
                "is {} bytes long; it must be at least {ACTIVATION_SECRET_BYTES_MIN}",
                s.len()
            ))
        } else {
            None
        }
    }

    /// Refuse a password cost below OWASP's minimum. Test and simulation builds hash with
    /// almost no cost (a sign-up would otherwise take a core for 20 ms); release builds, what
    /// operators run, never do.
    pub fn check_password_cost_floor(&self) -> Result<(), String> {
        let (m, t) = (self.password_memory_kib, self.password_iterations);
        if PASSWORD_COST_FLOORS
            .iter()
            .any(|(fm, ft)| m >= *fm && t >= *ft)
        {
            return Ok(());
        }
        Err(format!(
            "users.password_memory_kib = {m} with password_iterations = {t} is below OWASP's \
             minimum for argon2id (19456 KiB with 2 passes, or 47104 KiB with 1, 12288 with 3, \
             9216 with 4, 7168 with 5); only test builds accept less"
        ))
    }

    /// The error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !cfg!(any(debug_assertions, madsim)) {
            self.check_password_cost_floor()?;
        }
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
        if self.activation_resend_interval_s == 0 {
            return Err("users.activation_resend_interval_s: must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_cost_below_owasp_is_refused_and_each_floor_is_enough() {
        let cost = |m, t| UsersConfig {
            password_memory_kib: m,
            password_iterations: t,
            ..UsersConfig::default()
        };
        let e = cost(64, 1).check_password_cost_floor().unwrap_err();
        assert!(e.contains("below OWASP's minimum"), "{e}");
        assert!(cost(19_455, 2).check_password_cost_floor().is_err());
        assert!(cost(47_103, 1).check_password_cost_floor().is_err());
        for (m, t) in PASSWORD_COST_FLOORS {
            cost(m, t).check_password_cost_floor().unwrap();
        }
        UsersConfig::default().check_password_cost_floor().unwrap();
    }

    #[test]
    fn the_shipped_and_short_activation_secrets_are_weak() {
        let with = |s: &str| UsersConfig {
            activation_secret: s.into(),
            ..UsersConfig::default()
        };
        assert!(with(SHIPPED_ACTIVATION_SECRET)
            .weak_activation_secret()
            .unwrap()
            .contains("shipped"));
        assert!(with("short")
            .weak_activation_secret()
            .unwrap()
            .contains("32"));
        assert_eq!(with(&"k".repeat(32)).weak_activation_secret(), None);
        assert_eq!(with("").weak_activation_secret(), None);
        assert!(!format!("{:?}", with("hunter2")).contains("hunter2"));
    }
}
