//! `AffinityKey`: what makes requests belong together.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use tower_reuse_pool::Partition;

use crate::choice::hash_bytes;
use crate::config::ConfigError;

type KeyFn = dyn Fn(&Parts) -> Option<u64> + Send + Sync;

/// Where a request's affinity key comes from. Requests with one key go to
/// one endpoint while its load allows; a request's [`Partition`] is part of
/// its key, so two tenants with the same key may land apart. A request
/// without a key goes to the less loaded of two endpoints drawn at random.
///
/// ```
/// use tower_reuse_affinity::AffinityKey;
///
/// let by_user = AffinityKey::header("x-user-id");
/// // Or any function of the request head, hashed with `AffinityKey::hash`:
/// let by_path = AffinityKey::from_fn(|head| {
///     let first = head.uri.path().split('/').nth(1)?;
///     Some(AffinityKey::hash(first.as_bytes()))
/// });
/// # let _ = (by_user, by_path);
/// ```
#[derive(Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(from = "KeyFile"))]
pub struct AffinityKey(Repr);

#[derive(Clone)]
enum Repr {
    None,
    Header(HeaderName),
    /// A header name that does not parse: refused by validation.
    BadHeader,
    Fn(Arc<KeyFn>),
}

#[allow(non_upper_case_globals)]
impl AffinityKey {
    /// No key: every request goes to the less loaded of two endpoints.
    pub const None: AffinityKey = AffinityKey(Repr::None);

    /// The value of header `name` (a request without it has no key).
    pub fn header(name: &str) -> Self {
        match HeaderName::try_from(name) {
            Ok(name) => AffinityKey(Repr::Header(name)),
            Err(_) => AffinityKey(Repr::BadHeader),
        }
    }

    /// A key computed from the request head: `None` for no key. Hash what
    /// identifies the key with [`AffinityKey::hash`].
    pub fn from_fn(f: impl Fn(&Parts) -> Option<u64> + Send + Sync + 'static) -> Self {
        AffinityKey(Repr::Fn(Arc::new(f)))
    }

    /// A stable 64-bit hash of `bytes`: the same in every process, so every
    /// client sends a key to the same endpoint.
    pub fn hash(bytes: &[u8]) -> u64 {
        hash_bytes(0, bytes)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self.0 {
            Repr::BadHeader => Err(ConfigError::new("key", "is not a valid header name")),
            _ => Ok(()),
        }
    }

    /// Whether keys come from the head through a function (which needs the
    /// head as `Parts`).
    pub(crate) fn needs_parts(&self) -> bool {
        matches!(self.0, Repr::Fn(_))
    }

    /// The key of a request with `headers`, or from `parts` for a function
    /// key, with `partition` mixed in.
    pub(crate) fn of(
        &self,
        headers: &http::HeaderMap,
        parts: Option<&Parts>,
        partition: Option<&Partition>,
    ) -> Option<u64> {
        let key = match &self.0 {
            Repr::None | Repr::BadHeader => None,
            Repr::Header(name) => Some(AffinityKey::hash(headers.get(name)?.as_bytes())),
            Repr::Fn(f) => f(parts?),
        }?;
        Some(match partition {
            Some(partition) => hash_bytes(key, partition.as_str().as_bytes()),
            None => key,
        })
    }
}

impl Default for AffinityKey {
    fn default() -> Self {
        AffinityKey::None
    }
}

impl fmt::Debug for AffinityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::None => f.write_str("AffinityKey::None"),
            Repr::Header(name) => write!(f, "AffinityKey::header({:?})", name.as_str()),
            Repr::BadHeader => f.write_str("AffinityKey::header(<invalid>)"),
            Repr::Fn(_) => f.write_str("AffinityKey::from_fn(..)"),
        }
    }
}

/// A key in a policy file: `"none"` or `{ "header": "x-user-id" }`.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum KeyFile {
    None,
    Header(String),
}

#[cfg(feature = "serde")]
impl From<KeyFile> for AffinityKey {
    fn from(file: KeyFile) -> Self {
        match file {
            KeyFile::None => AffinityKey::None,
            KeyFile::Header(name) => AffinityKey::header(&name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_part_of_the_key() {
        let key = AffinityKey::header("x-user-id");
        let mut headers = http::HeaderMap::new();
        assert_eq!(key.of(&headers, None, None), None);
        headers.insert("x-user-id", "42".parse().unwrap());
        let plain = key.of(&headers, None, None).unwrap();
        let a = key.of(&headers, None, Some(&Partition::new("a"))).unwrap();
        let b = key.of(&headers, None, Some(&Partition::new("b"))).unwrap();
        assert_eq!(plain, AffinityKey::hash(b"42"));
        assert!(plain != a && a != b);
    }

    #[test]
    fn a_function_key_reads_the_head() {
        let key = AffinityKey::from_fn(|head| {
            Some(AffinityKey::hash(
                head.uri.path().split('/').nth(1)?.as_bytes(),
            ))
        });
        assert!(key.needs_parts());
        let (parts, ()) = http::Request::get("http://svc/users/1")
            .body(())
            .unwrap()
            .into_parts();
        let headers = http::HeaderMap::new();
        assert_eq!(
            key.of(&headers, Some(&parts), None),
            Some(AffinityKey::hash(b"users"))
        );
    }
}
