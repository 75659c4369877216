//! `roostd import-mosquitto-conf`: turns a Mosquitto 2.x `mosquitto.conf` into the equivalent
//! roostd TOML. Pure: text in, text out; the caller reads the file and prints the result.
//!
//! Mosquitto reads `key value` lines (`#` starts a comment line). A `listener PORT [ADDRESS]` line
//! starts a listener; the per-listener options after it (certfile, protocol, ...) belong to it,
//! and those before any `listener` line belong to Mosquitto's default listener (`port`,
//! `bind_address`). roostd's TOML has the global keys first, then one `[[listener]]` table each.
//!
//! Every line that cannot be carried over gets a comment in the output saying why
//! (`# mosquitto.conf line 12: "connection hq" not converted: roostd has no bridges yet`) and is
//! counted in [`Conversion::warnings`]; lines whose meaning shifts a little get a comment above
//! the key they became. Where Mosquitto's "unlimited" has no roostd equivalent the closest bound
//! is used and said so. The output always parses with [`crate::Config::from_toml_str`]: a value
//! roostd would refuse is left out with its reason instead, and a listener that cannot be made
//! as safe as the original (an unknown host name, TLS options without certfile and keyfile) is
//! kept only as a comment rather than opened as a plain listener.

use std::net::IpAddr;

use crate::config::parse_expiration;

/// The converted configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// roostd's TOML, with a comment for every line of the original not carried over.
    pub toml: String,
    /// How many lines of the original were not carried over (each has its comment in `toml`).
    pub warnings: usize,
}

/// roostd's `max_connections` for Mosquitto's -1 (unlimited): far above what the open-file limit
/// allows, and still a valid semaphore size.
const UNLIMITED_CONNECTIONS: u64 = 1_000_000;

/// roostd's `max_queued_messages` for Mosquitto's 0 (unlimited); `max_queued_bytes` still bounds
/// every queue. Small enough that the session's arithmetic on it cannot overflow.
const UNLIMITED_QUEUED_MESSAGES: u64 = 1_000_000_000;

/// The MQTT maximum remaining length: roostd's largest `message_size_limit`.
const MQTT_MAX_REMAINING: u64 = 268_435_455;

/// Characters of an original line quoted in a comment; longer lines are cut.
const QUOTE_MAX: usize = 120;

/// Converts the text of a mosquitto.conf; `origin` (its file name) is named in the header.
pub fn convert(text: &str, origin: &str) -> Conversion {
    let lines = split_lines(text);
    let per_listener = lines
        .iter()
        .any(|l| l.key == "per_listener_settings" && matches!(first_token(l.value), "true" | "1"));
    let mut c = Converter::new(per_listener);
    for line in &lines {
        c.line(line);
    }
    c.render(origin)
}

/// One meaningful line of the original (not blank, not a comment).
struct Src<'a> {
    /// 1-based line number.
    no: usize,
    /// The line without surrounding blanks (and without CR).
    text: &'a str,
    /// The option name.
    key: &'a str,
    /// Everything after the option name, trimmed (Mosquitto's string values are all of it).
    value: &'a str,
}

impl Src<'_> {
    /// The line as quoted in a comment: secrets replaced, control characters escaped, cut.
    fn quoted(&self) -> String {
        let shown = if is_secret(self.key) && !self.value.is_empty() {
            format!("{} <redacted>", self.key)
        } else {
            self.text.to_string()
        };
        clip(&shown, QUOTE_MAX)
    }

    /// `mosquitto.conf line N: "..." not converted: why`.
    fn not_converted(&self, why: &str) -> String {
        format!(
            "mosquitto.conf line {}: \"{}\" not converted: {why}",
            self.no,
            self.quoted()
        )
    }

    /// `mosquitto.conf line N: "...": note`.
    fn note(&self, note: &str) -> String {
        format!(
            "mosquitto.conf line {}: \"{}\": {note}",
            self.no,
            self.quoted()
        )
    }
}

/// Values that should not be copied into another file's comments.
fn is_secret(key: &str) -> bool {
    ["pass", "secret", "token", "psk", "kpass"]
        .iter()
        .any(|w| key.contains(w))
        && !matches!(key, "psk_file" | "psk_hint" | "password_file")
}

fn split_lines(text: &str) -> Vec<Src<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .filter_map(|(i, raw)| {
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                return None;
            }
            let (key, value) = match t.find(char::is_whitespace) {
                Some(p) => (&t[..p], t[p..].trim()),
                None => (t, ""),
            };
            Some(Src {
                no: i + 1,
                text: t,
                key,
                value,
            })
        })
        .collect()
}

/// The first blank-separated token ("" if none): Mosquitto's numbers and booleans are one token.
fn first_token(value: &str) -> &str {
    value.split_whitespace().next().unwrap_or("")
}

/// At most `max` characters of `s`, control characters escaped (TOML comments may not hold them).
fn clip(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str("...");
            break;
        }
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A whole number, as Mosquitto reads it (the first token).
fn int(s: &Src) -> Result<i64, String> {
    let tok = first_token(s.value);
    if tok.is_empty() {
        return Err("it has no value".into());
    }
    tok.parse::<i64>()
        .map_err(|_| format!("`{}` is not a whole number", clip(tok, 40)))
}

/// `true`/`1` or `false`/`0`, as Mosquitto reads them.
fn boolean(s: &Src) -> Result<bool, String> {
    match first_token(s.value) {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        "" => Err("it has no value".into()),
        other => Err(format!("`{}` is not true or false", clip(other, 40))),
    }
}

/// A string value: the rest of the line, as Mosquitto reads it.
fn string<'a>(s: &Src<'a>) -> Result<&'a str, String> {
    if s.value.is_empty() {
        Err("it has no value".into())
    } else {
        Ok(s.value)
    }
}

/// A note when a one-token value is followed by more than a comment (Mosquitto ignores it).
fn trailing_note(s: &Src) -> Option<String> {
    let rest = s.value.trim_start()[first_token(s.value).len()..].trim();
    (!rest.is_empty() && !rest.starts_with('#')).then(|| {
        s.note(&format!(
            "`{}` after the value is ignored, as Mosquitto ignores it",
            clip(rest, 40)
        ))
    })
}

/// A value roostd computes from several lines, written where the first of them was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    MaxConnections,
    MessageSizeLimit,
}

/// One line of output.
enum Item {
    /// Text of a `#` comment.
    Comment(String),
    /// `key = value` (value already in TOML syntax), from source line `line`.
    Key {
        key: &'static str,
        value: String,
        line: usize,
    },
    Slot(Slot),
}

/// The top level or one listener table.
#[derive(Default)]
struct Section {
    items: Vec<Item>,
}

impl Section {
    fn comment(&mut self, text: String) {
        self.items.push(Item::Comment(text));
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.items
            .iter()
            .position(|i| matches!(i, Item::Key { key: k, .. } if *k == key))
    }

    /// The value and source line of `key`, if set.
    fn get(&self, key: &str) -> Option<(&str, usize)> {
        self.items.iter().find_map(|i| match i {
            Item::Key {
                key: k,
                value,
                line,
            } if *k == key => Some((value.as_str(), *line)),
            _ => None,
        })
    }

    /// Sets `key`; an earlier value becomes a comment (Mosquitto uses the last one).
    fn set(&mut self, key: &'static str, value: String, line: usize, notes: Vec<String>) {
        self.set_because(key, value, line, notes, "as Mosquitto uses the last one");
    }

    /// Sets `key`; an earlier value becomes a comment saying why it was replaced.
    fn set_because(
        &mut self,
        key: &'static str,
        value: String,
        line: usize,
        notes: Vec<String>,
        because: &str,
    ) {
        if let Some(i) = self.position(key) {
            if let Item::Key {
                value: old,
                line: old_line,
                ..
            } = &self.items[i]
            {
                self.items[i] = Item::Comment(format!(
                    "mosquitto.conf line {old_line}: `{key} = {}` replaced by line {line}, {because}",
                    clip(old, QUOTE_MAX)
                ));
            }
        }
        for n in notes {
            self.comment(n);
        }
        self.items.push(Item::Key { key, value, line });
    }

    fn slot(&mut self, slot: Slot) {
        if !self
            .items
            .iter()
            .any(|i| matches!(i, Item::Slot(s) if *s == slot))
        {
            self.items.push(Item::Slot(slot));
        }
    }
}

/// One listener of the original.
struct Listener {
    /// The `listener` line, or None for Mosquitto's default listener (`port`, `bind_address`,
    /// options before any `listener` line).
    line: Option<usize>,
    /// The `listener` line as quoted in comments.
    quoted: String,
    port: u16,
    /// The `port` line that set the default listener's port.
    port_line: Option<usize>,
    /// The line that made Mosquitto open its default listener.
    created_by: Option<usize>,
    /// The default listener was asked for (`port`, `bind_address`), not opened as a side effect.
    explicit: bool,
    bind_address: String,
    /// Why the address was changed or what it does not cover.
    bind_note: Option<String>,
    /// Why this listener cannot be converted at all (then it is written as comments).
    skip: Option<String>,
    /// Option lines carried into it (they become warnings when it is skipped).
    option_lines: usize,
    websockets: bool,
    section: Section,
}

impl Listener {
    fn new(line: Option<usize>, quoted: String) -> Listener {
        Listener {
            line,
            quoted,
            port: 1883,
            port_line: None,
            created_by: None,
            explicit: false,
            bind_address: "0.0.0.0".into(),
            bind_note: Some(ALL_INTERFACES_NOTE.into()),
            skip: None,
            option_lines: 0,
            websockets: false,
            section: Section::default(),
        }
    }
}

const ALL_INTERFACES_NOTE: &str = "Mosquitto listens on every interface, IPv6 included, when no address is given; \"0.0.0.0\" is every IPv4 address: use bind_address = \"::\" instead for IPv6 and IPv4 clients (one dual-stack socket on Linux)";

/// Where per-listener options go: Mosquitto's default listener until the first `listener` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cur {
    Default,
    Listener(usize),
}

/// Where a comment or key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Top,
    Listener(usize),
}

/// A `max_connections` or `global_max_connections` value; None is unlimited.
struct ConnLimit {
    no: usize,
    note_line: String,
    limit: Option<u64>,
    /// The listener it limits (None: global_max_connections).
    listener: Option<Cur>,
}

/// A `message_size_limit` or `max_packet_size` value; None is unlimited.
struct SizeLimit {
    key: &'static str,
    note_line: String,
    limit: Option<u64>,
}

struct Converter {
    /// `per_listener_settings true`: Mosquitto's auth options are per listener.
    per_listener: bool,
    top: Section,
    listeners: Vec<Listener>,
    /// Index of Mosquitto's default listener in `listeners`, once something created it.
    default_listener: Option<usize>,
    cur: Cur,
    /// The original had a `listener`, `port` or `bind_address` line.
    had_listener: bool,
    conn: Vec<ConnLimit>,
    global_conn: Option<ConnLimit>,
    sizes: Vec<SizeLimit>,
    warnings: usize,
}

impl Converter {
    fn new(per_listener: bool) -> Converter {
        Converter {
            per_listener,
            top: Section::default(),
            listeners: Vec::new(),
            default_listener: None,
            cur: Cur::Default,
            had_listener: false,
            conn: Vec::new(),
            global_conn: None,
            sizes: Vec::new(),
            warnings: 0,
        }
    }

    fn section(&mut self, t: Target) -> &mut Section {
        match t {
            Target::Listener(i) if i < self.listeners.len() => &mut self.listeners[i].section,
            _ => &mut self.top,
        }
    }

    /// Mosquitto's default listener, created on first use (by source line `line`).
    fn default_listener(&mut self, line: usize) -> usize {
        if let Some(i) = self.default_listener {
            return i;
        }
        self.listeners.push(Listener::new(
            None,
            "Mosquitto's default listener (port, bind_address and the listener options before any `listener` line)".into(),
        ));
        let i = self.listeners.len() - 1;
        self.listeners[i].created_by = Some(line);
        self.default_listener = Some(i);
        i
    }

    /// The listener that per-listener options go to, created if it is the default one.
    fn cur_listener(&mut self, line: usize) -> usize {
        match self.cur {
            Cur::Listener(i) => i,
            Cur::Default => self.default_listener(line),
        }
    }

    /// Where a comment about a per-listener line goes (the top level if there is no listener yet).
    fn listener_target(&self) -> Target {
        match self.cur {
            Cur::Listener(i) => Target::Listener(i),
            Cur::Default => self.default_listener.map_or(Target::Top, Target::Listener),
        }
    }

    fn not_converted(&mut self, t: Target, s: &Src, why: &str) {
        self.warnings += 1;
        let text = s.not_converted(why);
        self.section(t).comment(text);
    }

    /// A line that needs nothing: roostd already behaves so.
    fn same(&mut self, t: Target, s: &Src, why: &str) {
        let text = s.note(&format!("nothing to set: {why}"));
        self.section(t).comment(text);
    }

    fn line(&mut self, s: &Src) {
        match s.key {
            "listener" => self.listener(s),
            "port" => self.port(s),
            "bind_address" => self.bind_address(s),
            "allow_anonymous" => self.allow_anonymous(s),
            "password_file" | "acl_file" => self.auth_file(s),
            "per_listener_settings" => self.per_listener_settings(s),
            "persistence" | "retained_persistence" => {
                let note = (s.key == "retained_persistence").then(|| {
                    s.note("roostd's persistence keeps retained messages and persistent sessions")
                });
                self.top_bool(s, "persistence", note);
            }
            "retain_available" => self.top_bool(s, "retain_available", None),
            "queue_qos0_messages" => self.top_bool(s, "queue_qos0_messages", None),
            "persistence_location" => self.persistence_location(s),
            "persistent_client_expiration" => self.expiration(s),
            "sys_interval" => self.sys_interval(s),
            "max_keepalive" => self.max_keepalive(s),
            "max_inflight_messages" => self.max_inflight(s),
            "max_queued_messages" => self.max_queued_messages(s),
            "max_queued_bytes" => self.max_queued_bytes(s),
            "message_size_limit" | "max_packet_size" => self.size_limit(s),
            "max_connections" | "global_max_connections" => self.connections(s),
            "certfile" | "keyfile" | "cafile" => self.tls_file(s),
            "require_certificate" | "use_identity_as_username" => self.tls_bool(s),
            "protocol" => self.protocol(s),
            _ => self.other(s),
        }
    }

    fn listener(&mut self, s: &Src) {
        self.had_listener = true;
        let mut tokens = s
            .value
            .split_whitespace()
            .take_while(|t| !t.starts_with('#'));
        let port = tokens.next().unwrap_or("");
        let address = tokens.next();
        let mut l = Listener::new(Some(s.no), s.quoted());
        match port.parse::<u16>() {
            Ok(0) => {
                l.skip = Some(match address {
                    Some(_) => "roostd has no Unix socket listeners".into(),
                    None => "port 0 needs a Unix socket path in Mosquitto, and roostd has no Unix socket listeners".into(),
                })
            }
            Ok(p) => l.port = p,
            Err(_) if port.is_empty() => l.skip = Some("it has no port".into()),
            Err(_) => l.skip = Some(format!("`{}` is not a port (1 to 65535)", clip(port, 40))),
        }
        if let (None, Some(addr)) = (&l.skip, address) {
            match parse_bind(addr) {
                Ok((a, note)) => {
                    l.bind_address = a;
                    l.bind_note = note;
                }
                Err(why) => {
                    l.bind_address = addr.to_string();
                    l.skip = Some(why);
                }
            }
        }
        self.listeners.push(l);
        self.cur = Cur::Listener(self.listeners.len() - 1);
    }

    fn port(&mut self, s: &Src) {
        self.had_listener = true;
        let port = int(s).and_then(|p| match u16::try_from(p) {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{p} is not a port (1 to 65535)")),
        });
        // A bad port must not open a default listener on 1883 (Mosquitto would not start).
        match port {
            Ok(p) => {
                let i = self.default_listener(s.no);
                let l = &mut self.listeners[i];
                l.explicit = true;
                let replaced = l
                    .port_line
                    .map(|n| format!(" (replaces line {n}, as Mosquitto uses the last one)"))
                    .unwrap_or_default();
                l.port = p;
                l.port_line = Some(s.no);
                l.option_lines += 1;
                let text = s.note(&format!("the default listener's port{replaced}"));
                l.section.comment(text);
            }
            Err(why) => {
                let t = self.default_listener.map_or(Target::Top, Target::Listener);
                self.not_converted(t, s, &why);
            }
        }
    }

    fn bind_address(&mut self, s: &Src) {
        self.had_listener = true;
        let addr = match string(s) {
            Ok(a) => a,
            Err(why) => {
                let t = self.default_listener.map_or(Target::Top, Target::Listener);
                return self.not_converted(t, s, &why);
            }
        };
        let i = self.default_listener(s.no);
        let l = &mut self.listeners[i];
        l.explicit = true;
        l.option_lines += 1;
        match parse_bind(addr) {
            Ok((a, note)) => {
                l.bind_address = a;
                l.bind_note = note;
                let text = s.note("the default listener's address");
                l.section.comment(text);
            }
            Err(why) => l.skip = Some(format!("{why} (line {})", s.no)),
        }
    }

    fn allow_anonymous(&mut self, s: &Src) {
        let v = match boolean(s) {
            Ok(v) => v,
            Err(why) => return self.not_converted(Target::Top, s, &why),
        };
        let value = v.to_string();
        let mut notes: Vec<String> = trailing_note(s).into_iter().collect();
        if !self.per_listener {
            self.top.set("allow_anonymous", value, s.no, notes);
            return;
        }
        match self.top.get("allow_anonymous").map(|(v, l)| (v == "true", l)) {
            None => {
                notes.push(s.note("with per_listener_settings Mosquitto applies this to one listener; roostd applies it to every listener"));
                self.top.set("allow_anonymous", value, s.no, notes);
            }
            Some((old, _)) if old == v => {
                let text = s.note("the same as the allow_anonymous already used for all listeners");
                self.top.comment(text);
            }
            Some((_, line)) if !v => {
                // Listeners disagree: the safer value holds for all of them.
                self.warnings += 1;
                notes.push(s.note(&format!("listeners disagree (line {line} says true); roostd has one allow_anonymous for all listeners and uses false, the safer: clients of the listener that allowed anonymous need a user name and password (password_file) or a certificate identity")));
                self.top.set_because(
                    "allow_anonymous",
                    value,
                    s.no,
                    notes,
                    "the safer value for all listeners",
                );
            }
            Some((_, line)) => self.not_converted(
                Target::Top,
                s,
                &format!("roostd has one allow_anonymous for all listeners, and line {line} sets false (the safer) for another listener"),
            ),
        }
    }

    fn auth_file(&mut self, s: &Src) {
        let key: &'static str = if s.key == "acl_file" {
            "acl_file"
        } else {
            "password_file"
        };
        let path = match string(s) {
            Ok(p) => p,
            Err(why) => return self.not_converted(Target::Top, s, &why),
        };
        if self.per_listener && key == "password_file" && self.cur == Cur::Default {
            // A security option of Mosquitto's default listener opens it.
            self.default_listener(s.no);
        }
        match self.top.get(key) {
            None => {
                let notes = if self.per_listener {
                    vec![s.note(&format!("with per_listener_settings Mosquitto applies this to one listener; roostd has one {key} for all listeners"))]
                } else {
                    Vec::new()
                };
                self.top.set(key, toml_string(path), s.no, notes);
            }
            Some((old, _)) if *old == toml_string(path) => {
                let text = s.note(&format!("the same {key} as already used for all listeners"));
                self.top.comment(text);
            }
            Some((_, line)) => {
                let why = if self.per_listener {
                    format!("roostd has one {key} for all listeners: the first one (line {line}) is used; merge the files into it")
                } else {
                    format!("a second {key} (Mosquitto refuses this too); line {line} is used")
                };
                self.not_converted(Target::Top, s, &why);
            }
        }
    }

    fn per_listener_settings(&mut self, s: &Src) {
        match boolean(s) {
            Ok(true) => self.not_converted(
                Target::Top,
                s,
                "roostd's allow_anonymous, password_file and acl_file apply to every listener: the first password_file and acl_file are used, and allow_anonymous false if any listener says so (see their comments)",
            ),
            Ok(false) => self.same(Target::Top, s, "roostd's authentication options apply to every listener"),
            Err(why) => self.not_converted(Target::Top, s, &why),
        }
    }

    fn top_bool(&mut self, s: &Src, key: &'static str, note: Option<String>) {
        match boolean(s) {
            Ok(v) => {
                let notes = note.into_iter().chain(trailing_note(s)).collect();
                self.top.set(key, v.to_string(), s.no, notes);
            }
            Err(why) => self.not_converted(Target::Top, s, &why),
        }
    }

    /// A whole number for a top-level key, or the reason it cannot be one.
    fn top_int(
        &mut self,
        s: &Src,
        key: &'static str,
        value: Result<u64, String>,
        notes: Vec<String>,
    ) {
        match value {
            Ok(v) => {
                let notes = notes.into_iter().chain(trailing_note(s)).collect();
                self.top.set(key, v.to_string(), s.no, notes);
            }
            Err(why) => self.not_converted(Target::Top, s, &why),
        }
    }

    fn persistence_location(&mut self, s: &Src) {
        let path = match string(s) {
            Ok(p) => p,
            Err(why) => return self.not_converted(Target::Top, s, &why),
        };
        if let Some((_, line)) = self.top.get("persistence_location") {
            return self.not_converted(
                Target::Top,
                s,
                &format!("a second persistence_location (Mosquitto refuses this too); line {line} is used"),
            );
        }
        let note = s.note("roostd keeps its own database, roostd.redb, in this directory; Mosquitto's mosquitto.db is not read, so retained messages and persistent sessions start empty. Under dist/roostd.service roostd may write only /var/lib/roostd: use that there");
        self.top
            .set("persistence_location", toml_string(path), s.no, vec![note]);
    }

    fn expiration(&mut self, s: &Src) {
        let tok = first_token(s.value);
        if tok.is_empty() {
            return self.not_converted(Target::Top, s, "it has no value");
        }
        match parse_expiration(tok) {
            Ok(_) => {
                let notes = trailing_note(s).into_iter().collect();
                self.top.set(
                    "persistent_client_expiration",
                    toml_string(tok),
                    s.no,
                    notes,
                );
            }
            Err(why) => self.not_converted(Target::Top, s, &clip(&why, QUOTE_MAX)),
        }
    }

    fn sys_interval(&mut self, s: &Src) {
        let v = int(s).and_then(|v| match u16::try_from(v) {
            Ok(v) => Ok(u64::from(v)),
            Err(_) => Err(format!(
                "{v} is not from 0 to 65535 (Mosquitto refuses it too)"
            )),
        });
        self.top_int(s, "sys_interval", v, Vec::new());
    }

    fn max_keepalive(&mut self, s: &Src) {
        let mut notes = Vec::new();
        let v = int(s).and_then(|v| match u16::try_from(v) {
            Ok(0) => {
                notes.push(s.note("0 is no limit in Mosquitto after 2.0 (2.0 refuses values below 10): 65535, the protocol maximum"));
                Ok(65535)
            }
            Ok(v) => Ok(u64::from(v)),
            Err(_) => Err(format!(
                "{v} is not from 0 to 65535 (Mosquitto refuses it too)"
            )),
        });
        self.top_int(s, "max_keepalive", v, notes);
    }

    fn max_inflight(&mut self, s: &Src) {
        let mut notes = Vec::new();
        let v = int(s).and_then(|v| {
            if v <= 0 || v == 65535 {
                notes.push(s.note("no limit in Mosquitto: 65535, the most roostd allows (the packet identifiers a client has)"));
                Ok(65535)
            } else if v > 65535 {
                Err(format!("{v} is above 65535 (Mosquitto refuses it too)"))
            } else {
                Ok(v.unsigned_abs())
            }
        });
        self.top_int(s, "max_inflight_messages", v, notes);
    }

    fn max_queued_messages(&mut self, s: &Src) {
        let mut notes = Vec::new();
        let v = int(s).map(|v| {
            if v <= 0 {
                notes.push(s.note(&format!("0 is no limit in Mosquitto: roostd needs a number, {UNLIMITED_QUEUED_MESSAGES}; max_queued_bytes still bounds every queue")));
                UNLIMITED_QUEUED_MESSAGES
            } else {
                v.unsigned_abs()
            }
        });
        self.top_int(s, "max_queued_messages", v, notes);
    }

    fn max_queued_bytes(&mut self, s: &Src) {
        match int(s) {
            Ok(v) if v <= 0 => self.not_converted(
                Target::Top,
                s,
                "0 is no limit in Mosquitto; roostd keeps its default bound, max_queued_bytes = 16777216 (16 MiB), so that one slow client cannot exhaust memory: raise it if clients need more",
            ),
            v => self.top_int(s, "max_queued_bytes", v.map(i64::unsigned_abs), Vec::new()),
        }
    }

    fn size_limit(&mut self, s: &Src) {
        let key: &'static str = if s.key == "max_packet_size" {
            "max_packet_size"
        } else {
            "message_size_limit"
        };
        let v = match int(s) {
            Ok(v) => v,
            Err(why) => return self.not_converted(Target::Top, s, &why),
        };
        let limit = match key {
            "max_packet_size" if v < 20 => {
                return self.not_converted(
                    Target::Top,
                    s,
                    &format!("{v} is below 20 (Mosquitto refuses it too)"),
                );
            }
            "max_packet_size" => Some(v.unsigned_abs().min(MQTT_MAX_REMAINING)),
            _ if v == 0 => None,
            _ if v < 0 || v.unsigned_abs() > MQTT_MAX_REMAINING => {
                return self.not_converted(
                    Target::Top,
                    s,
                    &format!(
                        "{v} is not from 0 to {MQTT_MAX_REMAINING} (Mosquitto refuses it too)"
                    ),
                );
            }
            _ => Some(v.unsigned_abs()),
        };
        let note = match (key, limit) {
            ("max_packet_size", _) => "Mosquitto counts the whole packet, roostd the packet after its 2 to 5 byte fixed header",
            (_, None) => "0 is no limit in Mosquitto: 268435455, the MQTT maximum (roostd's default is 1048576)",
            _ => "Mosquitto limits the payload, roostd the packet after its fixed header (topic, packet id and payload): raise it by the longest topic if payloads come close to it",
        };
        // Mosquitto uses the last value of each key.
        self.sizes.retain(|l| l.key != key);
        self.sizes.push(SizeLimit {
            key,
            note_line: s.note(note),
            limit,
        });
        self.top.slot(Slot::MessageSizeLimit);
    }

    fn connections(&mut self, s: &Src) {
        let global = s.key == "global_max_connections";
        let limit = match int(s) {
            Ok(v) if v < 0 => None,
            Ok(0) => {
                let t = if global {
                    Target::Top
                } else {
                    self.listener_target()
                };
                return self.not_converted(
                    t,
                    s,
                    "0 would refuse every client; roostd needs at least 1",
                );
            }
            Ok(v) => Some(v.unsigned_abs()),
            Err(why) => {
                let t = if global {
                    Target::Top
                } else {
                    self.listener_target()
                };
                return self.not_converted(t, s, &why);
            }
        };
        if !global && limit.is_some() && self.cur == Cur::Default {
            // Mosquitto 2.0 opens its default listener for a limit set before any listener.
            self.default_listener(s.no);
        }
        let entry = ConnLimit {
            no: s.no,
            note_line: String::new(),
            limit,
            listener: (!global).then_some(self.cur),
        };
        if global {
            self.global_conn = Some(ConnLimit {
                note_line: s.note(
                    "Mosquitto's limit for all listeners together, as roostd's max_connections",
                ),
                ..entry
            });
        } else {
            let note = s.note(match self.cur {
                Cur::Default => "Mosquitto limits its default listener; roostd's max_connections is for all listeners together",
                Cur::Listener(_) => "Mosquitto limits this listener; roostd's max_connections is for all listeners together",
            });
            let cur = self.cur;
            self.conn.retain(|c| c.listener != Some(cur));
            self.conn.push(ConnLimit {
                note_line: note,
                ..entry
            });
        }
        self.top.slot(Slot::MaxConnections);
    }

    fn tls_file(&mut self, s: &Src) {
        let key: &'static str = match s.key {
            "certfile" => "certfile",
            "keyfile" => "keyfile",
            _ => "cafile",
        };
        let path = match string(s) {
            Ok(p) => p,
            Err(why) => return self.not_converted(self.listener_target(), s, &why),
        };
        let i = self.cur_listener(s.no);
        if let Some((_, line)) = self.listeners[i].section.get(key) {
            return self.not_converted(
                Target::Listener(i),
                s,
                &format!("a second {key} for this listener (Mosquitto refuses this too); line {line} is used"),
            );
        }
        let l = &mut self.listeners[i];
        l.option_lines += 1;
        l.section.set(key, toml_string(path), s.no, Vec::new());
    }

    fn tls_bool(&mut self, s: &Src) {
        let key: &'static str = if s.key == "require_certificate" {
            "require_certificate"
        } else {
            "use_identity_as_username"
        };
        match boolean(s) {
            // Before any listener, only `true` makes Mosquitto open its default listener.
            Ok(false) if self.cur == Cur::Default && self.default_listener.is_none() => {
                self.same(Target::Top, s, "false is the default");
            }
            Ok(v) => {
                let i = self.cur_listener(s.no);
                let mut notes: Vec<String> = trailing_note(s).into_iter().collect();
                if key == "use_identity_as_username" && v {
                    notes.push(s.note("the certificate's subject common name becomes the user name, as in Mosquitto (identity_source = \"san\" takes the first subject alternative name instead)"));
                }
                let l = &mut self.listeners[i];
                l.option_lines += 1;
                l.section.set(key, v.to_string(), s.no, notes);
            }
            Err(why) => self.not_converted(self.listener_target(), s, &why),
        }
    }

    fn protocol(&mut self, s: &Src) {
        match first_token(s.value) {
            // Before any listener, `protocol mqtt` does not make Mosquitto open its default one.
            "mqtt" => {
                let t = self.listener_target();
                if let Target::Listener(i) = t {
                    self.listeners[i].websockets = false;
                }
                self.same(t, s, "MQTT over TCP is a listener's default protocol");
            }
            "" => self.not_converted(self.listener_target(), s, "it has no value"),
            "websockets" => {
                let i = self.cur_listener(s.no);
                self.listeners[i].websockets = true;
                self.listeners[i].option_lines += 1;
                let text = s.note("MQTT over WebSockets (wss with certfile and keyfile); any HTTP path is accepted, as in Mosquitto (`path` restricts it)");
                self.listeners[i].section.comment(text);
            }
            other => {
                // Opening it as MQTT over TCP would be a different listener: leave it out.
                let i = self.cur_listener(s.no);
                self.warnings += 1;
                let text = s.not_converted(&format!(
                    "roostd speaks MQTT over TCP, TLS and WebSockets, not `{}`",
                    clip(other, 40)
                ));
                let l = &mut self.listeners[i];
                l.section.comment(text);
                if l.skip.is_none() {
                    l.skip = Some(format!("its protocol (line {}) is not supported", s.no));
                }
            }
        }
    }

    /// Every other key: something roostd does already, or a reason it cannot.
    fn other(&mut self, s: &Src) {
        let key = s.key;
        if let Some(why) = bridge_reason(key) {
            return self.not_converted(Target::Top, s, why);
        }
        let tok = first_token(s.value);
        if self.cur == Cur::Default && opens_default_listener(key, tok, self.per_listener) {
            self.default_listener(s.no);
        }
        let listener = self.listener_target();
        // Mosquitto's security options are per listener with per_listener_settings.
        let security = if self.per_listener {
            listener
        } else {
            Target::Top
        };
        let (target, why) = match key {
            // Equivalents first.
            "set_tcp_nodelay" if tok == "true" || tok == "1" => {
                return self.same(Target::Top, s, "roostd always sets TCP_NODELAY (it batches its own writes)");
            }
            "set_tcp_nodelay" => (Target::Top, "roostd always sets TCP_NODELAY (it batches its own writes)"),
            "allow_zero_length_clientid" if tok == "true" || tok == "1" => {
                return self.same(security, s, "roostd gives a client with an empty client id and clean session 1 an id of its own, as Mosquitto");
            }
            "allow_zero_length_clientid" => (security, "roostd always accepts an empty client id with clean session 1 (MQTT 3.1.1 allows it)"),
            "auto_id_prefix" if s.value == "auto-" => {
                return self.same(security, s, "roostd's generated client ids start with auto- too");
            }
            "auto_id_prefix" => (security, "roostd's generated client ids always start with auto-"),
            "retry_interval" => {
                return self.same(Target::Top, s, "Mosquitto 2 ignores it too; roostd sends unacknowledged messages again when the client reconnects, as MQTT 3.1.1 says");
            }
            "allow_duplicate_messages" if tok == "false" || tok == "0" => {
                return self.same(Target::Top, s, "roostd delivers one copy per client, at the highest QoS of its overlapping subscriptions");
            }
            "allow_duplicate_messages" => (Target::Top, "roostd delivers one copy per client, at the highest QoS of its overlapping subscriptions"),
            "upgrade_outgoing_qos" if tok == "false" || tok == "0" => {
                return self.same(Target::Top, s, "roostd delivers at the QoS the subscription granted, at most the publisher's");
            }
            "upgrade_outgoing_qos" => (Target::Top, "roostd never upgrades the QoS of a delivery above the publisher's"),
            "check_retain_source" if tok == "false" || tok == "0" => {
                return self.same(security, s, "roostd does not check retained messages against the publisher's ACL again");
            }
            "check_retain_source" => (security, "roostd does not check retained messages against their publisher's current ACL"),
            "connection_messages" if tok == "true" || tok == "1" => {
                return self.same(Target::Top, s, "roostd logs every connect and disconnect at info level");
            }
            "connection_messages" => (Target::Top, "roostd always logs connects and disconnects at info level (RUST_LOG=roostd=warn hides them, and more)"),
            "max_inflight_bytes" if tok == "0" => {
                return self.same(Target::Top, s, "roostd bounds the in-flight window by max_inflight_messages only");
            }
            "max_inflight_bytes" => (Target::Top, "roostd bounds the in-flight window by max_inflight_messages only"),
            "maximum_qos" | "max_qos" if tok == "2" => {
                return self.same(listener, s, "roostd grants QoS 2");
            }
            "maximum_qos" | "max_qos" => (listener, "roostd grants every QoS up to 2 on every listener"),
            "tls_version" if tok == "tlsv1.2" => {
                return self.same(listener, s, "roostd accepts TLS 1.2 and 1.3");
            }
            "tls_version" => (listener, "roostd accepts TLS 1.2 and 1.3, nothing older and not 1.3 alone"),
            "dhparamfile" => {
                return self.same(listener, s, "roostd's TLS uses ECDHE key exchange only, which needs no DH parameters");
            }

            // Logging and process management: the service manager's job.
            k if k.starts_with("log_") => (Target::Top, "roostd logs to stderr (the journal under systemd: journalctl -u roostd); -v adds a line per packet, RUST_LOG filters"),
            "websockets_log_level" => (Target::Top, "roostd logs to stderr; RUST_LOG=roostd=debug shows WebSocket upgrades"),
            "pid_file" => (Target::Top, "roostd writes no pid file: run it under systemd (dist/roostd.service)"),
            "user" => (Target::Top, "roostd does not switch users: run it under systemd as its own user (User=roostd in dist/roostd.service)"),
            "include_dir" => (Target::Top, "roostd reads one file: convert each file of that directory and merge them into this one"),

            // Persistence.
            "persistence_file" => (Target::Top, "roostd's database is always roostd.redb in persistence_location"),
            "autosave_interval" | "autosave_on_changes" => (Target::Top, "roostd writes every change as it happens; when writes reach the disk is `fsync` (default \"interval\": every fsync_interval = 1000 ms)"),
            "memory_limit" => (Target::Top, "roostd bounds memory by its queue and retained limits (max_queued_bytes, max_retained_bytes, max_storage_backlog), not by one total"),
            "global_max_clients" => (Target::Top, "roostd bounds connections (max_connections), not client sessions"),
            "clientid_prefixes" => (Target::Top, "roostd accepts any client id"),
            "websockets_headers_size" => (Target::Top, "roostd accepts WebSocket upgrade requests of up to 8 KiB"),
            "enable_control_api" => (Target::Top, "roostd has no $CONTROL API"),
            "quic_log_level" => (Target::Top, "roostd has no QUIC listeners"),

            // Plugins and other security options.
            "auth_plugin" | "plugin" | "global_plugin" | "auth_plugin_deny_special_chars" => (
                if key == "global_plugin" { Target::Top } else { security },
                "roostd has no plugins: use password_file and acl_file (Mosquitto's formats)",
            ),
            k if k.starts_with("auth_opt_") || k.starts_with("plugin_opt_") => (
                security,
                "roostd has no plugins: use password_file and acl_file (Mosquitto's formats)",
            ),
            "psk_file" => (security, "roostd's TLS has no pre-shared keys: use certificates"),

            // Per-listener options.
            "capath" => (listener, "roostd reads CA certificates from one file: concatenate the directory's certificates into one PEM file and name it in cafile"),
            "crlfile" => (listener, "roostd does not check certificate revocation lists, so revoked client certificates would be accepted: leave them out of cafile's trust (a new CA) before relying on this listener"),
            "ciphers" | "ciphers_tls1.3" => (listener, "roostd's TLS chooses its own cipher suites (ECDHE with AES-GCM or ChaCha20-Poly1305)"),
            "tls_engine" | "tls_keyform" | "tls_engine_kpass_sha1" => (listener, "roostd reads PEM keys from files only (no OpenSSL engines)"),
            "psk_hint" => (listener, "roostd's TLS has no pre-shared keys: use certificates"),
            "disable_client_cert_date_checks" => (listener, "roostd always checks client certificates' dates"),
            "use_subject_as_username" => (listener, "roostd takes the user name from the subject common name or the first subject alternative name (use_identity_as_username with identity_source), not the whole subject"),
            "use_username_as_clientid" => (listener, "roostd keeps the client's own client id"),
            "bind_interface" => (listener, "roostd binds addresses, not interfaces: put the interface's address in the listener's bind_address"),
            "socket_domain" if tok == "ipv4" => {
                return self.same(listener, s, "roostd binds exactly bind_address, and its default, 0.0.0.0, is IPv4 only");
            }
            "socket_domain" => (listener, "roostd binds exactly bind_address: an IPv4 address listens on IPv4, an IPv6 address on IPv6 (\"::\" on both on Linux)"),
            "mount_point" => (listener, "roostd has no mount points"),
            "max_topic_alias" | "max_topic_alias_broker" => (listener, "topic aliases are MQTT 5; roostd speaks MQTT 3.1.1"),
            "accept_protocol_versions" => (listener, "roostd speaks MQTT 3.1.1 only"),
            "enable_proxy_protocol" => (listener, "roostd does not read the PROXY protocol"),
            "http_dir" => (listener, "roostd serves no files over HTTP"),
            "websockets_origin" => (listener, "roostd does not check the Origin of WebSocket upgrades"),

            _ => (Target::Top, "not an option of Mosquitto 2 or roostd (Mosquitto refuses unknown options)"),
        };
        self.not_converted(target, s, why);
        // Without these the listener would be open to more than in Mosquitto: more interfaces,
        // the whole topic tree, revoked certificates, or no encryption at all.
        if let (Target::Listener(i), "bind_interface" | "mount_point" | "crlfile" | "psk_hint") =
            (target, key)
        {
            if let Some(l) = self.listeners.get_mut(i) {
                if l.skip.is_none() {
                    l.skip = Some(format!(
                        "without its {key} (line {}) it would be less restricted than in Mosquitto",
                        s.no
                    ));
                }
            }
        }
    }

    fn render(mut self, origin: &str) -> Conversion {
        let mut out = String::new();
        let mut listeners = std::mem::take(&mut self.listeners);

        // Listeners that cannot be made as safe as the original are written as comments.
        for l in &mut listeners {
            if l.skip.is_some() {
                continue;
            }
            let has = |k: &str| l.section.get(k).is_some();
            let yes = |k: &str| l.section.get(k).is_some_and(|(v, _)| v == "true");
            let tls = has("certfile") && has("keyfile");
            if !tls && (has("certfile") || has("keyfile")) {
                l.skip = Some("it has certfile or keyfile but not both: Mosquitto 2.0 then opens it without TLS, roostd refuses that; add the missing file to make it a TLS listener".into());
            } else if !tls
                && (has("cafile") || yes("require_certificate") || yes("use_identity_as_username"))
            {
                l.skip = Some("it has client-certificate options but no certfile and keyfile: Mosquitto 2.0 then opens it without TLS, roostd refuses that; add both to make it a TLS listener".into());
            }
        }
        let converted: Vec<usize> = (0..listeners.len())
            .filter(|&i| listeners[i].skip.is_none())
            .collect();

        let mut body = String::new();
        for item in &self.top.items {
            match item {
                Item::Comment(c) => push_comment(&mut body, c),
                Item::Key { key, value, .. } => body.push_str(&format!("{key} = {value}\n")),
                Item::Slot(Slot::MaxConnections) => {
                    self.warnings += render_connections(
                        &mut body,
                        &self.conn,
                        self.global_conn.as_ref(),
                        &listeners,
                        self.default_listener,
                    );
                }
                Item::Slot(Slot::MessageSizeLimit) => render_sizes(&mut body, &self.sizes),
            }
        }
        if self.had_listener && converted.is_empty() && self.top.get("allow_anonymous").is_none() {
            push_comment(&mut body, "no listener could be converted, so roostd listens on 127.0.0.1:1883 only; Mosquitto refused anonymous clients here (it had listeners), and so does roostd:");
            body.push_str("allow_anonymous = false\n");
        }

        // What differs from Mosquitto's defaults where the original relies on them.
        let mut defaults = Vec::new();
        let given = |k: &str| self.top.get(k).is_some();
        if !given("persistence") {
            defaults.push("persistence = true (Mosquitto: false): messages and sessions are kept on disk in persistence_location; `persistence = false` keeps nothing");
        }
        if !given("persistent_client_expiration") {
            defaults.push("persistent_client_expiration = \"1d\" (Mosquitto: never): \"never\" keeps offline persistent sessions forever");
        }
        if !given("max_queued_bytes") {
            defaults.push("max_queued_bytes = 16777216 (Mosquitto: no limit)");
        }
        if self.sizes.is_empty() {
            defaults.push("message_size_limit = 1048576 (Mosquitto: 268435455, the MQTT maximum)");
        }
        if self.conn.is_empty() && self.global_conn.is_none() {
            defaults.push("max_connections = 100000 (Mosquitto: no limit); see LimitNOFILE in dist/roostd.service");
        }
        defaults.push("Prometheus metrics on http://127.0.0.1:9234/metrics (Mosquitto has none): metrics_enabled = false turns them off");
        body.push('\n');
        push_comment(&mut body, "Defaults of roostd that differ from Mosquitto's (README.md, \"Defaults that differ from Mosquitto\"):");
        for d in defaults {
            push_comment(&mut body, &format!("  {d}"));
        }

        let mut ipv6_noted = false;
        for l in &listeners {
            body.push('\n');
            match &l.skip {
                None => render_listener(&mut body, l, &mut ipv6_noted),
                Some(why) => {
                    self.warnings += usize::from(l.line.is_some()) + l.option_lines;
                    render_skipped(&mut body, l, why);
                }
            }
        }

        push_comment(
            &mut out,
            &format!(
                "roostd configuration converted by `roostd import-mosquitto-conf` from {}",
                clip(origin, 200)
            ),
        );
        push_comment(&mut out, "Every line of the original that could not be carried over has a comment saying why; the original's own comments are not copied.");
        push_comment(
            &mut out,
            "roostd.example.toml lists every option with its default.",
        );
        if self.warnings > 0 {
            push_comment(
                &mut out,
                &format!(
                    "{} line(s) not converted: search for \"not converted\".",
                    self.warnings
                ),
            );
        }
        out.push('\n');
        out.push_str(&body);
        Conversion {
            toml: out,
            warnings: self.warnings,
        }
    }
}

/// `#` comment line(s); the text is made safe for TOML (no control characters).
fn push_comment(out: &mut String, text: &str) {
    out.push_str("# ");
    out.push_str(&clip(text, usize::MAX));
    out.push('\n');
}

/// An IP address to bind, or why `addr` cannot be one; localhost is 127.0.0.1.
fn parse_bind(addr: &str) -> Result<(String, Option<String>), String> {
    if addr.parse::<IpAddr>().is_ok() {
        return Ok((addr.to_string(), None));
    }
    if addr == "localhost" {
        return Ok((
            "127.0.0.1".into(),
            Some("Mosquitto binds every address of localhost, ::1 too: add a [[listener]] with bind_address = \"::1\" for IPv6 clients".into()),
        ));
    }
    Err(format!(
        "`{}` is a host name; roostd binds IP addresses: write the address it stands for in bind_address",
        clip(addr, 60)
    ))
}

fn render_listener(out: &mut String, l: &Listener, ipv6_noted: &mut bool) {
    out.push_str("[[listener]]\n");
    push_comment(out, &origin_of(l));
    match (l.line, l.port_line, l.created_by) {
        (None, None, Some(n)) if !l.explicit => push_comment(
            out,
            &format!("Mosquitto 2.0 opens this listener, on port 1883, because line {n} sets a listener option before the first `listener` line: remove this table if no client connects to it"),
        ),
        (None, None, _) => push_comment(
            out,
            "Mosquitto's default listener uses port 1883 unless a `port` line says otherwise",
        ),
        _ => {}
    }
    out.push_str(&format!("port = {}\n", l.port));
    out.push_str(&format!(
        "bind_address = {}\n",
        toml_string(&l.bind_address)
    ));
    match &l.bind_note {
        // Said once, on the first listener on every interface.
        Some(n) if n == ALL_INTERFACES_NOTE && *ipv6_noted => {}
        Some(n) => {
            *ipv6_noted |= n == ALL_INTERFACES_NOTE;
            push_comment(out, n);
        }
        None => {}
    }
    if l.websockets {
        out.push_str("protocol = \"websockets\"\n");
    }
    for item in &l.section.items {
        match item {
            Item::Comment(c) => push_comment(out, c),
            Item::Key { key, value, .. } => out.push_str(&format!("{key} = {value}\n")),
            Item::Slot(_) => {}
        }
    }
}

fn origin_of(l: &Listener) -> String {
    match l.line {
        Some(n) => format!("mosquitto.conf line {n}: \"{}\"", l.quoted),
        None => l.quoted.clone(),
    }
}

/// A listener left out, written as comments so that nothing of it is lost.
fn render_skipped(out: &mut String, l: &Listener, why: &str) {
    if l.section.items.is_empty() && !l.websockets && l.line.is_some() {
        push_comment(out, &format!("{} not converted: {why}", origin_of(l)));
        return;
    }
    push_comment(
        out,
        &format!(
            "{} not converted: {why}. What it had, for reference:",
            origin_of(l)
        ),
    );
    push_comment(out, "[[listener]]");
    if l.line.is_none() {
        push_comment(out, &format!("port = {}", l.port));
    }
    if l.websockets {
        push_comment(out, "protocol = \"websockets\"");
    }
    for item in &l.section.items {
        match item {
            Item::Comment(c) => push_comment(out, c),
            Item::Key { key, value, .. } => push_comment(out, &format!("{key} = {value}")),
            Item::Slot(_) => {}
        }
    }
}

/// Writes max_connections from the per-listener limits (or global_max_connections); returns the
/// lines not carried over.
fn render_connections(
    out: &mut String,
    conn: &[ConnLimit],
    global: Option<&ConnLimit>,
    listeners: &[Listener],
    default_listener: Option<usize>,
) -> usize {
    let skipped = |c: &ConnLimit| match c.listener {
        Some(Cur::Listener(i)) => listeners.get(i).is_some_and(|l| l.skip.is_some()),
        Some(Cur::Default) => default_listener
            .and_then(|i| listeners.get(i))
            .is_some_and(|l| l.skip.is_some()),
        None => false,
    };
    let mut warnings = 0;
    let limit = if let Some(g) = global {
        for c in conn {
            warnings += 1;
            push_comment(out, &format!("mosquitto.conf line {}: max_connections not converted: roostd has one limit for all listeners, global_max_connections (line {}) is used", c.no, g.no));
        }
        push_comment(out, &g.note_line);
        g.limit
    } else {
        let used: Vec<&ConnLimit> = conn.iter().filter(|c| !skipped(c)).collect();
        for c in conn.iter().filter(|c| skipped(c)) {
            push_comment(out, &format!("mosquitto.conf line {}: max_connections of a listener that is not converted: not counted", c.no));
        }
        if used.is_empty() {
            return warnings;
        }
        for c in &used {
            push_comment(out, &c.note_line);
        }
        if used.len() > 1 {
            push_comment(out, "roostd's limit is the sum of these listeners' limits");
        }
        let total = used
            .iter()
            .try_fold(0u64, |sum, c| c.limit.map(|l| sum.saturating_add(l)));
        if total.is_some() && listeners.iter().filter(|l| l.skip.is_none()).count() > used.len() {
            push_comment(out, "listeners without max_connections had no limit in Mosquitto; roostd's limit counts their clients too");
        }
        total
    };
    let value = match limit {
        Some(v) => v,
        None => {
            push_comment(out, &format!("-1 is no limit in Mosquitto; roostd needs a number: {UNLIMITED_CONNECTIONS}, more than the open-file limit allows (LimitNOFILE in dist/roostd.service, ulimit -n)"));
            UNLIMITED_CONNECTIONS
        }
    };
    out.push_str(&format!("max_connections = {value}\n"));
    warnings
}

/// Writes message_size_limit from message_size_limit and max_packet_size (the smaller holds).
fn render_sizes(out: &mut String, sizes: &[SizeLimit]) {
    for s in sizes {
        push_comment(out, &s.note_line);
    }
    let value = sizes
        .iter()
        .filter_map(|s| s.limit)
        .min()
        .unwrap_or(MQTT_MAX_REMAINING);
    if sizes.iter().filter(|s| s.limit.is_some()).count() > 1 {
        push_comment(out, "both limit the size in Mosquitto: the smaller is used");
    }
    out.push_str(&format!("message_size_limit = {value}\n"));
}

/// Whether Mosquitto 2.0 opens its default listener (port 1883) for this option given before
/// the first `listener` line (its check in config__parse_args); the options handled elsewhere
/// (certfile, max_connections, ...) make the same decision where they are read.
fn opens_default_listener(key: &str, tok: &str, per_listener: bool) -> bool {
    let yes = tok == "true" || tok == "1";
    match key {
        "bind_interface"
        | "capath"
        | "tls_engine"
        | "tls_engine_kpass_sha1"
        | "ciphers"
        | "ciphers_tls1.3"
        | "dhparamfile"
        | "psk_hint"
        | "crlfile"
        | "socket_domain" => true,
        "use_subject_as_username" | "use_username_as_clientid" => yes,
        "tls_keyform" => tok != "pem",
        "maximum_qos" | "max_qos" => tok != "2",
        "psk_file" | "auth_plugin" | "plugin" => per_listener,
        "allow_zero_length_clientid" => per_listener && (tok == "false" || tok == "0"),
        _ => false,
    }
}

/// Why a bridge option cannot be converted (None: not a bridge option).
fn bridge_reason(key: &str) -> Option<&'static str> {
    const BRIDGE: &[&str] = &[
        "connection",
        "address",
        "addresses",
        "topic",
        "cleansession",
        "local_cleansession",
        "clientid",
        "remote_clientid",
        "local_clientid",
        "username",
        "remote_username",
        "password",
        "remote_password",
        "local_username",
        "local_password",
        "keepalive_interval",
        "idle_timeout",
        "notifications",
        "notifications_local_only",
        "notification_topic",
        "restart_timeout",
        "round_robin",
        "start_type",
        "threshold",
        "try_private",
    ];
    (key.starts_with("bridge_") || BRIDGE.contains(&key)).then_some("roostd has no bridges yet")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;
    use crate::config::{Config, ListenerConfig, ListenerProtocol};

    /// The conversion, parsed by roostd's own parser (the test fails with the TOML if it does not).
    fn parsed(text: &str) -> (Conversion, Config) {
        let c = convert(text, "/etc/mosquitto/mosquitto.conf");
        match Config::from_toml_str(&c.toml) {
            Ok(config) => (c, config),
            Err(e) => panic!("output does not parse: {e}\n----\n{}", c.toml),
        }
    }

    /// The 1-based number of the line of `text` that starts with `start`.
    fn line_of(text: &str, start: &str) -> usize {
        text.lines()
            .position(|l| l.starts_with(start))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("no line starts with {start:?}"))
    }

    /// The line of `text` starting with `start` has its "not converted" comment in the output.
    fn assert_not_converted(c: &Conversion, text: &str, start: &str) {
        let prefix = format!("# mosquitto.conf line {}: \"{start}", line_of(text, start));
        assert!(
            c.toml
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains("not converted")),
            "no comment for {start:?} ({prefix}):\n{}",
            c.toml
        );
    }

    fn listener(config: &Config, port: u16) -> &ListenerConfig {
        config
            .listener
            .iter()
            .find(|l| l.port == port)
            .unwrap_or_else(|| panic!("no listener on port {port}: {:?}", config.listener))
    }

    const REALISTIC: &str = "\
# /etc/mosquitto/mosquitto.conf
pid_file /run/mosquitto/mosquitto.pid
user mosquitto

persistence true
persistence_location /var/lib/mosquitto/
persistent_client_expiration 2w
autosave_interval 300

log_dest file /var/log/mosquitto/mosquitto.log
log_type error
log_type warning
include_dir /etc/mosquitto/conf.d

allow_anonymous false
password_file /etc/mosquitto/passwd
acl_file /etc/mosquitto/acl

max_inflight_messages 40
max_queued_messages 5000
max_queued_bytes 104857600
message_size_limit 262144
max_keepalive 300
sys_interval 30

auth_plugin /usr/lib/mosquitto_dynamic_security.so
auth_opt_db_password hunter2

# Plain MQTT on every interface
listener 1883
max_connections 5000

# TLS with client certificates
listener 8883
certfile /etc/mosquitto/certs/server.pem
keyfile /etc/mosquitto/certs/server.key
cafile /etc/mosquitto/ca/ca.pem
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
max_connections 1000

# WebSockets for the dashboard
listener 9001
protocol websockets

# Local only
listener 1884 127.0.0.1

connection hq-bridge
address hq.example.com:8883
topic sensors/# out 1
remote_password s3cret
";

    #[test]
    fn realistic_config_converts_with_its_values_and_a_comment_per_unsupported_line() {
        let (c, config) = parsed(REALISTIC);

        assert!(config.persistence);
        assert_eq!(
            config.persistence_location,
            PathBuf::from("/var/lib/mosquitto/")
        );
        assert_eq!(config.persistent_client_expiration, "2w");
        assert_eq!(config.allow_anonymous, Some(false));
        assert_eq!(
            config.password_file,
            Some(PathBuf::from("/etc/mosquitto/passwd"))
        );
        assert_eq!(config.acl_file, Some(PathBuf::from("/etc/mosquitto/acl")));
        assert_eq!(config.max_inflight_messages, 40);
        assert_eq!(config.max_queued_messages, 5000);
        assert_eq!(config.max_queued_bytes, 104_857_600);
        assert_eq!(config.message_size_limit, 262_144);
        assert_eq!(config.max_keepalive, 300);
        assert_eq!(config.sys_interval, 30);
        // Mosquitto's limits are per listener, roostd's for all of them together.
        assert_eq!(config.max_connections, 6000);

        assert_eq!(config.listener.len(), 4);
        assert_eq!(
            *listener(&config, 1883),
            ListenerConfig::plain("0.0.0.0", 1883)
        );
        let tls = listener(&config, 8883);
        assert_eq!(tls.bind_address, "0.0.0.0");
        assert_eq!(
            tls.certfile,
            Some(PathBuf::from("/etc/mosquitto/certs/server.pem"))
        );
        assert_eq!(
            tls.keyfile,
            Some(PathBuf::from("/etc/mosquitto/certs/server.key"))
        );
        assert_eq!(tls.cafile, Some(PathBuf::from("/etc/mosquitto/ca/ca.pem")));
        assert!(tls.require_certificate);
        assert!(tls.use_identity_as_username);
        assert_eq!(tls.protocol, ListenerProtocol::Mqtt);
        let ws = listener(&config, 9001);
        assert_eq!(ws.protocol, ListenerProtocol::Websockets);
        assert_eq!(ws.certfile, None);
        assert_eq!(
            *listener(&config, 1884),
            ListenerConfig::plain("127.0.0.1", 1884)
        );

        let unsupported = [
            "pid_file",
            "user",
            "autosave_interval",
            "log_dest",
            "log_type error",
            "log_type warning",
            "include_dir",
            "auth_plugin",
            "auth_opt_db_password",
            "connection hq-bridge",
            "address",
            "topic",
            "remote_password",
        ];
        for start in unsupported {
            assert_not_converted(&c, REALISTIC, start);
        }
        assert_eq!(c.warnings, unsupported.len(), "{}", c.toml);
        assert!(c.toml.contains("roostd has no bridges yet"));
        assert!(c.toml.contains("run it under systemd"));
        // Secrets are not copied into comments.
        assert!(
            !c.toml.contains("hunter2") && !c.toml.contains("s3cret"),
            "{}",
            c.toml
        );
        // The header names the source, and says how many lines were left out.
        assert!(c.toml.starts_with("# roostd configuration converted"));
        assert!(c.toml.contains("from /etc/mosquitto/mosquitto.conf"));
        assert!(c.toml.contains("13 line(s) not converted"));
        // Equivalents say so without counting as warnings.
        assert!(c.toml.contains("\"tls_version tlsv1.2\": nothing to set"));
    }

    #[test]
    fn empty_and_comment_only_files_give_roostd_defaults() {
        let defaults = format!("{:?}", Config::from_toml_str("").unwrap());
        for text in [
            "",
            "\n\n   \n",
            "# only comments\n#listener 1883\n   # indented comment\n",
            "\u{feff}# with a byte order mark\n",
        ] {
            let (c, config) = parsed(text);
            assert_eq!(c.warnings, 0, "{text:?}: {}", c.toml);
            assert_eq!(format!("{config:?}"), defaults, "{text:?}");
            assert!(!c.toml.contains("not converted"));
        }
    }

    #[test]
    fn unknown_keys_get_a_comment() {
        let text = "listener 1883\nfrobnicate 3\nallow_anonymous true\nlistener_typo 1884\n";
        let (c, config) = parsed(text);
        assert_eq!(c.warnings, 2);
        assert_not_converted(&c, text, "frobnicate 3");
        assert_not_converted(&c, text, "listener_typo 1884");
        assert!(c.toml.contains("not an option of Mosquitto 2 or roostd"));
        assert_eq!(config.listener.len(), 1);
        assert_eq!(config.allow_anonymous, Some(true));
    }

    #[test]
    fn bad_numbers_and_values_are_comments_not_panics() {
        let lines = [
            "max_inflight_messages lots",
            "max_inflight_messages 70000",
            "max_queued_messages 99999999999999999999999",
            "max_queued_bytes 12abc",
            "sys_interval -5",
            "sys_interval 70000",
            "port 70000",
            "port abc",
            "port 0",
            "max_connections many",
            "max_connections 0",
            "message_size_limit 300000000",
            "message_size_limit -3",
            "max_packet_size 10",
            "persistent_client_expiration 3x",
            "persistent_client_expiration 0d",
            "allow_anonymous yes",
            "max_keepalive 70000",
            "max_keepalive -1",
            "persistence",
            "password_file",
            "require_certificate maybe",
            "protocol",
        ];
        for line in lines {
            let text = format!("{line}\n");
            let (c, config) = parsed(&text);
            assert_eq!(c.warnings, 1, "{line}: {}", c.toml);
            assert_not_converted(&c, &text, line);
            // A bad line never opens Mosquitto's default listener on 1883.
            assert!(config.listener.is_empty(), "{line}: {}", c.toml);
        }
        // Nor do values that leave Mosquitto without a default listener.
        for line in [
            "require_certificate false",
            "protocol mqtt",
            "use_identity_as_username 0",
        ] {
            let (c, config) = parsed(line);
            assert!(config.listener.is_empty(), "{line}: {}", c.toml);
            assert_eq!(c.warnings, 0);
        }
        // Bad listener lines: the listener and the options given for it become comments.
        for line in ["listener abc", "listener 99999", "listener", "listener -1"] {
            let text = format!("{line}\ncertfile /c.pem\nkeyfile /k.pem\nlistener 1883\n");
            let (c, config) = parsed(&text);
            assert_eq!(c.warnings, 3, "{line}: {}", c.toml);
            assert_eq!(
                config.listener,
                vec![ListenerConfig::plain("0.0.0.0", 1883)]
            );
            let comment = format!("# mosquitto.conf line 1: \"{line}\" not converted");
            assert!(c.toml.contains(&comment), "{}", c.toml);
            assert!(c.toml.contains("# certfile = \"/c.pem\""), "{}", c.toml);
        }
    }

    #[test]
    fn very_long_lines_are_kept_in_values_and_cut_in_comments() {
        let path = format!("/data/{}", "a".repeat(100_000));
        let text = format!(
            "password_file {path}\nunknown_option {}\n{}\n",
            "b".repeat(50_000),
            "c".repeat(200_000)
        );
        let (c, config) = parsed(&text);
        assert_eq!(config.password_file, Some(PathBuf::from(&path)));
        assert_eq!(c.warnings, 2);
        let longest_comment = c
            .toml
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest_comment < 500, "{longest_comment}");
    }

    #[test]
    fn trailing_blanks_and_crlf_convert_as_plain_lines() {
        let (plain, plain_config) = parsed(REALISTIC);
        let messy: String = REALISTIC
            .lines()
            .enumerate()
            .map(|(i, l)| {
                let pad = if i % 2 == 0 { " \t " } else { "\t" };
                format!("{pad}{l}{pad}\r\n")
            })
            .collect();
        let (c, config) = parsed(&messy);
        assert_eq!(format!("{config:?}"), format!("{plain_config:?}"));
        assert_eq!(c.warnings, plain.warnings);
        // Same output too: blanks and CR never reach a value or a comment.
        assert_eq!(c.toml, plain.toml);
        // Tabs between key and value.
        let (_, config) = parsed("listener\t1884\t127.0.0.1\r\nallow_anonymous\ttrue\r\n");
        assert_eq!(
            config.listener,
            vec![ListenerConfig::plain("127.0.0.1", 1884)]
        );
        assert_eq!(config.allow_anonymous, Some(true));
    }

    #[test]
    fn strings_are_escaped_for_toml() {
        let tricky = "C:\\mosquitto\\pass \"x\".txt \u{e9}\u{1F426}\ttab\u{7}bell";
        let text = format!("password_file {tricky}\nacl_file /etc/acl with spaces\n");
        let (_, config) = parsed(&text);
        assert_eq!(config.password_file, Some(PathBuf::from(tricky)));
        assert_eq!(config.acl_file, Some(PathBuf::from("/etc/acl with spaces")));
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        // A control character in a comment is escaped: TOML does not allow it there.
        let (c, _) = parsed("bogus \u{1}\u{7f}value\n");
        assert!(c.toml.contains("\\u{1}\\u{7f}value"), "{}", c.toml);
    }

    #[test]
    fn per_listener_settings_use_the_first_auth_files_and_the_safer_anonymous() {
        let text = "\
per_listener_settings true
listener 1883 127.0.0.1
allow_anonymous true
listener 8883
certfile /c.pem
keyfile /k.pem
allow_anonymous false
password_file /etc/mosquitto/passwd-public
acl_file /etc/mosquitto/acl-public
listener 8884
password_file /etc/mosquitto/passwd-other
acl_file /etc/mosquitto/acl-public
";
        let (c, config) = parsed(text);
        assert_eq!(config.allow_anonymous, Some(false));
        assert_eq!(
            config.password_file,
            Some(PathBuf::from("/etc/mosquitto/passwd-public"))
        );
        assert_eq!(
            config.acl_file,
            Some(PathBuf::from("/etc/mosquitto/acl-public"))
        );
        assert_eq!(config.listener.len(), 3);
        assert_not_converted(&c, text, "per_listener_settings true");
        assert_not_converted(&c, text, "password_file /etc/mosquitto/passwd-other");
        assert!(c.toml.contains("roostd applies it to every listener"));
        assert!(c.toml.contains("uses false, the safer"));
        // per_listener_settings, the overruled allow_anonymous and the second password file.
        assert_eq!(c.warnings, 3, "{}", c.toml);

        // Without per_listener_settings: Mosquitto's last allow_anonymous holds, and a second
        // password_file is refused (by Mosquitto too).
        let text =
            "allow_anonymous false\nallow_anonymous true\npassword_file /a\npassword_file /b\n";
        let (c, config) = parsed(text);
        assert_eq!(config.allow_anonymous, Some(true));
        assert_eq!(config.password_file, Some(PathBuf::from("/a")));
        assert_not_converted(&c, text, "password_file /b");
        assert!(c
            .toml
            .contains("`allow_anonymous = false` replaced by line 2"));
        assert_eq!(c.warnings, 1);
    }

    #[test]
    fn mosquitto_unlimited_values_get_the_closest_roostd_bound() {
        let text = "\
listener 1883
max_connections -1
max_inflight_messages 0
max_queued_messages 0
max_queued_bytes 0
message_size_limit 0
max_keepalive 0
";
        let (c, config) = parsed(text);
        assert_eq!(config.max_connections, UNLIMITED_CONNECTIONS as usize);
        assert_eq!(config.max_inflight_messages, 65535);
        assert_eq!(
            config.max_queued_messages,
            UNLIMITED_QUEUED_MESSAGES as usize
        );
        // roostd keeps its byte bound rather than none.
        assert_eq!(config.max_queued_bytes, 16 * 1024 * 1024);
        assert_not_converted(&c, text, "max_queued_bytes 0");
        assert_eq!(config.message_size_limit, MQTT_MAX_REMAINING as usize);
        assert_eq!(config.max_keepalive, 65535);
        assert_eq!(c.warnings, 1);
        assert!(c.toml.contains("-1 is no limit in Mosquitto"));
        assert!(c.toml.contains("max_queued_bytes still bounds every queue"));

        // max_packet_size and message_size_limit: the smaller; global_max_connections wins.
        let text = "message_size_limit 5000\nmax_packet_size 2000\nlistener 1883\nmax_connections 10\nglobal_max_connections 50\n";
        let (c, config) = parsed(text);
        assert_eq!(config.message_size_limit, 2000);
        assert_eq!(config.max_connections, 50);
        assert_eq!(c.warnings, 1, "{}", c.toml);
    }

    #[test]
    fn listeners_that_cannot_be_as_safe_as_the_original_become_comments() {
        let text = "\
listener 1883 localhost
listener 1885 broker.example.com
certfile /c.pem
keyfile /k.pem
listener 0 /run/mosquitto/mosquitto.sock
listener 8883
certfile /only-cert.pem
listener 8884
cafile /ca.pem
require_certificate true
listener 1890
protocol quic
listener 1891 ::1
protocol mqtt
";
        let (c, config) = parsed(text);
        assert_eq!(
            config.listener,
            vec![
                ListenerConfig::plain("127.0.0.1", 1883),
                ListenerConfig::plain("::1", 1891),
            ]
        );
        // No plain listener on the ports meant for TLS.
        assert!(!config
            .listener
            .iter()
            .any(|l| [8883, 8884, 1885, 1890].contains(&l.port)));
        assert!(c.toml.contains("`broker.example.com` is a host name"));
        assert!(c.toml.contains("no Unix socket listeners"));
        assert!(c.toml.contains("certfile or keyfile but not both"));
        assert!(c
            .toml
            .contains("client-certificate options but no certfile and keyfile"));
        assert!(c.toml.contains("not `quic`"));
        assert!(c.toml.contains("bind_address = \"::1\" for IPv6"));
        // Skipped: 1885 (+2 options), the socket, 8883 (+1), 8884 (+2), 1890 (+ its protocol).
        assert_eq!(c.warnings, 3 + 1 + 2 + 3 + 2, "{}", c.toml);
        assert_eq!(config.allow_anonymous, None);

        // Nothing converted: roostd would listen on localhost; anonymous stays refused.
        let (c, config) = parsed("listener 0 /run/m.sock\n");
        assert!(config.listener.is_empty());
        assert_eq!(config.allow_anonymous, Some(false));
        assert_eq!(c.warnings, 1);
    }

    #[test]
    fn listeners_restricted_by_options_roostd_lacks_become_comments() {
        for option in [
            "bind_interface eth1",
            "mount_point tenant1/",
            "crlfile /etc/mosquitto/crl.pem",
            "psk_hint broker",
        ] {
            let text = format!("listener 1883\nlistener 8883\n{option}\nsocket_domain ipv4\n");
            let (c, config) = parsed(&text);
            assert_eq!(
                config.listener,
                vec![ListenerConfig::plain("0.0.0.0", 1883)],
                "{option}"
            );
            assert!(c
                .toml
                .contains("would be less restricted than in Mosquitto"));
            // The option and the listener.
            assert_eq!(c.warnings, 2, "{option}: {}", c.toml);
        }
    }

    #[test]
    fn default_listener_takes_port_bind_address_and_options_before_any_listener() {
        let text = "\
port 1884
port 8883
bind_address 10.0.0.5
certfile /c.pem
keyfile /k.pem
listener 1883
";
        let (c, config) = parsed(text);
        assert_eq!(config.listener.len(), 2);
        let d = listener(&config, 8883);
        assert_eq!(d.bind_address, "10.0.0.5");
        assert_eq!(d.certfile, Some(PathBuf::from("/c.pem")));
        assert_eq!(
            *listener(&config, 1883),
            ListenerConfig::plain("0.0.0.0", 1883)
        );
        assert!(c.toml.contains("replaces line 1"));
        assert_eq!(c.warnings, 0);

        // A limit before the first listener makes Mosquitto 2.0 open its default listener too
        // (checked against mosquitto 2.0.11); -1, the default, does not.
        let (c, config) = parsed("max_connections 100\nlistener 1884\n");
        assert_eq!(config.listener.len(), 2, "{}", c.toml);
        assert_eq!(
            *listener(&config, 1883),
            ListenerConfig::plain("0.0.0.0", 1883)
        );
        assert!(c
            .toml
            .contains("Mosquitto 2.0 opens this listener, on port 1883, because line 1"));
        assert_eq!(config.max_connections, 100);
        let (_, config) = parsed("max_connections -1\nlistener 1884\n");
        assert_eq!(
            config.listener,
            vec![ListenerConfig::plain("0.0.0.0", 1884)]
        );
        // An interface binding cannot be carried over: that default listener stays a comment.
        let (c, config) = parsed("bind_interface eth0\nlistener 1884\n");
        assert_eq!(
            config.listener,
            vec![ListenerConfig::plain("0.0.0.0", 1884)]
        );
        assert_eq!(c.warnings, 1, "{}", c.toml);
        // bind_address asks for the default listener: no note telling to remove it.
        let (c, config) = parsed("bind_address 127.0.0.1\n");
        assert_eq!(
            config.listener,
            vec![ListenerConfig::plain("127.0.0.1", 1883)]
        );
        assert!(!c.toml.contains("remove this table"));

        // Listener options alone make Mosquitto's default listener, on 1883.
        let (c, config) = parsed("certfile /c.pem\nkeyfile /k.pem\n");
        assert_eq!(
            listener(&config, 1883).keyfile,
            Some(PathBuf::from("/k.pem"))
        );
        assert!(c
            .toml
            .contains("opens this listener, on port 1883, because line 1"));
    }

    #[test]
    fn equivalents_and_defaults_are_noted_without_warnings() {
        let text = "set_tcp_nodelay true\nallow_zero_length_clientid true\nretry_interval 20\nper_listener_settings false\nlistener 1883\nprotocol mqtt\nmaximum_qos 2\n";
        let (c, config) = parsed(text);
        assert_eq!(c.warnings, 0, "{}", c.toml);
        assert_eq!(config.listener.len(), 1);
        assert_eq!(c.toml.matches("nothing to set").count(), 6);
        // Defaults that differ are listed when the original relies on them.
        assert!(c.toml.contains("persistence = true (Mosquitto: false)"));
        assert!(c
            .toml
            .contains("persistent_client_expiration = \"1d\" (Mosquitto: never)"));
        let (c, _) = parsed("persistence false\npersistent_client_expiration 1y\n");
        assert!(!c.toml.contains("(Mosquitto: false)"));
        assert!(!c.toml.contains("(Mosquitto: never)"));
    }

    /// Keys and values of both kinds, good and bad, in any order.
    fn config_line() -> impl Strategy<Value = String> {
        let keys = prop::sample::select(vec![
            "listener",
            "port",
            "bind_address",
            "allow_anonymous",
            "password_file",
            "acl_file",
            "per_listener_settings",
            "persistence",
            "persistence_location",
            "persistent_client_expiration",
            "sys_interval",
            "max_keepalive",
            "max_inflight_messages",
            "max_queued_messages",
            "max_queued_bytes",
            "message_size_limit",
            "max_packet_size",
            "max_connections",
            "global_max_connections",
            "certfile",
            "keyfile",
            "cafile",
            "capath",
            "require_certificate",
            "use_identity_as_username",
            "protocol",
            "connection",
            "log_dest",
            "bogus",
            "#",
            "auth_opt_x",
            "tls_version",
            "maximum_qos",
            "set_tcp_nodelay",
        ]);
        let values = prop::sample::select(vec![
            "",
            "0",
            "1",
            "-1",
            "20",
            "65535",
            "65536",
            "1883",
            "true",
            "false",
            "localhost",
            "127.0.0.1",
            "::",
            "example.com",
            "/p",
            "a \"b\" \\c",
            "1d",
            "7x",
            "websockets",
            "mqtt",
            "quic",
            "1883 127.0.0.1",
            "0 /sock",
            "99999999999999999999",
            "\t",
            "#",
        ]);
        (keys, values, "[ \t]{0,2}").prop_map(|(k, v, pad)| format!("{pad}{k} {v}{pad}"))
    }

    proptest! {
        #[test]
        fn any_mix_of_lines_converts_to_a_config_roostd_accepts(
            lines in prop::collection::vec(config_line(), 0..40),
            crlf in any::<bool>(),
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            let c = convert(&text, "fuzz.conf");
            prop_assert!(Config::from_toml_str(&c.toml).is_ok(), "{}\n----\n{}", text, c.toml);
        }

        #[test]
        fn arbitrary_text_never_panics_and_still_parses(text in "\\PC{0,300}") {
            let c = convert(&text, "noise");
            prop_assert!(Config::from_toml_str(&c.toml).is_ok(), "{}", c.toml);
        }
    }
}
