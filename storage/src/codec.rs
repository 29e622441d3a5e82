//! Value encoding: the one place that knows the binary codec.
//!
//! Our own fixed-schema structs are stored with bincode 2 (serde mode,
//! `config::standard()`: varint, little-endian). bincode is unmaintained
//! (RUSTSEC-2025-0141), so nothing outside this module names it: swapping to
//! another serde codec (postcard) changes this file and a schema version.
//! PDUs never go through here; they are stored as their canonical JSON bytes.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::StorageError;

/// A table value.
pub trait Value: Sized {
    /// Encodes the value for storage.
    fn to_bytes(&self) -> Result<Vec<u8>, StorageError>;
    /// Decodes a stored value.
    fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError>;
}

/// Marks one of our own serde structs as stored through the binary codec.
pub trait Stored: Serialize + DeserializeOwned {}

impl<T: Stored> Value for T {
    fn to_bytes(&self) -> Result<Vec<u8>, StorageError> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| StorageError::Encode(e.to_string()))
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        if used != bytes.len() {
            return Err(StorageError::Corrupt(format!("{} trailing value bytes", bytes.len() - used)));
        }
        Ok(value)
    }
}

/// Raw bytes stored as they are: canonical JSON, media hashes, opaque blobs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Raw(pub Vec<u8>);

impl Value for Raw {
    fn to_bytes(&self) -> Result<Vec<u8>, StorageError> {
        Ok(self.0.clone())
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        Ok(Raw(bytes.to_vec()))
    }
}

/// A UTF-8 string stored as its bytes.
impl Value for String {
    fn to_bytes(&self) -> Result<Vec<u8>, StorageError> {
        Ok(self.as_bytes().to_vec())
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| StorageError::Corrupt("stored string is not UTF-8".into()))
    }
}

/// A short id or counter stored as 8 big-endian bytes.
impl Value for u64 {
    fn to_bytes(&self) -> Result<Vec<u8>, StorageError> {
        Ok(self.to_be_bytes().to_vec())
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let arr: [u8; 8] =
            bytes.try_into().map_err(|_| StorageError::Corrupt(format!("u64 value of {} bytes", bytes.len())))?;
        Ok(u64::from_be_bytes(arr))
    }
}

/// Presence-only rows (sets): the value is empty.
impl Value for () {
    fn to_bytes(&self) -> Result<Vec<u8>, StorageError> {
        Ok(Vec::new())
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.is_empty() { Ok(()) } else { Err(StorageError::Corrupt("unit value is not empty".into())) }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meta {
        room: u64,
        depth: i64,
        flags: u8,
        note: Option<String>,
    }
    impl Stored for Meta {}

    #[test]
    fn stored_struct_round_trips_and_rejects_garbage() {
        let m = Meta { room: 9, depth: -3, flags: 2, note: Some("x".into()) };
        let bytes = m.to_bytes().unwrap();
        assert_eq!(Meta::from_bytes(&bytes).unwrap(), m);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Meta::from_bytes(&longer).is_err());
        assert!(Meta::from_bytes(&bytes[..1]).is_err());
    }

    #[test]
    fn u64_value_needs_eight_bytes() {
        assert_eq!(u64::from_bytes(&42u64.to_bytes().unwrap()).unwrap(), 42);
        assert!(u64::from_bytes(&[1, 2]).is_err());
    }
}
