//! Sign-up and email validation: every field error at once.

use std::collections::BTreeMap;

use crate::claims::normalize_key;
use raft_store::rules::Normalize;
use serde::Deserialize;
use serde_json::Value;

use super::config::UsersConfig;
use api::error::ApiError;

/// Fields as JSON values, so a wrong type is a field error like a blank one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    pub username: Option<Value>,
    pub email: Option<Value>,
    pub password: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    pub email: Option<Value>,
}

/// A validated sign-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signup {
    pub username: String,
    pub email: String,
    pub password: String,
}

pub const USERNAME_CHARS_MAX: usize = 64;
pub const EMAIL_BYTES_MAX: usize = 254;
pub const EMAIL_LOCAL_BYTES_MAX: usize = 64;
pub const PASSWORD_CHARS_MIN: usize = 8;

type Fields = BTreeMap<String, String>;

fn string<'a>(fields: &mut Fields, name: &str, v: &'a Option<Value>) -> Option<&'a str> {
    match v {
        None | Some(Value::Null) => {
            fields.insert(name.into(), "is required".into());
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            fields.insert(name.into(), "must not be blank".into());
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            fields.insert(name.into(), "must be a string".into());
            None
        }
    }
}

/// Syntax of an address as people type it: one `@`, a local part of at most 64 octets, a
/// dotted domain, at most 254 octets, nothing invisible. Returns the trimmed address.
pub fn check_email(raw: &str) -> Result<String, String> {
    let email = raw.trim();
    if email.len() > EMAIL_BYTES_MAX {
        return Err(format!("must be at most {EMAIL_BYTES_MAX} octets"));
    }
    if email.chars().any(char::is_whitespace) {
        return Err("must not contain spaces".into());
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("must be an email address like name@example.com".into());
    };
    if local.is_empty() || domain.contains('@') {
        return Err("must be an email address like name@example.com".into());
    }
    if local.len() > EMAIL_LOCAL_BYTES_MAX {
        return Err(format!(
            "the part before @ must be at most {EMAIL_LOCAL_BYTES_MAX} octets"
        ));
    }
    if !domain.contains('.') || domain.split('.').any(str::is_empty) {
        return Err("must have a domain like example.com".into());
    }
    normalize_key(Normalize::Email, email)?;
    Ok(email.to_string())
}

fn check_text(fields: &mut Fields, name: &str, s: &str, max_chars: usize) {
    if s.chars().count() > max_chars {
        fields.insert(
            name.into(),
            format!("must be at most {max_chars} characters"),
        );
    } else if normalize_key(Normalize::None, s).is_err() {
        fields.insert(
            name.into(),
            "must not contain control or bidirectional formatting characters".into(),
        );
    }
}

pub fn validate_signup(body: &SignupBody, config: &UsersConfig) -> Result<Signup, ApiError> {
    let mut fields = Fields::new();
    let username = string(&mut fields, "username", &body.username);
    let email = string(&mut fields, "email", &body.email);
    let password = string(&mut fields, "password", &body.password);
    if let Some(u) = username {
        check_text(&mut fields, "username", u.trim(), USERNAME_CHARS_MAX);
    }
    let email = email.and_then(|e| match check_email(e) {
        Ok(e) => Some(e),
        Err(m) => {
            fields.insert("email".into(), m);
            None
        }
    });
    if let Some(p) = password {
        if p.chars().count() < PASSWORD_CHARS_MIN {
            fields.insert(
                "password".into(),
                format!("must be at least {PASSWORD_CHARS_MIN} characters"),
            );
        } else if p.len() > config.password_bytes_max {
            fields.insert(
                "password".into(),
                format!("must be at most {} bytes", config.password_bytes_max),
            );
        }
    }
    match (username, email, password) {
        (Some(u), Some(e), Some(p)) if fields.is_empty() => Ok(Signup {
            username: u.trim().to_string(),
            email: e,
            password: p.to_string(),
        }),
        _ => Err(ApiError::Validation { fields }),
    }
}

pub fn validate_email_change(body: &EmailBody) -> Result<String, ApiError> {
    let mut fields = Fields::new();
    let email = string(&mut fields, "email", &body.email).map(check_email);
    match email {
        Some(Ok(e)) => Ok(e),
        Some(Err(m)) => {
            fields.insert("email".into(), m);
            Err(ApiError::Validation { fields })
        }
        None => Err(ApiError::Validation { fields }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields_of(body: Value) -> BTreeMap<String, String> {
        let body: SignupBody = serde_json::from_value(body).unwrap();
        match validate_signup(&body, &UsersConfig::default()) {
            Ok(_) => BTreeMap::new(),
            Err(ApiError::Validation { fields }) => fields,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn every_blank_or_invalid_field_combination_reports_each_field() {
        let good = [
            ("username", json!("ada")),
            ("email", json!("ada@example.com")),
            ("password", json!("long enough")),
        ];
        let bad: [(&str, Vec<(Value, &str)>); 3] = [
            (
                "username",
                vec![
                    (Value::Null, "is required"),
                    (json!("  "), "must not be blank"),
                    (json!(7), "must be a string"),
                    (json!("x".repeat(65)), "at most 64"),
                    (json!("a\u{202E}b"), "control"),
                ],
            ),
            (
                "email",
                vec![
                    (Value::Null, "is required"),
                    (json!(""), "must not be blank"),
                    (json!("no-at"), "email address"),
                    (json!("a@b"), "domain"),
                    (json!("a b@c.io"), "spaces"),
                    (json!(format!("{}@x.io", "a".repeat(65))), "before @"),
                    (json!(format!("a@{}.io", "b".repeat(250))), "254"),
                    (json!("a@b@c.io"), "email address"),
                    (json!(true), "must be a string"),
                ],
            ),
            (
                "password",
                vec![
                    (Value::Null, "is required"),
                    (json!("short"), "at least 8"),
                    (json!(" "), "must not be blank"),
                    (json!(["x"]), "must be a string"),
                ],
            ),
        ];
        // Every combination: each field good or one of its bad values.
        for mask in 0u8..8 {
            for pick in 0..9 {
                let mut body = serde_json::Map::new();
                let mut expect = BTreeMap::new();
                for (i, (name, good_value)) in good.iter().enumerate() {
                    if mask & (1 << i) == 0 {
                        body.insert(name.to_string(), good_value.clone());
                        continue;
                    }
                    let cases = &bad[i].1;
                    let (value, message) = &cases[pick % cases.len()];
                    if !value.is_null() {
                        body.insert(name.to_string(), value.clone());
                    }
                    expect.insert(name.to_string(), *message);
                }
                let got = fields_of(Value::Object(body.clone()));
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    expect.keys().collect::<Vec<_>>(),
                    "{body:?}"
                );
                for (field, fragment) in &expect {
                    assert!(
                        got[field].contains(fragment),
                        "{field}: {:?} should mention {fragment:?} for {body:?}",
                        got[field]
                    );
                }
            }
        }
    }

    #[test]
    fn a_valid_signup_is_trimmed() {
        let body: SignupBody = serde_json::from_value(
            json!({"username": " ada ", "email": " Ada@Example.com ", "password": "12345678"}),
        )
        .unwrap();
        let s = validate_signup(&body, &UsersConfig::default()).unwrap();
        assert_eq!(
            (s.username.as_str(), s.email.as_str()),
            ("ada", "Ada@Example.com")
        );
    }
}
