//! Order-preserving key encoding.
//!
//! Every key is a byte string whose lexicographic order equals the natural
//! order of the value it encodes, so RocksDB's sorted iteration is range and
//! prefix iteration over our types:
//!
//! - unsigned integers: big-endian, fixed width;
//! - signed integers: big-endian with the sign bit flipped (so -1 < 0 < 1);
//! - strings and byte strings: each `0x00` escaped as `0x00 0xFF`, then the
//!   terminator `0x00 0x01`. A shorter string therefore sorts before every
//!   longer string it prefixes, and a string can sit anywhere in a tuple;
//! - tuples: the concatenation of their parts.
//!
//! `decode` is strict: trailing bytes, short input or a bad escape is an error,
//! never a panic, because keys can come from a damaged file.

use crate::error::StorageError;

/// A value that can be a table key (or the leading part of one).
pub trait Key: Sized {
    /// Appends the order-preserving encoding of `self` to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);

    /// Reads one value from the front of `input` and returns it with the rest.
    fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError>;

    /// Encodes `self` as a fresh byte vector.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        self.encode_into(&mut out);
        out
    }

    /// Decodes a whole key; trailing bytes are an error.
    fn decode(input: &[u8]) -> Result<Self, StorageError> {
        let (value, rest) = Self::decode_from(input)?;
        if rest.is_empty() {
            Ok(value)
        } else {
            Err(StorageError::Corrupt(format!("{} trailing key bytes", rest.len())))
        }
    }
}

/// Marks `P` as a leading part of the key `Self`, for prefix iteration.
pub trait HasPrefix<P: Key>: Key {}

fn take<const N: usize>(input: &[u8]) -> Result<([u8; N], &[u8]), StorageError> {
    if input.len() < N {
        return Err(StorageError::Corrupt(format!("key too short: need {N} bytes, have {}", input.len())));
    }
    let (head, rest) = input.split_at(N);
    let mut buf = [0u8; N];
    buf.copy_from_slice(head);
    Ok((buf, rest))
}

macro_rules! unsigned_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode_into(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
                let (bytes, rest) = take::<{ std::mem::size_of::<$t>() }>(input)?;
                Ok((<$t>::from_be_bytes(bytes), rest))
            }
        }
    )*};
}
unsigned_key!(u8, u16, u32, u64);

macro_rules! signed_key {
    ($($t:ty => $u:ty),*) => {$(
        impl Key for $t {
            fn encode_into(&self, out: &mut Vec<u8>) {
                let flipped = (*self as $u) ^ (1 << (<$u>::BITS - 1));
                out.extend_from_slice(&flipped.to_be_bytes());
            }
            fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
                let (bytes, rest) = take::<{ std::mem::size_of::<$t>() }>(input)?;
                let raw = <$u>::from_be_bytes(bytes) ^ (1 << (<$u>::BITS - 1));
                Ok((raw as $t, rest))
            }
        }
    )*};
}
signed_key!(i32 => u32, i64 => u64);

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() + 2);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

fn decode_bytes(input: &[u8]) -> Result<(Vec<u8>, &[u8]), StorageError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match input.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0x01) => return Ok((out, &input[i + 2..])),
            _ => return Err(StorageError::Corrupt("bad escape in string key".into())),
        }
    }
    Err(StorageError::Corrupt("unterminated string key".into()))
}

impl Key for Vec<u8> {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_bytes(self, out);
    }
    fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
        decode_bytes(input)
    }
}

impl Key for String {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_bytes(self.as_bytes(), out);
    }
    fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
        let (bytes, rest) = decode_bytes(input)?;
        let s = String::from_utf8(bytes).map_err(|_| StorageError::Corrupt("string key is not UTF-8".into()))?;
        Ok((s, rest))
    }
}

impl Key for () {
    fn encode_into(&self, _out: &mut Vec<u8>) {}
    fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
        Ok(((), input))
    }
}

impl<A: Key> Key for (A,) {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.0.encode_into(out);
    }
    fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
        let (a, rest) = A::decode_from(input)?;
        Ok(((a,), rest))
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.0.encode_into(out);
        self.1.encode_into(out);
    }
    fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
        let (a, rest) = A::decode_from(input)?;
        let (b, rest) = B::decode_from(rest)?;
        Ok(((a, b), rest))
    }
}

impl<A: Key, B: Key, C: Key> Key for (A, B, C) {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.0.encode_into(out);
        self.1.encode_into(out);
        self.2.encode_into(out);
    }
    fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
        let (a, rest) = A::decode_from(input)?;
        let (b, rest) = B::decode_from(rest)?;
        let (c, rest) = C::decode_from(rest)?;
        Ok(((a, b, c), rest))
    }
}

impl<A: Key, B: Key, C: Key, D: Key> Key for (A, B, C, D) {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.0.encode_into(out);
        self.1.encode_into(out);
        self.2.encode_into(out);
        self.3.encode_into(out);
    }
    fn decode_from(input: &[u8]) -> Result<(Self, &[u8]), StorageError> {
        let (a, rest) = A::decode_from(input)?;
        let (b, rest) = B::decode_from(rest)?;
        let (c, rest) = C::decode_from(rest)?;
        let (d, rest) = D::decode_from(rest)?;
        Ok(((a, b, c, d), rest))
    }
}

impl<A: Key, B: Key> HasPrefix<(A,)> for (A, B) {}
impl<A: Key, B: Key, C: Key, D: Key> HasPrefix<(A,)> for (A, B, C, D) {}
impl<A: Key, B: Key, C: Key, D: Key> HasPrefix<(A, B)> for (A, B, C, D) {}
impl<A: Key, B: Key, C: Key, D: Key> HasPrefix<(A, B, C)> for (A, B, C, D) {}
impl<A: Key, B: Key, C: Key> HasPrefix<(A,)> for (A, B, C) {}
impl<A: Key, B: Key, C: Key> HasPrefix<(A, B)> for (A, B, C) {}

/// The smallest byte string greater than every string that starts with `prefix`,
/// or `None` when no such bound exists (an all-`0xFF` prefix).
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_order<K: Key + Ord + std::fmt::Debug + Clone>(mut values: Vec<K>) {
        values.sort();
        let encoded: Vec<Vec<u8>> = values.iter().map(Key::encode).collect();
        for w in encoded.windows(2) {
            assert!(w[0] < w[1], "encoding does not preserve order: {:?} vs {:?}", w[0], w[1]);
        }
        for (v, e) in values.iter().zip(&encoded) {
            assert_eq!(&K::decode(e).unwrap(), v);
        }
    }

    #[test]
    fn unsigned_order_round_trips() {
        assert_order(vec![0u64, 1, 255, 256, u64::MAX - 1, u64::MAX, 1 << 40]);
        assert_order(vec![0u32, 7, u32::MAX]);
    }

    #[test]
    fn signed_order_round_trips_across_zero() {
        assert_order(vec![i64::MIN, -1_000_000, -2, -1, 0, 1, 2, i64::MAX]);
        assert_order(vec![i32::MIN, -1, 0, 1, i32::MAX]);
    }

    #[test]
    fn strings_with_nul_and_prefixes_keep_order() {
        let values: Vec<String> =
            ["", "a", "a\0", "a\0b", "a\u{1}", "ab", "b", "\u{ff}", "!room:x"].iter().map(|s| s.to_string()).collect();
        assert_order(values);
    }

    #[test]
    fn tuples_order_by_first_then_second() {
        assert_order(vec![(1u64, -5i64), (1, 0), (1, 7), (2, i64::MIN), (u64::MAX, 0)]);
        assert_order(vec![
            ("a".to_string(), 2u64),
            ("a".to_string(), 10),
            ("a\0".to_string(), 0),
            ("ab".to_string(), 0),
        ]);
    }

    #[test]
    fn decode_rejects_damaged_input() {
        assert!(u64::decode(&[1, 2, 3]).is_err());
        assert!(u64::decode(&[0; 9]).is_err());
        assert!(String::decode(b"abc").is_err());
        assert!(String::decode(&[b'a', 0, 7]).is_err());
        assert!(String::decode(&[0xC3, 0x28, 0, 1]).is_err());
    }

    #[test]
    fn successor_bounds_every_extension() {
        assert_eq!(prefix_successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        let p = 7u64.encode();
        let succ = prefix_successor(&p).unwrap();
        assert!((7u64, u64::MAX).encode() < succ);
        assert!((8u64, 0u64).encode() >= succ);
    }
}
