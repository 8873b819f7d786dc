//! `[mail]`: the activation email sender.

use api::host_check::is_loopback_host;
use api::Secret;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// Health endpoint of the mail consumer.
    pub listen: String,
    /// `webhook` or `smtp`.
    pub provider: String,
    /// Where the webhook provider is: `https://host[:port]/path`, or `http://` (plain HTTP;
    /// with `webhook_authorization` only to a loopback host).
    pub webhook_url: String,
    /// Optional `Authorization` header value for the provider.
    pub webhook_authorization: Option<Secret>,
    /// A PEM CA bundle the `https://` provider's certificate must chain to (relative to the
    /// config file); without it, the public web's CAs (Mozilla's list, built in).
    pub webhook_ca: Option<std::path::PathBuf>,
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
    pub smtp_password: Option<Secret>,
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
            webhook_ca: None,
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

/// Where the webhook provider is, from `webhook_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `host:port`, the port filled in from the scheme when the URL has none.
    pub addr: String,
    pub path: String,
    pub https: bool,
}

impl MailConfig {
    /// The webhook URL taken apart.
    pub fn webhook_target(&self) -> Result<WebhookTarget, String> {
        let url = &self.webhook_url;
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "mail.webhook_url: {url:?} must start with https:// or http://"
            ));
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            return Err("mail.webhook_url: no host".into());
        }
        let has_port = match host.rfind(']') {
            Some(end) => host[end..].contains(':'),
            None => host.contains(':'),
        };
        let addr = if has_port {
            host.to_string()
        } else {
            format!("{host}:{}", if https { 443 } else { 80 })
        };
        Ok(WebhookTarget {
            addr,
            path: path.to_string(),
            https,
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        match self.provider.as_str() {
            "webhook" => {
                let target = self.webhook_target()?;
                if !target.https
                    && self.webhook_authorization.is_some()
                    && !is_loopback_host(&target.addr)
                {
                    return Err(format!(
                        "mail.webhook_url: {} is plain http:// to another machine, and \
                         webhook_authorization would cross the network in clear: use https://",
                        self.webhook_url
                    ));
                }
            }
            "smtp" => {
                if self.smtp_tls == SmtpTls::None && !is_loopback_host(&self.smtp_host) {
                    return Err(format!(
                        "mail.smtp_tls: \"none\" sends mail and the SMTP password in clear; it is \
                         allowed only to a server on this machine, not {:?}: use starttls or tls",
                        self.smtp_host
                    ));
                }
            }
            other => {
                return Err(format!(
                    "mail.provider: {other:?} is not a provider (webhook or smtp)"
                ))
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str, authorization: Option<&str>) -> Result<(), String> {
        MailConfig {
            webhook_url: url.into(),
            webhook_authorization: authorization.map(Secret::from),
            ..MailConfig::default()
        }
        .validate()
    }

    #[test]
    fn webhooks_take_https_and_keep_authorization_off_plain_networks() {
        webhook("https://mail.example/send", Some("Bearer k")).unwrap();
        webhook("http://127.0.0.1:7201/send", Some("Bearer k")).unwrap();
        webhook("http://localhost:7201/send", Some("Bearer k")).unwrap();
        webhook("http://mail.example/send", None).unwrap();
        let e = webhook("http://mail.example/send", Some("Bearer k")).unwrap_err();
        assert!(e.contains("use https://"), "{e}");
        assert!(webhook("ftp://x/send", None).is_err());
        let t = MailConfig {
            webhook_url: "https://mail.example/v1/send".into(),
            ..MailConfig::default()
        };
        assert_eq!(
            t.webhook_target().unwrap(),
            WebhookTarget {
                addr: "mail.example:443".into(),
                path: "/v1/send".into(),
                https: true
            }
        );
    }

    #[test]
    fn smtp_without_tls_only_to_this_machine() {
        let smtp = |host: &str, tls| {
            MailConfig {
                provider: "smtp".into(),
                smtp_host: host.into(),
                smtp_tls: tls,
                ..MailConfig::default()
            }
            .validate()
        };
        smtp("127.0.0.1", SmtpTls::None).unwrap();
        smtp("localhost", SmtpTls::None).unwrap();
        smtp("smtp.example.com", SmtpTls::Starttls).unwrap();
        let e = smtp("smtp.example.com", SmtpTls::None).unwrap_err();
        assert!(e.contains("mail.smtp_tls"), "{e}");
    }
}
