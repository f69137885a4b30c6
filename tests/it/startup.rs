//! The binary's face: --help, --version, and configuration errors.

use std::process::Command;

use tim_kafka_bridge::configuration::VARIABLES;

fn bridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tim-kafka-bridge"));
    c.env_clear();
    c
}

#[test]
fn help_lists_every_variable_and_version_prints_the_version() {
    let help = bridge().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for v in VARIABLES {
        assert!(text.contains(v.name), "--help does not mention {}", v.name);
    }
    let version = bridge().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        format!("tim-kafka-bridge {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_missing_or_malformed_variable_stops_the_process_with_one_line_naming_it() {
    let missing = bridge().output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8(missing.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("BRIDGE_SDK_APP_ID"), "{err}");

    let bad = bridge().env("BRIDGE_SDK_APP_ID", "1").env("BRIDGE_SPOOL_MAX_BYTES", "1GB").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("BRIDGE_SPOOL_MAX_BYTES") && err.contains("1GB"), "{err}");
}

#[test]
fn an_override_that_would_reorder_or_lose_events_is_refused_with_one_line_naming_it() {
    for (name, value) in [
        ("BRIDGE_RDKAFKA_MESSAGE_TIMEOUT_MS", "5000"),
        ("BRIDGE_RDKAFKA_ACKS", "1"),
        ("BRIDGE_RDKAFKA_ENABLE_IDEMPOTENCE", "false"),
    ] {
        let out = bridge().env("BRIDGE_SDK_APP_ID", "1").env(name, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("{name}: ")) && err.contains("refused"), "{err}");
    }
}

#[test]
fn an_unknown_librdkafka_property_is_named_at_start() {
    let spool = tempfile::tempdir().unwrap();
    let out = bridge()
        .env("BRIDGE_SDK_APP_ID", "1")
        .env("BRIDGE_SPOOL_DIR", spool.path())
        .env("BRIDGE_LISTEN", "127.0.0.1:0")
        .env("BRIDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("BRIDGE_RDKAFKA_NO_SUCH_PROPERTY", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("BRIDGE_RDKAFKA_NO_SUCH_PROPERTY"), "{err}");
    // Printed once: one line on stderr, and not again as a log line on stdout.
    let all = format!("{}{err}", String::from_utf8(out.stdout).unwrap());
    assert_eq!(all.matches("BRIDGE_RDKAFKA_NO_SUCH_PROPERTY").count(), 1, "{all}");
}

#[test]
fn an_admin_port_in_use_is_named_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spool = tempfile::tempdir().unwrap();
    let out = bridge()
        .env("BRIDGE_SDK_APP_ID", "1")
        .env("BRIDGE_SPOOL_DIR", spool.path())
        .env("BRIDGE_LISTEN", "127.0.0.1:0")
        .env("BRIDGE_ADMIN_LISTEN", taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("BRIDGE_ADMIN_LISTEN: cannot bind"), "{err}");
}

#[tokio::test]
async fn a_second_bridge_on_the_same_spool_refuses_to_start() {
    let spool = tempfile::tempdir().unwrap();
    let _first = crate::helpers::Bridge::spawn(
        crate::helpers::BridgeOptions::new(spool.path()).env("BRIDGE_KAFKA_BROKERS", "127.0.0.1:1"),
    )
    .await;

    let second = bridge()
        .env("BRIDGE_SDK_APP_ID", "1")
        .env("BRIDGE_SPOOL_DIR", spool.path())
        .env("BRIDGE_LISTEN", "127.0.0.1:0")
        .env("BRIDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("BRIDGE_KAFKA_BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();

    assert!(!second.status.success());
    let err = String::from_utf8(second.stderr).unwrap();
    assert!(err.contains("in use by another process"), "{err}");
}
