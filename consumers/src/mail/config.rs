//! `[mail]`: the activation email sender.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// Health endpoint of the mail consumer.
    pub listen: String,
    /// `webhook` or `smtp`.
    pub provider: String,
    /// Where the webhook provider is: `http://host:port/path`.
    pub webhook_url: String,
    /// Optional `Authorization` header value for the provider.
    pub webhook_authorization: Option<String>,
    /// One provider call may take this long; then it counts as a transient failure.
    pub timeout_ms: u64,
    /// Write the checkpoint after this many events or this long, when it advanced.
    pub checkpoint_every_events: u64,
    pub checkpoint_every_ms: u64,
    /// Backoff of retries of one event: full jitter up to base * 2^n, capped.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Consecutive failures that open the breaker, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_cool_down_ms: u64,
    /// Sender address in the emails.
    pub from: String,
    /// SMTP server, and how to secure the connection: `none` (local servers only),
    /// `starttls` or `tls`.
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            listen: "127.0.0.1:7102".into(),
            provider: "webhook".into(),
            webhook_url: "http://127.0.0.1:7201/send".into(),
            webhook_authorization: None,
            timeout_ms: 5000,
            checkpoint_every_events: 50,
            checkpoint_every_ms: 1000,
            retry_base_ms: 100,
            retry_max_ms: 10_000,
            breaker_failures: 5,
            breaker_cool_down_ms: 5000,
            from: "uniqlog <no-reply@localhost>".into(),
            smtp_host: "localhost".into(),
            smtp_port: 587,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: None,
            smtp_password: None,
        }
    }
}

impl MailConfig {
    /// `(host:port, path)` of the webhook URL.
    pub fn webhook_target(&self) -> Result<(String, String), String> {
        let rest = self
            .webhook_url
            .strip_prefix("http://")
            .ok_or("mail.webhook_url: only http:// is supported so far")?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            return Err("mail.webhook_url: no host".into());
        }
        Ok((host.to_string(), path.to_string()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.provider != "webhook" {
            return Err(format!(
                "mail.provider: {:?} is not supported (webhook)",
                self.provider
            ));
        }
        self.webhook_target()?;
        for (k, v) in [
            ("mail.timeout_ms", self.timeout_ms),
            ("mail.checkpoint_every_events", self.checkpoint_every_events),
            ("mail.checkpoint_every_ms", self.checkpoint_every_ms),
            ("mail.retry_base_ms", self.retry_base_ms),
            ("mail.retry_max_ms", self.retry_max_ms),
        ] {
            if v == 0 {
                return Err(format!("{k}: must be positive"));
            }
        }
        Ok(())
    }
}
