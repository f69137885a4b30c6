//! The binary's face: --help, --version, and configuration errors.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tim_kafka_bridge::configuration::VARIABLES;

fn bridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tim-kafka-bridge"));
    c.env_clear();
    c
}

/// Runs `cmd` for at most 10 s: a process that should have stopped at start and did not is killed, so
/// the test fails instead of hanging.
fn run_briefly(mut cmd: Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// [`bridge`] that would serve harmlessly if it did start: its ports on 127.0.0.1 chosen by the
/// system, its spool in `dir`, a Kafka that is not there.
fn contained(dir: &std::path::Path) -> Command {
    let mut c = bridge();
    c.env("BRIDGE_SPOOL_DIR", dir)
        .env("BRIDGE_LISTEN", "127.0.0.1:0")
        .env("BRIDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("BRIDGE_KAFKA_BROKERS", "127.0.0.1:1");
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
    // The test suite's build has failpoints (the fault tests need them), and says so.
    let version = bridge().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        format!("tim-kafka-bridge {} (failpoints)", env!("CARGO_PKG_VERSION"))
    );
}

/// `drain --help` once drained `./spool` instead of printing help. Whatever command comes with it,
/// `-h`/`--help` prints the help and exits 0, and creates nothing and connects to nothing: run in an
/// empty directory, with every variable a drain or a snapshot would need pointing at listeners that
/// count connections.
#[test]
fn help_after_a_command_prints_the_help_exits_0_creates_nothing_and_connects_nowhere() {
    let kafka = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tencent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for args in [
        &["drain", "--help"][..],
        &["snapshot", "--help"],
        &["drain", "-h"],
        &["snapshot", "-h"],
        &["--help", "drain"],
    ] {
        let cwd = tempfile::tempdir().unwrap();
        let mut cmd = bridge();
        cmd.args(args)
            .current_dir(cwd.path())
            .env("BRIDGE_SDK_APP_ID", "1400000000")
            .env("BRIDGE_TENCENT_SECRET_KEY", "not-a-real-key")
            .env("BRIDGE_KAFKA_BROKERS", kafka.local_addr().unwrap().to_string())
            .env("BRIDGE_TENCENT_API_URL", format!("http://{}", tencent.local_addr().unwrap()))
            .env("BRIDGE_DRAIN_STALL_SECS", "1");
        let out = run_briefly(cmd);

        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("tim-kafka-bridge ") && text.contains("Usage: "), "{args:?}: {text}");
        for v in VARIABLES {
            assert!(text.contains(v.name), "{args:?}: the help does not mention {}", v.name);
        }
        let created: Vec<_> =
            std::fs::read_dir(cwd.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(created.is_empty(), "{args:?} created {created:?} (a ./spool: it drained)");
    }
    // A connection made and closed stays in the listener's queue: none was made.
    for (what, listener) in [("Kafka", kafka), ("Tencent's REST API", tencent)] {
        listener.set_nonblocking(true).unwrap();
        let accepted = listener.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "--help connected to {what}: {accepted:?}"
        );
    }
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
        ("BRIDGE_RDKAFKA_PARTITIONER", "consistent_random"),
        ("BRIDGE_RDKAFKA_DELIVERY_REPORT_ONLY_ERROR", "true"),
        ("BRIDGE_RDKAFKA_TRANSACTIONAL_ID", "bridge-1"),
    ] {
        let spool = tempfile::tempdir().unwrap();
        let mut cmd = contained(spool.path());
        cmd.env("BRIDGE_SDK_APP_ID", "1").env(name, value);
        let out = run_briefly(cmd);
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("{name}: ")) && err.contains("refused"), "{err}");
    }
}

#[test]
fn a_setting_outside_its_range_is_refused_with_one_line_naming_it_not_clamped() {
    for (name, value, expected) in [
        ("BRIDGE_KAFKA_STALL_SECS", "0", "BRIDGE_KAFKA_STALL_SECS: must be 1–86400, got 0"),
        ("BRIDGE_MAX_BODY_BYTES", "16777216", "BRIDGE_MAX_BODY_BYTES: must be 1–8388608, got 16777216"),
        ("BRIDGE_SHUTDOWN_GRACE_SECS", "99999999999", "BRIDGE_SHUTDOWN_GRACE_SECS: must be 0–3600"),
        ("BRIDGE_SIGN_MAX_SKEW_SECS", "0", "BRIDGE_SIGN_MAX_SKEW_SECS: must be 1–3600, got 0"),
    ] {
        let spool = tempfile::tempdir().unwrap();
        let mut cmd = contained(spool.path());
        cmd.env("BRIDGE_SDK_APP_ID", "1").env(name, value);
        let out = run_briefly(cmd);
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{name}={value}: {err}");
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
