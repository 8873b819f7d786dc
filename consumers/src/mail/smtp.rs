//! The SMTP provider (lettre over tokio, rustls for STARTTLS and TLS). Real builds only: the
//! simulator's consumers use the webhook provider through the transport seam.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{MailConfig, SmtpTls};
use super::provider::{Delivery, Outgoing};

pub struct Smtp {
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Smtp {
    pub fn new(c: &MailConfig) -> Result<Smtp, String> {
        let host = c.smtp_host.as_str();
        let builder = match c.smtp_tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| format!("mail.smtp_host: {e}"))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| format!("mail.smtp_host: {e}"))?,
        };
        let mut builder = builder
            .port(c.smtp_port)
            .timeout(Some(Duration::from_millis(c.timeout_ms)));
        if let Some(user) = &c.smtp_username {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                c.smtp_password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            ));
        }
        let from = c.from.parse().map_err(|e| format!("mail.from: {e}"))?;
        Ok(Smtp {
            mailer: builder.build(),
            from,
        })
    }

    pub async fn send(&self, m: &Outgoing) -> Delivery {
        let to = match m.to.trim().parse() {
            Ok(to) => to,
            Err(e) => return Delivery::Permanent(format!("invalid recipient {:?}: {e}", m.to)),
        };
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone())
            // Receivers can recognise a resend by its Message-ID.
            .message_id(Some(format!(
                "<{}@uniqlog>",
                m.idempotency_key.replace(':', ".")
            )))
            .header(ContentType::TEXT_PLAIN)
            .body(m.text.clone());
        let email = match email {
            Ok(e) => e,
            Err(e) => return Delivery::Permanent(format!("cannot build the email: {e}")),
        };
        match self.mailer.send(email).await {
            Ok(_) => Delivery::Sent,
            Err(e) if e.is_permanent() => Delivery::Permanent(format!("SMTP refused: {e}")),
            Err(e) => Delivery::Transient {
                timed_out: e.is_timeout(),
                reason: e.to_string(),
            },
        }
    }
}
