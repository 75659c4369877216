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
        format!("mosquitto.conf line {}: \"{}\": {note}", self.no, self.quoted())
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
        if let Some(i) = self.position(key) {
            if let Item::Key {
                value: old,
                line: old_line,
                ..
            } = &self.items[i]
            {
                self.items[i] = Item::Comment(format!(
                    "mosquitto.conf line {old_line}: `{key} = {}` replaced by line {line}, as Mosquitto uses the last one",
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
        if !self.items.iter().any(|i| matches!(i, Item::Slot(s) if *s == slot)) {
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
    bind_address: String,
    /// Why the address was changed or what it does not cover.
    bind_note: Option<String>,
    /// Why this listener cannot be converted at all (then it is written as comments).
    skip: Option<String>,
    /// Option lines given for it (warnings when it is skipped).
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

    /// Mosquitto's default listener, created on first use.
    fn default_listener(&mut self) -> usize {
        if let Some(i) = self.default_listener {
            return i;
        }
        self.listeners.push(Listener::new(
            None,
            "Mosquitto's default listener (port, bind_address and the listener options before any `listener` line)".into(),
        ));
        let i = self.listeners.len() - 1;
        self.default_listener = Some(i);
        i
    }

    /// The listener that per-listener options go to, created if it is the default one.
    fn cur_listener(&mut self) -> usize {
        match self.cur {
            Cur::Listener(i) => i,
            Cur::Default => self.default_listener(),
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
        let mut tokens = s.value.split_whitespace().take_while(|t| !t.starts_with('#'));
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
            match bind_address(addr) {
                Ok((a, note)) => {
                    l.bind_address = a;
                    l.bind_note = note;
                }
                Err(why) => l.skip = Some(why),
            }
        }
        self.listeners.push(l);
        self.cur = Cur::Listener(self.listeners.len() - 1);
    }

    fn port(&mut self, s: &Src) {
        self.had_listener = true;
        let i = self.default_listener();
        let port = int(s).and_then(|p| match u16::try_from(p) {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{p} is not a port (1 to 65535)")),
        });
        match port {
            Ok(p) => {
                let l = &mut self.listeners[i];
                if l.section.get("port").is_some() || l.line.is_some() {
                    // Not reachable: the default listener has no `listener` line.
                }
                l.port = p;
                l.option_lines += 1;
                let text = s.note(&format!(
                    "the default listener's port{}",
                    trailing_note(s).map(|n| format!("; {n}")).unwrap_or_default()
                ));
                l.section.comment(text);
            }
            Err(why) => self.not_converted(Target::Listener(i), s, &why),
        }
    }

    fn bind_address(&mut self, s: &Src) {
        self.had_listener = true;
        let i = self.default_listener();
        let addr = match string(s) {
            Ok(a) => a,
            Err(why) => return self.not_converted(Target::Listener(i), s, &why),
        };
        self.listeners[i].option_lines += 1;
        match bind_address(addr) {
            Ok((a, note)) => {
                let l = &mut self.listeners[i];
                l.bind_address = a;
                l.bind_note = note;
                let text = s.note("the default listener's address");
                l.section.comment(text);
            }
            Err(why) => self.listeners[i].skip = Some(format!("{} (line {})", why, s.no)),
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
                self.top.set("allow_anonymous", value, s.no, notes);
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
                "roostd's allow_anonymous, password_file and acl_file apply to every listener; the first of each is used (see their comments)",
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
    fn top_int(&mut self, s: &Src, key: &'static str, value: Result<u64, String>, notes: Vec<String>) {
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
        let note = s.note("roostd keeps its own database, roostd.redb, in this directory; Mosquitto's mosquitto.db is not read, so retained messages and persistent sessions start empty");
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
                self.top
                    .set("persistent_client_expiration", toml_string(tok), s.no, notes);
            }
            Err(why) => self.not_converted(Target::Top, s, &clip(&why, QUOTE_MAX)),
        }
    }

    fn sys_interval(&mut self, s: &Src) {
        let v = int(s).and_then(|v| match u16::try_from(v) {
            Ok(v) => Ok(u64::from(v)),
            Err(_) => Err(format!("{v} is not from 0 to 65535 (Mosquitto refuses it too)")),
        });
        self.top_int(s, "sys_interval", v, Vec::new());
    }

    fn max_keepalive(&mut self, s: &Src) {
        let mut notes = Vec::new();
        let v = int(s).and_then(|v| match u16::try_from(v) {
            Ok(0) => {
                notes.push(s.note("0 is no limit in Mosquitto: 65535, the protocol maximum"));
                Ok(65535)
            }
            Ok(v) => Ok(u64::from(v)),
            Err(_) => Err(format!("{v} is not from 0 to 65535 (Mosquitto refuses it too)")),
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
                return self.not_converted(Target::Top, s, &format!("{v} is below 20 (Mosquitto refuses it too)"));
            }
            "max_packet_size" => Some(v.unsigned_abs().min(MQTT_MAX_REMAINING)),
            _ if v == 0 => None,
            _ if v < 0 || v.unsigned_abs() > MQTT_MAX_REMAINING => {
                return self.not_converted(Target::Top, s, &format!("{v} is not from 0 to {MQTT_MAX_REMAINING} (Mosquitto refuses it too)"));
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
                let t = if global { Target::Top } else { self.listener_target() };
                return self.not_converted(t, s, "0 would refuse every client; roostd needs at least 1");
            }
            Ok(v) => Some(v.unsigned_abs()),
            Err(why) => {
                let t = if global { Target::Top } else { self.listener_target() };
                return self.not_converted(t, s, &why);
            }
        };
        let entry = ConnLimit {
            no: s.no,
            note_line: String::new(),
            limit,
            listener: (!global).then_some(self.cur),
        };
        if global {
            self.global_conn = Some(ConnLimit {
                note_line: s.note("Mosquitto's limit for all listeners together, as roostd's max_connections"),
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
        let i = self.cur_listener();
        self.listeners[i].option_lines += 1;
        let path = match string(s) {
            Ok(p) => p,
            Err(why) => return self.not_converted(Target::Listener(i), s, &why),
        };
        if let Some((_, line)) = self.listeners[i].section.get(key) {
            return self.not_converted(
                Target::Listener(i),
                s,
                &format!("a second {key} for this listener (Mosquitto refuses this too); line {line} is used"),
            );
        }
        self.listeners[i].section.set(key, toml_string(path), s.no, Vec::new());
    }

    fn tls_bool(&mut self, s: &Src) {
        let key: &'static str = if s.key == "require_certificate" {
            "require_certificate"
        } else {
            "use_identity_as_username"
        };
        let i = self.cur_listener();
        self.listeners[i].option_lines += 1;
        match boolean(s) {
            Ok(v) => {
                let mut notes: Vec<String> = trailing_note(s).into_iter().collect();
                if key == "use_identity_as_username" && v {
                    notes.push(s.note("the certificate's subject common name becomes the user name, as in Mosquitto (identity_source = \"san\" takes the first subject alternative name instead)"));
                }
                self.listeners[i].section.set(key, v.to_string(), s.no, notes);
            }
            Err(why) => self.not_converted(Target::Listener(i), s, &why),
        }
    }

    fn protocol(&mut self, s: &Src) {
        let i = self.cur_listener();
        self.listeners[i].option_lines += 1;
        match first_token(s.value) {
            "mqtt" => {
                self.listeners[i].websockets = false;
                self.same(Target::Listener(i), s, "MQTT over TCP is a listener's default protocol");
            }
            "websockets" => {
                self.listeners[i].websockets = true;
                let text = s.note("MQTT over WebSockets (wss with certfile and keyfile); any HTTP path is accepted, as in Mosquitto (`path` restricts it)");
                self.listeners[i].section.comment(text);
            }
            "" => self.not_converted(Target::Listener(i), s, "it has no value"),
            other => {
                // Opening it as MQTT over TCP would be a different listener: leave it out.
                self.warnings += 1;
                let text = s.not_converted(&format!("roostd speaks MQTT over TCP, TLS and WebSockets, not `{}`", clip(other, 40)));
                let l = &mut self.listeners[i];
                l.option_lines -= 1;
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
        let listener = self.listener_target();
        // Mosquitto's security options are per listener with per_listener_settings.
        let security = if self.per_listener { listener } else { Target::Top };
        let tok = first_token(s.value);
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
            "socket_domain" => (listener, "roostd binds exactly bind_address: an IPv4 address listens on IPv4, an IPv6 address on IPv6 (\"::\" on both on Linux)"),
            "mount_point" => (listener, "roostd has no mount points"),
            "max_topic_alias" | "max_topic_alias_broker" => (listener, "topic aliases are MQTT 5; roostd speaks MQTT 3.1.1"),
            "accept_protocol_versions" => (listener, "roostd speaks MQTT 3.1.1 only"),
            "enable_proxy_protocol" => (listener, "roostd does not read the PROXY protocol"),
            "http_dir" => (listener, "roostd serves no files over HTTP"),
            "websockets_origin" => (listener, "roostd does not check the Origin of WebSocket upgrades"),

            _ => (Target::Top, "not an option of Mosquitto 2 or roostd (Mosquitto refuses unknown options)"),
        };
        if let Target::Listener(i) = target {
            if i < self.listeners.len() {
                self.listeners[i].option_lines += 1;
            }
        }
        self.not_converted(target, s, why);
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
                l.skip = Some("it has certfile or keyfile but not both: roostd needs both to make a TLS listener, and a plain one would send in the clear".into());
            } else if !tls && (has("cafile") || yes("require_certificate") || yes("use_identity_as_username")) {
                l.skip = Some("it has client-certificate options but no certfile and keyfile: roostd (as Mosquitto) needs both for TLS".into());
            }
        }
        let converted: Vec<usize> = (0..listeners.len())
            .filter(|&i| listeners[i].skip.is_none())
            .collect();

        let mut body = String::new();
        let mut set = |key: &str| self.top.get(key).is_some();
        let _ = &mut set;
        for item in &self.top.items {
            match item {
                Item::Comment(c) => push_comment(&mut body, c),
                Item::Key { key, value, .. } => body.push_str(&format!("{key} = {value}\n")),
                Item::Slot(Slot::MaxConnections) => {
                    self.warnings += render_connections(&mut body, &self.conn, self.global_conn.as_ref(), &listeners, self.default_listener);
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

        for l in &listeners {
            body.push('\n');
            match &l.skip {
                None => render_listener(&mut body, l),
                Some(why) => {
                    self.warnings += 1 + l.option_lines;
                    render_skipped(&mut body, l, why);
                }
            }
        }

        push_comment(&mut out, &format!("roostd configuration converted by `roostd import-mosquitto-conf` from {}", clip(origin, 200)));
        push_comment(&mut out, "Every line of the original that could not be carried over has a comment saying why; the original's own comments are not copied.");
        push_comment(&mut out, "roostd.example.toml lists every option with its default.");
        if self.warnings > 0 {
            push_comment(&mut out, &format!("{} line(s) not converted: search for \"not converted\".", self.warnings));
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
fn bind_address(addr: &str) -> Result<(String, Option<String>), String> {
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

fn render_listener(out: &mut String, l: &Listener) {
    out.push_str("[[listener]]\n");
    push_comment(out, &origin_of(l));
    out.push_str(&format!("port = {}\n", l.port));
    out.push_str(&format!("bind_address = {}\n", toml_string(&l.bind_address)));
    if let Some(n) = &l.bind_note {
        push_comment(out, n);
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
    push_comment(out, &format!("{} not converted: {why}. Its options, for reference:", origin_of(l)));
    push_comment(out, "[[listener]]");
    push_comment(out, &format!("port = {}", l.port));
    push_comment(out, &format!("bind_address = {}", toml_string(&l.bind_address)));
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
        if listeners.iter().filter(|l| l.skip.is_none()).count() > used.len() {
            push_comment(out, "listeners without max_connections had no limit in Mosquitto; roostd's limit counts their clients too");
        }
        used.iter()
            .try_fold(0u64, |sum, c| c.limit.map(|l| sum.saturating_add(l)))
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
