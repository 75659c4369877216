//! Config parsing as seen through `Config::from_toml_str`.

use crate::common::*;

#[test]
fn minimal_config_parses() {
    roostd::Config::from_toml_str(&config_toml("")).expect("minimal config");
}

#[test]
fn all_documented_keys_parse() {
    let extra = r#"
max_connections = 100
max_inflight_messages = 20
max_queued_messages = 1000
max_queued_bytes = 16777216
message_size_limit = 1048576
max_keepalive = 65535
persistent_client_expiration = "1d"
retain_available = true
queue_qos0_messages = false
connect_timeout = 10
"#;
    roostd::Config::from_toml_str(&config_toml(extra)).expect("documented keys must parse");
}

#[test]
fn persistent_client_expiration_forms_parse() {
    for v in ["1h", "1d", "never"] {
        let extra = format!("persistent_client_expiration = \"{v}\"");
        roostd::Config::from_toml_str(&config_toml(&extra))
            .unwrap_or_else(|e| panic!("{v:?} rejected: {e}"));
    }
}

#[test]
fn bad_persistent_client_expiration_is_an_error() {
    for v in ["soon", "1x"] {
        let extra = format!("persistent_client_expiration = \"{v}\"");
        assert!(
            roostd::Config::from_toml_str(&config_toml(&extra)).is_err(),
            "{v:?} should be rejected"
        );
    }
}

#[test]
fn unknown_top_level_key_is_an_error_naming_the_key() {
    let err = roostd::Config::from_toml_str(&config_toml("bogus_option_xyz = 1"))
        .expect_err("unknown key must be rejected");
    assert!(
        err.to_string().contains("bogus_option_xyz"),
        "error should name the key: {err}"
    );
}

#[test]
fn unknown_listener_key_is_an_error_naming_the_key() {
    let text = "allow_anonymous = true\n[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\nlistener_typo = 3\n";
    let err =
        roostd::Config::from_toml_str(text).expect_err("unknown listener key must be rejected");
    assert!(
        err.to_string().contains("listener_typo"),
        "error should name the key: {err}"
    );
}

#[test]
fn wrong_type_is_an_error() {
    assert!(
        roostd::Config::from_toml_str(&config_toml("max_inflight_messages = \"many\"")).is_err()
    );
}

#[tokio::test]
async fn broker_binds_ephemeral_port_and_stops_on_shutdown() {
    let b = start_broker("").await;
    let (c, _) = Raw::connect_ok(b.addr, &Connect::new("c")).await;
    drop(c);
    b.stop()
        .await
        .expect("run() should return Ok after shutdown");
}
