//! Versioned encoding of everything berth persists (log entries, records,
//! metadata, snapshot frames) or sends between control nodes.
//!
//! Every value is one format-version byte followed by a JSON body. Readers
//! accept every version they know and refuse, with an error, one they do not,
//! so a later release can still read what an earlier one wrote.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format this release writes.
pub const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value: no format version byte")]
    Empty,
    #[error("unknown format version {0} (this release reads version {FORMAT_V1})")]
    UnknownVersion(u8),
    #[error("malformed value: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes `value` in the current format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_V1);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// Decodes a value written by [`encode`] in any known format version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match *version {
        FORMAT_V1 => Ok(serde_json::from_slice(body)?),
        other => Err(CodecError::UnknownVersion(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tags_version() {
        let bytes = encode(&vec![1u64, 2, 3]).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        let back: Vec<u64> = decode(&bytes).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
    }

    #[test]
    fn refuses_unknown_version_and_empty() {
        let mut bytes = encode(&7u64).unwrap();
        bytes[0] = 9;
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::UnknownVersion(9))
        ));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
    }
}
