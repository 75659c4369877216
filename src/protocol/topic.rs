//! Topic name and topic filter rules (MQTT 3.1.1 section 4.7) and the reference matcher.
//!
//! mqttbytes' own `valid_filter`/`matches` accept `sport+` and panic on some non-ASCII topics
//! (../shared/DESIGN.md), so the broker uses these instead.

use thiserror::Error;

/// Why a topic name or filter was refused; each message names the clause.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TopicError {
    #[error("[MQTT-4.7.3-1] topic is empty")]
    Empty,
    #[error("[MQTT-1.5.3-2] topic contains U+0000")]
    Nul,
    #[error("[MQTT-3.3.2-2] topic name contains a wildcard character")]
    WildcardInName,
    #[error("[MQTT-4.7.1-2] '#' must be the last character and occupy a whole level")]
    BadMultiLevel,
    #[error("[MQTT-4.7.1-3] '+' must occupy a whole level")]
    BadSingleLevel,
    #[error("[MQTT-4.7.3-3] topic longer than 65535 bytes")]
    TooLong,
}

/// Checks a PUBLISH (or will) topic name: non-empty, no wildcard, no U+0000.
pub fn validate_topic_name(topic: &[u8]) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    for &b in topic {
        match b {
            0 => return Err(TopicError::Nul),
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a SUBSCRIBE/UNSUBSCRIBE topic filter.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

/// Plain reference matcher: does `filter` (valid) match `topic` (valid name)?
///
/// The trie is the fast path; this is the definition it is tested against, and is also
/// used for per-filter checks where speed does not matter.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // [MQTT-4.7.2-1] filters starting with a wildcard do not match topics starting with '$'.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_reject_wildcards_empty_and_nul() {
        assert_eq!(validate_topic_name(b"a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name(b"#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name(b""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name(b"a\0b"), Err(TopicError::Nul));
        assert!(validate_topic_name(b"/").is_ok());
        assert!(validate_topic_name("température/é".as_bytes()).is_ok());
    }

    #[test]
    fn topic_filters_follow_4_7_1() {
        for ok in ["#", "+", "a/#", "+/+", "/+", "a/+/c", "$SYS/#", "/", "a//b"] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a/#/b", "sport+", "#a", "a#", "+a/b", "a/b+", ""] {
            assert!(validate_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reference_matcher_follows_4_7() {
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("sport/#", "sport/tennis/player1"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(!filter_matches("#", "$SYS/broker"));
        assert!(!filter_matches("+/broker", "$SYS/broker"));
        assert!(filter_matches("$SYS/#", "$SYS/broker"));
        assert!(filter_matches("#", "a"));
    }
}
