//! Whether bytes from outside (a snapshot sent by a peer, a backup file) decode as a table's
//! key or value type. redb's decoders trust their input: a `&str` that is not UTF-8 or a tuple
//! whose length prefix runs past its end makes them panic. Records whose checksum passed are
//! checked with this before they are inserted, so such a record is refused as damage with an
//! error instead of a panic inside redb. It follows redb's encodings (4.x): fixed-width
//! integers little-endian, a variable-width tuple as varint lengths of its leading variable
//! elements, then the elements.

use redb::Value;

use crate::checksum::Sealed;

pub(crate) trait WellFormed {
    fn well_formed(bytes: &[u8]) -> bool;
}

macro_rules! fixed {
    ($($t:ty),*) => {$(
        impl WellFormed for $t {
            fn well_formed(bytes: &[u8]) -> bool {
                bytes.len() == std::mem::size_of::<$t>()
            }
        }
    )*};
}
fixed!(u32, u64, ());

impl WellFormed for &str {
    fn well_formed(bytes: &[u8]) -> bool {
        std::str::from_utf8(bytes).is_ok()
    }
}

impl WellFormed for &[u8] {
    fn well_formed(_: &[u8]) -> bool {
        true
    }
}

impl<T: Value + WellFormed> WellFormed for Sealed<T> {
    fn well_formed(bytes: &[u8]) -> bool {
        if bytes.len() < 4 {
            return false;
        }
        let (crc, inner) = bytes.split_at(4);
        u32::from_le_bytes(crc.try_into().expect("4 bytes")) == crc32c::crc32c(inner)
            && T::well_formed(inner)
    }
}

/// redb's varint length at the start of `data`: (length, bytes it took).
fn varint_len(data: &[u8]) -> Option<(usize, usize)> {
    match *data.first()? {
        n @ 0..=253 => Some((n as usize, 1)),
        254 => Some((
            u16::from_le_bytes(data.get(1..3)?.try_into().ok()?) as usize,
            3,
        )),
        255 => Some((
            u32::from_le_bytes(data.get(1..5)?.try_into().ok()?) as usize,
            5,
        )),
    }
}

/// The elements of a tuple encoding, given each element's fixed width (`None`: variable).
fn split_tuple<'a>(widths: &[Option<usize>], data: &'a [u8]) -> Option<Vec<&'a [u8]>> {
    let (last, leading) = widths.split_last()?;
    if widths.iter().all(Option::is_some) {
        let total: usize = widths.iter().flatten().sum();
        if data.len() != total {
            return None;
        }
    }
    let mut header = 0;
    let mut lens = Vec::with_capacity(leading.len());
    for width in leading {
        match width {
            Some(w) => lens.push(*w),
            None => {
                let (len, used) = varint_len(data.get(header..)?)?;
                lens.push(len);
                header += used;
            }
        }
    }
    let mut at = header;
    let mut out = Vec::with_capacity(widths.len());
    for len in lens {
        out.push(data.get(at..at.checked_add(len)?)?);
        at += len;
    }
    let rest = data.get(at..)?;
    if last.is_some_and(|w| w != rest.len()) {
        return None;
    }
    out.push(rest);
    Some(out)
}

macro_rules! tuple {
    ($($t:ident),+) => {
        impl<$($t: Value + WellFormed),+> WellFormed for ($($t,)+) {
            fn well_formed(bytes: &[u8]) -> bool {
                let widths = [$(<$t as Value>::fixed_width()),+];
                let Some(parts) = split_tuple(&widths, bytes) else {
                    return false;
                };
                let mut parts = parts.into_iter();
                true $(&& parts.next().is_some_and(|p| <$t as WellFormed>::well_formed(p)))+
            }
        }
    };
}
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Value + WellFormed>(v: T::SelfType<'_>) -> Vec<u8> {
        let bytes = T::as_bytes(&v).as_ref().to_vec();
        assert!(T::well_formed(&bytes), "{bytes:?}");
        bytes
    }

    #[test]
    fn what_redb_encodes_is_well_formed_and_damage_is_not() {
        let b = round_trip::<(&str, u64)>(("topic", 7));
        assert!(!<(&str, u64)>::well_formed(&b[..b.len() - 1]));
        let b = round_trip::<(&str, &str)>(("set", "key"));
        // A length prefix past the end.
        let mut long = b.clone();
        long[0] = 200;
        assert!(!<(&str, &str)>::well_formed(&long));
        let b = round_trip::<(u64, u64, u32, &str, &str)>((1, 2, 3, "t", "k"));
        assert!(!<(u64, u64, u32, &str, &str)>::well_formed(&b[..10]));
        round_trip::<(&str, &str, u64)>(("s", "k", 9));
        round_trip::<(u32, &str)>((5, "text"));
        let long_str = "x".repeat(70_000);
        round_trip::<(&str, &str)>((&long_str, "k"));
        // A key that is not UTF-8.
        let bad = [0xff, 0xfe];
        assert!(!<&str>::well_formed(&bad));
        let mut tuple = vec![2];
        tuple.extend_from_slice(&bad);
        tuple.extend_from_slice(&7u64.to_le_bytes());
        assert!(!<(&str, u64)>::well_formed(&tuple));
        assert!(!<u64>::well_formed(&[1, 2, 3]));
    }

    #[test]
    fn sealed_values_check_their_checksum_and_inner_type() {
        let inner = <(&str, u64)>::as_bytes(&("owner", 3));
        let mut sealed = crc32c::crc32c(&inner).to_le_bytes().to_vec();
        sealed.extend_from_slice(&inner);
        assert!(Sealed::<(&str, u64)>::well_formed(&sealed));
        sealed[5] ^= 1;
        assert!(!Sealed::<(&str, u64)>::well_formed(&sealed));
        assert!(!Sealed::<u64>::well_formed(&[1, 2]));
    }
}
