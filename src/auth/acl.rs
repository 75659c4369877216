//! Mosquitto `acl_file`: who may publish, subscribe to and receive which topics.
//!
//! # File format (as `man mosquitto.conf` describes it)
//! ```text
//! # anonymous clients (rules before the first `user` line)
//! topic read public/#
//!
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret/#
//! # no access word means readwrite
//! topic sensors/+/temperature
//!
//! pattern write devices/%c/status
//! pattern read users/%u/inbox/#
//! ```
//! - `user <name>` starts the section of the clients that logged in with that username (the
//!   rest of the line, trimmed, may contain spaces). Sections of the same name are merged.
//! - `topic [read|write|readwrite|deny] <filter>` adds a rule to the current section; before
//!   any `user` line, to anonymous clients (no username). Without an access word the rule is
//!   `readwrite`. The filter is the rest of the line and may contain spaces, so
//!   `topic foo bar` is an error (unknown access word `foo`) and `topic read foo bar` is the
//!   filter `foo bar`, as in Mosquitto.
//! - `pattern [read|write|readwrite|deny] <filter>` applies to every client, named or
//!   anonymous, wherever it appears. A level that is exactly `%c` stands for the client id,
//!   exactly `%u` for the username (Mosquitto 2 substitutes only whole levels: `dev-%c` is
//!   refused here rather than silently matched literally). In `topic` lines `%c`/`%u` are
//!   plain text, as in Mosquitto.
//! - Blank lines and lines starting with `#` (after optional whitespace) are ignored;
//!   anything else, an unknown access word, or an invalid filter is an error naming `file:line`.
//!
//! # Decisions
//! The rules that apply to a client are the section of its username (the anonymous section if
//! it has none; nothing if its username has no section) plus all `pattern` rules. Access is
//! granted when some applicable rule with the needed access matches and no applicable `deny`
//! rule matches: deny always wins. (Mosquitto checks the user section before the patterns, so
//! there an allowing `topic` rule beats a denying `pattern`; here it does not.)
//!
//! **Substitution safety.** A client id or username that is empty or contains `+`, `#`, `/`
//! or U+0000 is never substituted (it could widen a pattern: client id `a/b` under
//! `pattern readwrite %c/#` would reach into client `a`'s tree). Instead, allowing patterns
//! that use it grant nothing, and denying patterns that use it deny everything for that client
//! (fail closed). Mosquitto likewise denies clients with `+`/`#` in their id or username
//! whenever patterns exist. Patterns using `%u` never apply to anonymous clients.
//!
//! **SUBSCRIBE.** A subscription filter is accepted when at least one applicable `read` or
//! `readwrite` rule overlaps it (some topic matches both the filter and the rule), and refused
//! when an applicable `deny` rule covers it (every topic the filter matches is denied) or when
//! no readable rule overlaps it. Because a filter like `#` is accepted as soon as anything is
//! readable, read access is checked again for every delivered message ([`Acl::check_read`]),
//! retained messages included: subscribing to `#` with only `public/#` readable receives
//! `public/...` and never `secret/...`, while subscribing to `secret/#` is refused outright.
//!
//! **`$SYS` and other `$` topics.** Topics starting with `$` are matched only by rules whose
//! first level is literally the same `$...` word: per the spec's `$` rule [MQTT-4.7.2-1] a rule
//! `#` or `+/...` does not match `$SYS/broker/uptime`, so reading `$SYS` needs an explicit rule
//! such as `topic read $SYS/#`, and a catch-all `topic readwrite #` never exposes broker
//! internals nor lets clients publish into `$SYS`.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::protocol::topic::{filter_matches, validate_topic_filter, validate_topic_name};

use super::AuthError;

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// One level of a topic filter, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level<'a> {
    Literal(&'a str),
    /// `+`
    Single,
    /// `#`
    Multi,
}

impl<'a> Level<'a> {
    fn parse(level: &'a str) -> Level<'a> {
        match level {
            "+" => Level::Single,
            "#" => Level::Multi,
            text => Level::Literal(text),
        }
    }

    fn is_wildcard(self) -> bool {
        !matches!(self, Level::Literal(_))
    }

    fn starts_with_dollar(self) -> bool {
        matches!(self, Level::Literal(text) if text.starts_with('$'))
    }
}

fn levels(filter: &str) -> impl Iterator<Item = Level<'_>> {
    filter.split('/').map(Level::parse)
}

/// Does the filter given as levels match `topic`? Same definition as
/// [`filter_matches`], over levels so that patterns need no substituted copy.
fn levels_match_topic<'a>(filter: impl Iterator<Item = Level<'a>>, topic: &str) -> bool {
    let mut filter = filter.peekable();
    // [MQTT-4.7.2-1] a leading wildcard does not match a topic starting with '$'.
    if topic.starts_with('$') && filter.peek().is_some_and(|first| first.is_wildcard()) {
        return false;
    }
    let mut topic = topic.split('/');
    loop {
        match (filter.next(), topic.next()) {
            (Some(Level::Multi), _) => return true,
            (Some(Level::Single), Some(_)) => {}
            (Some(Level::Literal(f)), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is there a topic name matched by both filters?
fn levels_overlap<'a, 'b>(
    a: impl Iterator<Item = Level<'a>>,
    b: impl Iterator<Item = Level<'b>>,
) -> bool {
    let mut a = a.peekable();
    let mut b = b.peekable();
    if let (Some(&first_a), Some(&first_b)) = (a.peek(), b.peek()) {
        // A leading wildcard only reaches topics not starting with '$'; a leading `$x` literal
        // only topics starting with '$': nothing in common.
        if (first_a.is_wildcard() && first_b.starts_with_dollar())
            || (first_b.is_wildcard() && first_a.starts_with_dollar())
        {
            return false;
        }
    }
    loop {
        match (a.next(), b.next()) {
            // `#` also matches the parent level, so it meets whatever is left of the other.
            (Some(Level::Multi), _) | (_, Some(Level::Multi)) => return true,
            (None, None) => return true,
            (Some(Level::Single), Some(_)) | (Some(_), Some(Level::Single)) => {}
            (Some(Level::Literal(x)), Some(Level::Literal(y))) if x == y => {}
            _ => return false,
        }
    }
}

/// Does `outer` match every topic name that `inner` matches?
fn levels_cover<'a, 'b>(
    outer: impl Iterator<Item = Level<'a>>,
    inner: impl Iterator<Item = Level<'b>>,
) -> bool {
    let mut outer = outer.peekable();
    let mut inner = inner.peekable();
    if let (Some(&first_outer), Some(&first_inner)) = (outer.peek(), inner.peek()) {
        // `inner` reaches '$' topics, which a leading wildcard in `outer` does not.
        if first_outer.is_wildcard() && first_inner.starts_with_dollar() {
            return false;
        }
    }
    loop {
        match (outer.next(), inner.next()) {
            (Some(Level::Multi), _) => return true,
            (None, None) => return true,
            (Some(Level::Single), Some(Level::Literal(_) | Level::Single)) => {}
            (Some(Level::Literal(x)), Some(Level::Literal(y))) if x == y => {}
            _ => return false,
        }
    }
}

/// Do two valid topic filters overlap, i.e. is there a topic name both match?
///
/// Respects the `$` rule: `#` and `$SYS/#` do not overlap.
pub fn filter_overlaps(a: &str, b: &str) -> bool {
    levels_overlap(levels(a), levels(b))
}

/// Is valid filter `inner` covered by valid filter `outer`, i.e. does `outer` match every
/// topic name `inner` matches? (`a/#` covers `a/+/b` and `a`; `#` does not cover `$SYS/#`.)
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    levels_cover(levels(outer), levels(inner))
}

/// One level of a `pattern` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// Fixed text, `+` or `#`.
    Text(String),
    /// `%c`
    ClientId,
    /// `%u`
    Username,
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone)]
struct Rule {
    access: Access,
    /// The filter as written (for `topic` rules, what is matched).
    filter: String,
    /// For `pattern` rules with `%c`/`%u`: the levels to substitute; empty otherwise.
    slots: Vec<Slot>,
    uses_client_id: bool,
    uses_username: bool,
}

/// What a rule is tested against.
#[derive(Debug, Clone, Copy)]
enum Query<'q> {
    /// Does the rule match this topic name?
    Topic(&'q str),
    /// Does the rule's filter overlap this subscription filter?
    Overlaps(&'q str),
    /// Does the rule's filter cover this whole subscription filter?
    Covers(&'q str),
}

/// The identity the rules are evaluated for.
#[derive(Debug, Clone, Copy)]
struct Client<'c> {
    client_id: &'c str,
    username: Option<&'c str>,
}

/// Can `value` replace a whole level without changing the filter's shape?
fn substitutable(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/', '\0'])
}

impl Rule {
    fn hits(&self, client: Client<'_>, query: Query<'_>) -> bool {
        if self.slots.is_empty() {
            return match query {
                Query::Topic(topic) => filter_matches(&self.filter, topic),
                Query::Overlaps(filter) => filter_overlaps(&self.filter, filter),
                Query::Covers(filter) => filter_covers(&self.filter, filter),
            };
        }
        if self.uses_username && client.username.is_none() {
            return false;
        }
        let username = client.username.unwrap_or_default();
        if (self.uses_client_id && !substitutable(client.client_id))
            || (self.uses_username && !substitutable(username))
        {
            // Fail closed: an unusable identity gets nothing from an allowing pattern and
            // everything from a denying one.
            return self.access == Access::Deny;
        }
        let resolved = self.slots.iter().map(|slot| match slot {
            Slot::Text(text) => Level::parse(text),
            Slot::ClientId => Level::Literal(client.client_id),
            Slot::Username => Level::Literal(username),
        });
        match query {
            Query::Topic(topic) => levels_match_topic(resolved, topic),
            Query::Overlaps(filter) => levels_overlap(resolved, levels(filter)),
            Query::Covers(filter) => levels_cover(resolved, levels(filter)),
        }
    }
}

/// The rules of one section, denials apart so they are all seen before any grant.
#[derive(Debug, Clone, Default)]
struct RuleSet {
    deny: Vec<Rule>,
    allow: Vec<Rule>,
}

impl RuleSet {
    fn push(&mut self, rule: Rule) {
        if rule.access == Access::Deny {
            self.deny.push(rule);
        } else {
            self.allow.push(rule);
        }
    }
}

/// A parsed ACL file. No ACL file at all means everything is allowed; that is the caller's
/// decision, not this type's: an `Acl` with no rules denies everything.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// `topic` rules before the first `user` line: clients without a username.
    anonymous: RuleSet,
    /// `topic` rules per username.
    users: HashMap<String, RuleSet>,
    /// `pattern` rules: every client.
    patterns: RuleSet,
}

impl Acl {
    /// Parses ACL file text; `origin` (usually the file name) prefixes error messages.
    /// The format is described in the [module docs](self).
    pub fn parse(text: &str, origin: &str) -> Result<Acl, AuthError> {
        let mut acl = Acl::default();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let error = |message: String| AuthError::parse(origin, line_no, message);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("\"user\" needs a username".to_owned()));
                    }
                    acl.users.entry(rest.to_owned()).or_default();
                    current_user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(keyword, rest).map_err(error)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else {
                        if rule.filter.split('/').any(|l| l == "%c" || l == "%u") {
                            tracing::warn!(
                                "{origin}:{line_no}: \"topic {}\" matches %c/%u literally; \
                                 use \"pattern\" for substitution",
                                rule.filter
                            );
                        }
                        match &current_user {
                            Some(user) => acl.users.entry(user.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword {other:?} (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Reads and parses an ACL file; errors name the path and line.
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let text = fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text, &path.display().to_string())
    }

    /// May this client PUBLISH to `topic`? (Write access; `topic` must be a topic name, a
    /// name with wildcards is refused.)
    pub fn check_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        if validate_topic_name(topic.as_bytes()).is_err() {
            return false;
        }
        let client = Client {
            client_id,
            username,
        };
        self.decide(
            client,
            Access::writes,
            Query::Topic(topic),
            Query::Topic(topic),
        )
    }

    /// May this client receive a message published to `topic`? (Read access.) Checked for
    /// every delivered message, retained ones included; `topic` was validated at PUBLISH.
    pub fn check_read(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        let client = Client {
            client_id,
            username,
        };
        self.decide(
            client,
            Access::reads,
            Query::Topic(topic),
            Query::Topic(topic),
        )
    }

    /// May this client SUBSCRIBE to `filter`? Yes when a readable rule overlaps the filter and
    /// no deny rule covers it (see the module docs); an invalid filter is refused. Delivery is
    /// still filtered per message by [`check_read`](Self::check_read).
    pub fn check_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        if validate_topic_filter(filter).is_err() {
            return false;
        }
        let client = Client {
            client_id,
            username,
        };
        self.decide(
            client,
            Access::reads,
            Query::Overlaps(filter),
            Query::Covers(filter),
        )
    }

    /// Deny wins: any applicable deny rule hit by `deny_query` refuses; otherwise any
    /// applicable rule granting the access and hit by `allow_query` allows.
    fn decide(
        &self,
        client: Client<'_>,
        grants: fn(Access) -> bool,
        allow_query: Query<'_>,
        deny_query: Query<'_>,
    ) -> bool {
        let section = match client.username {
            Some(name) => self.users.get(name),
            None => Some(&self.anonymous),
        };
        let sets = section.into_iter().chain(std::iter::once(&self.patterns));
        let denied = sets
            .clone()
            .flat_map(|set| &set.deny)
            .any(|rule| rule.hits(client, deny_query));
        if denied {
            return false;
        }
        sets.flat_map(|set| &set.allow)
            .any(|rule| grants(rule.access) && rule.hits(client, allow_query))
    }
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

/// Parses what follows `topic`/`pattern`: `[access] <filter>`.
fn parse_rule(keyword: &str, rest: &str) -> Result<Rule, String> {
    if rest.is_empty() {
        return Err(format!("\"{keyword}\" needs a topic filter"));
    }
    let (first, remainder) = split_word(rest);
    let (access, filter) = if remainder.is_empty() {
        (Access::ReadWrite, first)
    } else {
        let access = Access::parse(first).ok_or_else(|| {
            format!("unknown access {first:?} (expected read, write, readwrite or deny)")
        })?;
        (access, remainder)
    };
    validate_topic_filter(filter).map_err(|e| format!("invalid topic filter {filter:?}: {e}"))?;

    let mut rule = Rule {
        access,
        filter: filter.to_owned(),
        slots: Vec::new(),
        uses_client_id: false,
        uses_username: false,
    };
    if keyword == "pattern" {
        let mut slots = Vec::new();
        for level in filter.split('/') {
            slots.push(match level {
                "%c" => Slot::ClientId,
                "%u" => Slot::Username,
                text if text.contains("%c") || text.contains("%u") => {
                    return Err(format!(
                        "in {filter:?}, %c and %u must be a whole topic level \
                         (Mosquitto 2 does not substitute {text:?})"
                    ));
                }
                text => Slot::Text(text.to_owned()),
            });
        }
        rule.uses_client_id = slots.contains(&Slot::ClientId);
        rule.uses_username = slots.contains(&Slot::Username);
        if rule.uses_client_id || rule.uses_username {
            rule.slots = slots;
        }
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Acl {
        match Acl::parse(text, "acl.conf") {
            Ok(acl) => acl,
            Err(e) => panic!("{e}"),
        }
    }

    fn parse_error(text: &str) -> String {
        match Acl::parse(text, "acl.conf") {
            Ok(acl) => panic!("expected an error, parsed {acl:?}"),
            Err(e) => e.to_string(),
        }
    }

    const FILTERS: &[&str] = &[
        "#", "+", "+/+", "+/#", "a", "a/#", "a/+", "a/b", "a/b/c", "a/+/c", "a/b/#", "+/b",
        "+/b/#", "b/#", "/", "/+", "/#", "a/", "a//b", "$SYS", "$SYS/#", "$SYS/+", "$SYS/a", "+/a",
        "$other/#",
    ];
    const TOPICS: &[&str] = &[
        "a", "a/b", "a/b/c", "a/x/c", "a/b/c/d", "b", "b/b", "x/b", "/", "/a", "a/", "a//b",
        "$SYS", "$SYS/a", "$SYS/a/b", "$other/x", "c",
    ];

    #[test]
    fn level_matcher_agrees_with_the_reference_matcher() {
        for filter in FILTERS {
            for topic in TOPICS {
                assert_eq!(
                    levels_match_topic(levels(filter), topic),
                    filter_matches(filter, topic),
                    "{filter} vs {topic}"
                );
            }
        }
    }

    #[test]
    fn overlap_is_exactly_sharing_a_topic() {
        // Against brute force over the sample topics: sharing a sample topic implies overlap.
        for a in FILTERS {
            for b in FILTERS {
                assert_eq!(filter_overlaps(a, b), filter_overlaps(b, a), "{a} / {b}");
                let shared = TOPICS
                    .iter()
                    .any(|t| filter_matches(a, t) && filter_matches(b, t));
                if shared {
                    assert!(filter_overlaps(a, b), "{a} / {b} share a topic");
                }
            }
        }
        assert!(filter_overlaps("#", "a/b"));
        assert!(filter_overlaps("a/+", "+/b"));
        assert!(filter_overlaps("a/#", "a"));
        assert!(filter_overlaps("a/+/c", "a/b/#"));
        assert!(filter_overlaps("+/+", "/+"));
        assert!(!filter_overlaps("a/+", "a"));
        assert!(!filter_overlaps("a/b", "a/c"));
        assert!(!filter_overlaps("a/+/c", "a/b/d"));
        assert!(!filter_overlaps("a/b/c", "a/b"));
        assert!(!filter_overlaps("secret/#", "public/#"));
        // The '$' rule.
        assert!(!filter_overlaps("#", "$SYS/#"));
        assert!(!filter_overlaps("+/broker", "$SYS/broker"));
        assert!(filter_overlaps("$SYS/#", "$SYS/+"));
        assert!(filter_overlaps("+", "+"));
    }

    #[test]
    fn cover_is_matching_every_topic_of_the_inner_filter() {
        for outer in FILTERS {
            for inner in FILTERS {
                if filter_covers(outer, inner) {
                    for topic in TOPICS {
                        if filter_matches(inner, topic) {
                            assert!(
                                filter_matches(outer, topic),
                                "{outer} covers {inner} but misses {topic}"
                            );
                        }
                    }
                    assert!(filter_overlaps(outer, inner), "{outer} / {inner}");
                }
            }
            assert!(filter_covers(outer, outer), "{outer} covers itself");
        }
        // A topic name is covered exactly when the filter matches it.
        for filter in FILTERS {
            for topic in TOPICS {
                assert_eq!(
                    filter_covers(filter, topic),
                    filter_matches(filter, topic),
                    "{filter} / {topic}"
                );
            }
        }
        assert!(filter_covers("#", "a/#"));
        assert!(filter_covers("a/#", "a"));
        assert!(filter_covers("a/#", "a/+/c"));
        assert!(filter_covers("a/+", "a/b"));
        assert!(filter_covers("+/+", "a/+"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/+", "a"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("a", "a/#"));
        assert!(!filter_covers("#", "$SYS/#"));
        assert!(!filter_covers("+/#", "$SYS/a"));
        assert!(!filter_covers("$SYS/#", "#"));
        assert!(filter_covers("$SYS/#", "$SYS/+/x"));
    }

    const MATRIX_ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic write shared/inbox

user bob
topic read alice/#
topic bob/+/data
topic read $SYS/broker/uptime

user root
topic readwrite #
";

    #[test]
    fn user_sections_anonymous_section_and_access_words_decide_read_and_write() {
        let acl = acl(MATRIX_ACL);
        // (username, topic, read, write)
        let cases: &[(Option<&str>, &str, bool, bool)] = &[
            (None, "public/news", true, false),
            (None, "public", true, false),
            (None, "alice/x", false, false),
            (Some("alice"), "alice/x", true, true),
            (Some("alice"), "alice", true, true),
            (Some("alice"), "alice/secret/key", false, false),
            (Some("alice"), "alice/secret", false, false),
            (Some("alice"), "shared/inbox", false, true),
            (Some("alice"), "shared/inbox/x", false, false),
            (Some("alice"), "public/news", false, false),
            (Some("bob"), "alice/x", true, false),
            (Some("bob"), "alice/secret/key", true, false),
            (Some("bob"), "bob/1/data", true, true),
            (Some("bob"), "bob/1/data/x", false, false),
            (Some("bob"), "$SYS/broker/uptime", true, false),
            (Some("bob"), "$SYS/broker/load", false, false),
            (Some("root"), "anything/at/all", true, true),
            (Some("root"), "$SYS/broker/uptime", false, false),
            (Some("carol"), "public/news", false, false),
            (Some("carol"), "carol/x", false, false),
        ];
        for &(user, topic, read, write) in cases {
            assert_eq!(
                acl.check_read("c1", user, topic),
                read,
                "read {user:?} {topic}"
            );
            assert_eq!(
                acl.check_publish("c1", user, topic),
                write,
                "write {user:?} {topic}"
            );
        }
    }

    #[test]
    fn deny_wins_over_any_grant_wherever_it_is_written() {
        let acl = acl("\
user alice
topic readwrite a/#
topic deny a/private/#
topic read a/private/readme
pattern deny a/%u/locked
");
        assert!(acl.check_read("c", Some("alice"), "a/public"));
        assert!(!acl.check_read("c", Some("alice"), "a/private/readme"));
        assert!(!acl.check_publish("c", Some("alice"), "a/private/x"));
        // A denying pattern beats an allowing user rule.
        assert!(!acl.check_publish("c", Some("alice"), "a/alice/locked"));
        assert!(acl.check_publish("c", Some("alice"), "a/bob/locked"));
    }

    #[test]
    fn patterns_substitute_client_id_and_username() {
        let acl = acl("\
topic read public/#
pattern write devices/%c/status
pattern readwrite users/%u/#
pattern read broadcast/#
user alice
topic read alice-only
");
        // %c
        assert!(acl.check_publish("dev1", None, "devices/dev1/status"));
        assert!(acl.check_publish("dev1", Some("alice"), "devices/dev1/status"));
        assert!(!acl.check_publish("dev1", None, "devices/dev2/status"));
        assert!(!acl.check_read("dev1", None, "devices/dev1/status"));
        // %u
        assert!(acl.check_read("c", Some("alice"), "users/alice/inbox"));
        assert!(acl.check_publish("c", Some("alice"), "users/alice"));
        assert!(!acl.check_read("c", Some("alice"), "users/bob/inbox"));
        assert!(acl.check_read("c", Some("bob"), "users/bob/inbox"));
        // A pattern without placeholders applies to everyone, named or anonymous.
        assert!(acl.check_read("c", None, "broadcast/x"));
        assert!(acl.check_read("c", Some("zed"), "broadcast/x"));
        // Section rules still apply alongside patterns.
        assert!(acl.check_read("c", Some("alice"), "alice-only"));
        assert!(!acl.check_read("c", Some("alice"), "public/x"));
        assert!(acl.check_read("c", None, "public/x"));
    }

    #[test]
    fn username_pattern_never_matches_anonymous_clients() {
        let acl =
            acl("pattern readwrite users/%u/#\npattern deny secret/%u\ntopic read secret/#\n");
        assert!(!acl.check_read("c", None, "users/%u/x"));
        assert!(!acl.check_read("c", None, "users//x"));
        assert!(!acl.check_subscribe("c", None, "users/+/x"));
        // ... and a denying %u pattern does not shut anonymous clients out either.
        assert!(acl.check_read("c", None, "secret/x"));
    }

    #[test]
    fn dangerous_client_ids_and_usernames_are_not_substituted() {
        let acl = acl("\
pattern readwrite clients/%c/#
pattern readwrite users/%u/#
pattern read public/#
");
        // '/' would reach into another client's tree; '+'/'#' would turn into wildcards.
        assert!(acl.check_read("a", None, "clients/a/b/x"));
        assert!(!acl.check_read("a/b", None, "clients/a/b/x"));
        assert!(!acl.check_subscribe("+", None, "clients/+/x"));
        assert!(!acl.check_subscribe("#", None, "clients/#"));
        assert!(!acl.check_read("#", None, "clients/#/x"));
        assert!(!acl.check_read("c", Some("a/b"), "users/a/b"));
        assert!(!acl.check_read("c", Some("+"), "users/x/y"));
        assert!(!acl.check_read("c", Some(""), "users//x"));
        assert!(!acl.check_read("", None, "clients//x"));
        // Unaffected rules still apply to such clients.
        assert!(acl.check_read("a/b", None, "public/x"));
        assert!(acl.check_read("c", Some("+"), "public/x"));
    }

    #[test]
    fn dangerous_identity_is_denied_everything_by_a_denying_pattern() {
        let acl = acl("pattern read #\npattern deny private/%c/#\n");
        assert!(acl.check_read("a", None, "anything"));
        assert!(!acl.check_read("a", None, "private/a/x"));
        // The deny cannot be instantiated for "x/y": fail closed.
        assert!(!acl.check_read("x/y", None, "anything"));
        assert!(!acl.check_subscribe("x/y", None, "anything/#"));
        assert!(!acl.check_publish("x/y", None, "anything"));
    }

    #[test]
    fn subscribe_accepts_filters_overlapping_a_readable_rule() {
        let acl = acl("\
topic read public/#
topic write drop/box
topic deny public/secret/#
");
        // `#` is accepted because something is readable ...
        assert!(acl.check_subscribe("c", None, "#"));
        assert!(acl.check_subscribe("c", None, "+/news"));
        assert!(acl.check_subscribe("c", None, "public/#"));
        assert!(acl.check_subscribe("c", None, "public"));
        // ... but the messages it would bring are checked one by one.
        assert!(acl.check_read("c", None, "public/news"));
        assert!(!acl.check_read("c", None, "secret/x"));
        assert!(!acl.check_read("c", None, "public/secret/x"));
        // Nothing readable overlaps: refused outright.
        assert!(!acl.check_subscribe("c", None, "secret/#"));
        assert!(!acl.check_subscribe("c", None, "drop/box"));
        assert!(!acl.check_subscribe("c", None, "$SYS/#"));
        // A deny covering the whole filter refuses it; a partial one does not.
        assert!(!acl.check_subscribe("c", None, "public/secret/#"));
        assert!(!acl.check_subscribe("c", None, "public/secret/+/x"));
        assert!(acl.check_subscribe("c", None, "public/+/x"));
        // Invalid filters are refused.
        assert!(!acl.check_subscribe("c", None, "public/#/x"));
        assert!(!acl.check_subscribe("c", None, "public/a+"));
        assert!(!acl.check_subscribe("c", None, ""));
    }

    #[test]
    fn subscribe_only_secret_when_only_public_is_readable_is_refused() {
        let acl = acl("user u\ntopic read public/#\n");
        assert!(!acl.check_subscribe("c", Some("u"), "secret/#"));
        assert!(acl.check_subscribe("c", Some("u"), "#"));
        assert!(!acl.check_read("c", Some("u"), "secret/x"));
    }

    #[test]
    fn subscribe_with_patterns_uses_the_substituted_filter() {
        let acl = acl("pattern read devices/%c/#\npattern deny devices/%c/keys/#\n");
        assert!(acl.check_subscribe("d1", None, "devices/d1/#"));
        assert!(acl.check_subscribe("d1", None, "devices/+/status"));
        assert!(!acl.check_read("d1", None, "devices/d2/status"));
        assert!(!acl.check_subscribe("d1", None, "devices/d2/#"));
        assert!(!acl.check_subscribe("d1", None, "devices/d1/keys/#"));
        assert!(!acl.check_subscribe("d2", None, "devices/d1/keys/+"));
    }

    #[test]
    fn sys_topics_need_an_explicit_rule() {
        let acl = acl("\
topic readwrite #
user monitor
topic read $SYS/#
user poker
topic readwrite +/#
");
        assert!(!acl.check_read("c", None, "$SYS/broker/uptime"));
        assert!(!acl.check_publish("c", None, "$SYS/broker/uptime"));
        assert!(!acl.check_subscribe("c", None, "$SYS/#"));
        assert!(acl.check_subscribe("c", None, "#"));
        assert!(acl.check_read("c", Some("monitor"), "$SYS/broker/uptime"));
        assert!(acl.check_subscribe("c", Some("monitor"), "$SYS/broker/+"));
        assert!(!acl.check_publish("c", Some("monitor"), "$SYS/broker/uptime"));
        assert!(!acl.check_read("c", Some("poker"), "$SYS/broker/uptime"));
        assert!(!acl.check_subscribe("c", Some("poker"), "$SYS/#"));
    }

    #[test]
    fn publish_to_a_wildcard_topic_is_refused() {
        let acl = acl("topic readwrite #\n");
        assert!(acl.check_publish("c", None, "a/b"));
        assert!(!acl.check_publish("c", None, "a/+"));
        assert!(!acl.check_publish("c", None, "#"));
        assert!(!acl.check_publish("c", None, ""));
    }

    #[test]
    fn empty_acl_denies_everything() {
        let acl = acl("# nothing\n\n");
        assert!(!acl.check_read("c", None, "a"));
        assert!(!acl.check_publish("c", Some("u"), "a"));
        assert!(!acl.check_subscribe("c", None, "#"));
    }

    #[test]
    fn repeated_user_sections_are_merged() {
        let acl = acl("user a\ntopic read x\nuser b\ntopic read y\nuser a\ntopic read z\n");
        assert!(acl.check_read("c", Some("a"), "x"));
        assert!(acl.check_read("c", Some("a"), "z"));
        assert!(!acl.check_read("c", Some("a"), "y"));
    }

    #[test]
    fn filters_and_usernames_may_contain_spaces() {
        let acl = acl("user John Smith\n  topic read my topic/+  \n");
        assert!(acl.check_read("c", Some("John Smith"), "my topic/x"));
        assert!(!acl.check_read("c", Some("John"), "my topic/x"));
    }

    #[test]
    fn topic_rules_treat_placeholders_literally() {
        let acl = acl("topic read a/%c\n");
        assert!(acl.check_read("x", None, "a/%c"));
        assert!(!acl.check_read("x", None, "a/x"));
    }

    #[test]
    fn malformed_lines_are_refused_with_file_and_line() {
        assert_eq!(
            parse_error("topic read a\nbogus line\n"),
            "acl.conf:2: unknown keyword \"bogus\" (expected user, topic or pattern)"
        );
        assert_eq!(
            parse_error("\ntopic foo bar\n"),
            "acl.conf:2: unknown access \"foo\" (expected read, write, readwrite or deny)"
        );
        assert_eq!(
            parse_error("topic\n"),
            "acl.conf:1: \"topic\" needs a topic filter"
        );
        assert_eq!(
            parse_error("pattern   \n"),
            "acl.conf:1: \"pattern\" needs a topic filter"
        );
        assert_eq!(
            parse_error("# c\nuser\n"),
            "acl.conf:2: \"user\" needs a username"
        );
        let message = parse_error("topic read a/#/b\n");
        assert!(
            message.starts_with("acl.conf:1: invalid topic filter \"a/#/b\": [MQTT-4.7.1-2]"),
            "{message}"
        );
        let message = parse_error("user a\ntopic write sport+\n");
        assert!(
            message.starts_with("acl.conf:2: invalid topic filter"),
            "{message}"
        );
        let message = parse_error("pattern read dev-%c/x\n");
        assert!(
            message
                .starts_with("acl.conf:1: in \"dev-%c/x\", %c and %u must be a whole topic level"),
            "{message}"
        );
        // Keywords and access words are case-sensitive, as in Mosquitto.
        assert!(parse_error("Topic read a\n").contains("unknown keyword"));
        assert!(parse_error("topic READ a\n").contains("unknown access"));
    }

    #[test]
    fn load_names_the_path_in_errors() {
        let dir = std::env::temp_dir().join(format!("roostd-acl-load-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("acl.conf");
        fs::write(&path, "topic read ok\ntopic maybe x\n").expect("write");
        let message = Acl::load(&path).expect_err("bad line").to_string();
        assert!(
            message.starts_with(&format!("{}:2: unknown access", path.display())),
            "{message}"
        );
        fs::write(&path, "topic read ok\n").expect("write");
        assert!(Acl::load(&path).expect("load").check_read("c", None, "ok"));
        let _ = fs::remove_dir_all(&dir);
        assert!(Acl::load(&path)
            .expect_err("missing")
            .to_string()
            .starts_with("reading "));
    }
}
