//! Checksums of stored records: every Raft entry, vote and metadata value, every event and its
//! secrets, every snapshot record.
//!
//! redb checks its pages' checksums only when asked (at open, see `crate::open_db`), so a byte
//! that goes bad on disk while the node runs, or a redb bug, would be read back as if it were
//! data. Each record therefore carries a CRC-32C computed over its key *and* its value when
//! written, and every read recomputes it: a value moved under another key fails as surely as a
//! flipped bit. A mismatch is never repaired here: it becomes [`StoreError::Corrupt`], which
//! stops the node (see `Damage`).

use crate::error::StoreError;

/// CRC-32C over `parts`, in order, each prefixed by its length so that moving bytes from one
/// part to the next changes the sum.
pub(crate) fn sum(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| {
        let crc = crc32c::crc32c_append(crc, &(p.len() as u64).to_le_bytes());
        crc32c::crc32c_append(crc, p)
    })
}

/// `payload` sealed for storage under `key`: 4 bytes of checksum, then the payload.
pub(crate) fn seal(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    seal_into(key, payload, &mut out);
    out
}

/// [`seal`] into a reused buffer (cleared first).
pub(crate) fn seal_into(key: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&sum(&[key, payload]).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload of a value [`seal`]ed under `key`, after checking its checksum. `table` and
/// `shown_key` name the record in the error.
pub(crate) fn open<'a>(
    table: &str,
    shown_key: &dyn std::fmt::Display,
    key: &[u8],
    stored: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    if stored.len() < 4 {
        return Err(StoreError::corrupt(
            table,
            shown_key,
            "value shorter than its checksum",
        ));
    }
    let (crc, payload) = stored.split_at(4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc != sum(&[key, payload]) {
        return Err(StoreError::corrupt(table, shown_key, "checksum mismatch"));
    }
    Ok(payload)
}

/// The checksum of an event (or its secrets) stored at `(topic, offset)`.
pub(crate) fn event_sum(topic: &str, offset: u64, text: &str) -> u32 {
    sum(&[topic.as_bytes(), &offset.to_le_bytes(), text.as_bytes()])
}

/// Check an event read from `table` at `(topic, offset)`.
pub(crate) fn check_event<'a>(
    table: &str,
    topic: &str,
    offset: u64,
    (crc, text): (u32, &'a str),
) -> Result<&'a str, StoreError> {
    if crc != event_sum(topic, offset, text) {
        return Err(StoreError::corrupt(
            table,
            format!("({topic}, {offset})"),
            "checksum mismatch",
        ));
    }
    Ok(text)
}

/// A redb value stored with the CRC-32C of its bytes in front, checked whenever redb decodes
/// it. Code reads and writes it as the inner type: `Table<K, Sealed<u64>>` takes and gives
/// `u64`. redb's decoding cannot fail, so a mismatch panics with [`SEAL_BROKEN`]; every path
/// that reads state runs under `files::catching`, which turns the panic into damage that
/// stops the node. The seal covers the value only: the tables holding it key their rows by
/// what the value is about, and a damaged key is found by redb's page checks at open.
#[derive(Debug)]
pub struct Sealed<T>(std::marker::PhantomData<T>);

/// The panic message of a [`Sealed`] value whose checksum fails.
pub const SEAL_BROKEN: &str = "a stored value failed its checksum";

impl<T: redb::Value> redb::Value for Sealed<T> {
    type SelfType<'a>
        = T::SelfType<'a>
    where
        Self: 'a;
    type AsBytes<'a>
        = Vec<u8>
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        T::fixed_width().map(|w| w + 4)
    }

    fn from_bytes<'a>(data: &'a [u8]) -> T::SelfType<'a>
    where
        Self: 'a,
    {
        if data.len() < 4 {
            panic!("{SEAL_BROKEN} (shorter than its checksum)");
        }
        let (crc, inner) = data.split_at(4);
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != crc32c::crc32c(inner) {
            panic!("{SEAL_BROKEN}");
        }
        T::from_bytes(inner)
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a T::SelfType<'b>) -> Vec<u8>
    where
        Self: 'b,
    {
        let inner = T::as_bytes(value);
        let inner = inner.as_ref();
        let mut out = Vec::with_capacity(4 + inner.len());
        out.extend_from_slice(&crc32c::crc32c(inner).to_le_bytes());
        out.extend_from_slice(inner);
        out
    }

    fn type_name() -> redb::TypeName {
        redb::TypeName::new(&format!("uniqlog::Sealed<{}>", T::type_name().name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_redb_value_round_trips_and_panics_on_any_flip() {
        use redb::Value;
        let bytes = Sealed::<(&str, u64)>::as_bytes(&("owner", 42));
        assert_eq!(Sealed::<(&str, u64)>::from_bytes(&bytes), ("owner", 42));
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let decoded = std::panic::catch_unwind(|| {
                Sealed::<(&str, u64)>::from_bytes(&bad);
            });
            assert!(decoded.is_err(), "bit {i} flipped went unnoticed");
        }
        assert_eq!(Sealed::<u64>::fixed_width(), Some(12));
    }

    #[test]
    fn a_sealed_value_opens_under_its_own_key_only() {
        let sealed = seal(b"k1", b"payload");
        assert_eq!(open("t", &"k1", b"k1", &sealed).unwrap(), b"payload");
        assert!(open("t", &"k2", b"k2", &sealed).is_err());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let sealed = seal(b"key", b"{\"a\":1}");
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = open("raft_log", &7, b"key", &bad).unwrap_err();
            assert!(err.to_string().contains("raft_log"), "{err}");
        }
        assert!(open("t", &"k", b"key", &sealed[..3]).is_err());
    }

    #[test]
    fn moving_bytes_between_parts_changes_the_sum() {
        assert_ne!(sum(&[b"ab", b"c"]), sum(&[b"a", b"bc"]));
        assert_ne!(event_sum("t", 1, "x"), event_sum("t", 2, "x"));
        assert!(check_event("events", "t", 1, (event_sum("t", 1, "x"), "x")).is_ok());
        assert!(check_event("events", "t", 1, (event_sum("t", 1, "x"), "y")).is_err());
    }
}
