//! Durations in policy files and their bound.

use std::time::Duration;

/// Durations in policy files: `"250ms"`, `"55s"`, `"5m"`, `"1h"`, a number of
/// seconds, or `"off"` for `None`.
#[cfg(feature = "serde")]
pub(crate) mod duration_opt {
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"250ms\", \"55s\", \"5m\", or \"off\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|s| Some(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Duration::try_from_secs_f64(v)
                    .map(Some)
                    .map_err(|_| E::custom("not a valid number of seconds"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                super::parse_duration(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Durations in policy files, for `#[serde(deserialize_with = ...)]` in
/// the other tower-reuse crates' configurations (and yours): the forms of
/// [`parse_duration`], or a number of seconds.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use std::time::Duration;
///
/// #[derive(serde::Deserialize)]
/// struct Policy {
///     #[serde(deserialize_with = "tower_reuse_pool::serde_duration::required")]
///     tick: Duration,
///     #[serde(deserialize_with = "tower_reuse_pool::serde_duration::optional")]
///     timeout: Option<Duration>,
/// }
///
/// let policy: Policy = toml::from_str("tick = \"250ms\"\ntimeout = \"off\"").unwrap();
/// assert_eq!(policy.tick, Duration::from_millis(250));
/// assert_eq!(policy.timeout, None);
/// assert!(toml::from_str::<Policy>("tick = \"off\"\ntimeout = 1").is_err());
/// # }
/// ```
#[cfg(feature = "serde")]
pub mod serde_duration {
    use std::time::Duration;

    use serde::Deserializer;
    use serde::de::Error;

    /// A duration that may be `"off"` (`None`).
    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration_opt::deserialize(d)
    }

    /// A duration that may not be `"off"`.
    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        optional(d)?.ok_or_else(|| D::Error::custom("this duration cannot be off"))
    }
}

/// A duration a target may set (`Some`), in a policy file's forms.
#[cfg(feature = "serde")]
pub(crate) fn duration_override<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Duration>>, D::Error> {
    duration_opt::deserialize(d).map(Some)
}

/// A duration as every tower-reuse policy file writes it: `"250ms"`,
/// `"55s"`, `"5m"`, `"1h"` (or a bare number of seconds, `"1.5"`), and
/// `"off"` or `"none"` for `None`. The error says what was wrong.
///
/// ```
/// use std::time::Duration;
/// use tower_reuse_pool::parse_duration;
///
/// assert_eq!(parse_duration("250ms"), Ok(Some(Duration::from_millis(250))));
/// assert_eq!(parse_duration("off"), Ok(None));
/// assert!(parse_duration("3 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"55s\""))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    Duration::try_from_secs_f64(number * scale)
        .map(Some)
        .map_err(|_| format!("{text:?} is out of range"))
}
