//! How uniq keys compare: the normalization each set names (`none`, `lowercase`, `email`),
//! applied on the node that receives a write and by readers that look a key up. Never inside
//! apply: Unicode and IDNA tables may differ between builds, and apply must not depend on them.

use unicode_normalization::UnicodeNormalization;

/// Bidirectional formatting characters: they make two keys look alike.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `raw` in Unicode's composed form (NFC), trimmed and lowercase. ASCII text is its own NFC
/// and lowercases byte by byte, and most keys are ASCII: composing them anyway was two thirds
/// of normalizing an email, and 2 % of a leader's CPU at 64 clients (bench/README.md, issue
/// 25 step 8); the shortcut also makes one string where the general path makes three.
fn folded(raw: &str) -> String {
    if raw.is_ascii() {
        raw.trim().to_ascii_lowercase()
    } else {
        raw.nfc().collect::<String>().trim().to_lowercase()
    }
}

fn refuse_invisible(raw: &str) -> Result<(), String> {
    if raw.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err("must not contain control or bidirectional formatting characters".into());
    }
    Ok(())
}

/// A key of a set with `normalize = "none"`: as sent.
pub fn plain(raw: &str) -> Result<String, String> {
    refuse_invisible(raw)?;
    Ok(raw.to_string())
}

/// A key of a set with `normalize = "lowercase"`: composed (NFC), trimmed, lowercase.
pub fn lowercase(raw: &str) -> Result<String, String> {
    refuse_invisible(raw)?;
    Ok(folded(raw))
}

/// A key of a set with `normalize = "email"`: folded like `lowercase`, the domain in its
/// ASCII (IDNA) form.
pub fn email(raw: &str) -> Result<String, String> {
    refuse_invisible(raw)?;
    let s = folded(raw);
    let (local, domain) = s
        .rsplit_once('@')
        .ok_or("is not an email address (no '@')")?;
    if local.is_empty() || domain.is_empty() {
        return Err("is not an email address".into());
    }
    let ascii = idna::domain_to_ascii(domain).map_err(|_| "has an invalid domain".to_string())?;
    if ascii.is_empty() {
        return Err("has an invalid domain".into());
    }
    if ascii == domain {
        return Ok(s);
    }
    Ok(format!("{local}@{ascii}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The ASCII shortcut of `folded` is what composing, trimming and lowercasing give.
        #[test]
        fn ascii_folds_as_unicode_does(s in "[\\x00-\\x7f]{0,40}") {
            proptest::prop_assert_eq!(folded(&s), s.nfc().collect::<String>().trim().to_lowercase());
        }
    }

    #[test]
    fn email_normalization_folds_case_space_unicode_and_idna() {
        let n = email;
        assert_eq!(n("  Ada@Example.COM ").unwrap(), "ada@example.com");
        // NFC: a decomposed é equals the composed one.
        assert_eq!(n("e\u{301}@x.org").unwrap(), n("\u{e9}@x.org").unwrap());
        assert_eq!(
            n("bob@Bücher.example").unwrap(),
            "bob@xn--bcher-kva.example"
        );
        assert!(n("no-at-sign").is_err());
        assert!(n("@example.com").is_err());
        assert!(
            n("a\u{202E}b@example.com").is_err(),
            "bidi override refused"
        );
        assert!(n("a\u{0007}b@example.com").is_err(), "control refused");
    }

    #[test]
    fn lowercase_and_none() {
        assert_eq!(lowercase(" ÄBC ").unwrap(), "äbc");
        assert_eq!(plain(" ÄBC ").unwrap(), " ÄBC ");
    }
}
