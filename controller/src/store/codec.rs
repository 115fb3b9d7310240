//! The one value codec of the store: every stored value is a version byte
//! followed by its body (protobuf, JSON or UTF-8 text). Writers say which
//! version they write; readers say which versions they read, and anything
//! else is reported as corrupt, naming the tree and the key, never guessed.

use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// A value that could not be read.
pub fn corrupt(tree: &'static str, key: &[u8], detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into(),
        detail: detail.into(),
    }
}

/// `version` + protobuf.
pub fn proto<M: Message>(version: u8, m: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + m.encoded_len());
    out.push(version);
    // Invariant: encoding into a Vec cannot run out of space.
    m.encode(&mut out).expect("Vec grows");
    out
}

/// `version` + JSON.
pub fn json<T: Serialize>(version: u8, v: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Invariant: the store's JSON records hold only strings, integers, lists
    // and maps of strings, which serde_json always serializes.
    serde_json::to_writer(&mut out, v).expect("plain records serialize");
    out
}

/// `version` + UTF-8 text.
pub fn text(version: u8, s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + s.len());
    out.push(version);
    out.extend_from_slice(s.as_bytes());
    out
}

/// The version byte and the body of a stored value.
pub fn split<'a>(tree: &'static str, key: &[u8], bytes: &'a [u8]) -> Result<(u8, &'a [u8]), StoreError> {
    bytes
        .split_first()
        .map(|(v, rest)| (*v, rest))
        .ok_or_else(|| corrupt(tree, key, "empty"))
}

fn expect(tree: &'static str, key: &[u8], bytes: &[u8], version: u8) -> Result<Vec<u8>, StoreError> {
    match split(tree, key, bytes)? {
        (v, body) if v == version => Ok(body.to_vec()),
        (v, _) => Err(corrupt(tree, key, format!("version byte {v}"))),
    }
}

/// A protobuf value written with `version`.
pub fn from_proto<M: Message + Default>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
    version: u8,
) -> Result<M, StoreError> {
    let body = expect(tree, key, bytes, version)?;
    M::decode(body.as_slice()).map_err(|e| corrupt(tree, key, e.to_string()))
}

/// A JSON value written with `version`.
pub fn from_json<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
    version: u8,
) -> Result<T, StoreError> {
    let body = expect(tree, key, bytes, version)?;
    serde_json::from_slice(&body).map_err(|e| corrupt(tree, key, e.to_string()))
}

/// A text value written with `version`.
pub fn from_text(tree: &'static str, key: &[u8], bytes: &[u8], version: u8) -> Result<String, StoreError> {
    let body = expect(tree, key, bytes, version)?;
    String::from_utf8(body).map_err(|e| corrupt(tree, key, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_other_versions_are_corrupt() {
        let h = fleet_proto::Host {
            id: "h1".into(),
            ..Default::default()
        };
        let v = proto(1, &h);
        assert_eq!(from_proto::<fleet_proto::Host>("hosts", b"h1", &v, 1).expect("read"), h);
        let err = from_proto::<fleet_proto::Host>("hosts", b"h1", &v, 2).expect_err("other version");
        assert!(err.to_string().contains("version byte 1"), "{err}");
        assert_eq!(from_text("t", b"k", &text(1, "2.0.0"), 1).expect("text"), "2.0.0");
        let j = json(1, &vec!["a".to_string()]);
        assert_eq!(from_json::<Vec<String>>("t", b"k", &j, 1).expect("json"), vec!["a"]);
        assert!(split("t", b"k", &[]).is_err(), "an empty value is corrupt");
    }
}
