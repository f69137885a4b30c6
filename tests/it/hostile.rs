//! The webhook URL faces the internet: fuzz corpus, property tests, malformed floods, idle
//! connections, TLS, and secrets that must never leak.

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tim_kafka_bridge::webhook::{fuzz_check, sign, CallbackToken, Verifier, FUZZ_NOW_MS, FUZZ_TOKEN};

use crate::delivery::{assert_valid, schema};
use crate::helpers::*;

#[test]
fn the_fuzz_corpus_runs_clean_and_accepts_exactly_the_valid_seeds() {
    let dir = repo().join("fuzz/corpus/webhook_check");
    let mut accepted = HashSet::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if fuzz_check(&data).is_ok() {
            accepted.insert(path.file_name().unwrap().to_string_lossy().into_owned());
        }
        seen += 1;
    }
    assert!(seen >= 20, "the corpus has its seeds ({seen})");
    let expected: HashSet<String> =
        // deep_nesting: the nesting is inside an unknown field, which is skipped (iteratively, so no
        // depth can exhaust the stack).
        // not_published_join: a command the bridge does not publish, consistent: answered OK, no event.
        ["doc_sample", "all_fields", "event_time_number", "deep_nesting", "created_sample", "owner_changed_sample",
         "destroyed_sample", "not_published_join"].iter().map(|s| s.to_string()).collect();
    assert_eq!(accepted, expected);
}

// ---------------------------------------------------------------------------------------------------
// Properties of the check itself (no Kafka needed).

fn verifier() -> Verifier {
    Verifier {
        app_ids: vec![tim_kafka_bridge::domain::SdkAppId::parse("1400000000").unwrap()],
        token: CallbackToken::new(FUZZ_TOKEN.into()),
        max_skew_secs: 60,
        commands: tim_kafka_bridge::webhook::Command::ALL.to_vec(),
    }
}

fn query() -> String {
    let t = (FUZZ_NOW_MS / 1000).to_string();
    let s = sign(&CallbackToken::new(FUZZ_TOKEN.into()).unwrap(), &t);
    format!("SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterGroupInfoChanged&ClientIP=1.2.3.4&OptPlatform=Android&RequestTime={t}&Sign={s}")
}

/// Any string, including empty, unicode, control characters and long ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        "\\PC{0,64}",
        proptest::collection::vec(any::<char>(), 1000..4000).prop_map(|v| v.into_iter().collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_webhook_normalizes_to_a_schema_valid_event_that_keeps_every_value(
        group in "\\PC{1,16}", // at most 64 bytes: the longest GroupId taken
        group_type in proptest::option::of(text()),
        operator in proptest::option::of(text()),
        name in proptest::option::of(text()),
        introduction in proptest::option::of(text()),
        notification in proptest::option::of(text()),
        face_url in proptest::option::of(text()),
        event_time in 0i64..=253_402_300_799_999,
        time_as_string in any::<bool>(),
    ) {
        let mut body = serde_json::json!({
            "CallbackCommand": "Group.CallbackAfterGroupInfoChanged",
            "GroupId": group,
            "EventTime": if time_as_string { serde_json::json!(event_time.to_string()) } else { serde_json::json!(event_time) },
        });
        for (k, v) in [("Type", &group_type), ("Operator_Account", &operator), ("Name", &name),
                       ("Introduction", &introduction), ("Notification", &notification), ("FaceUrl", &face_url)] {
            if let Some(v) = v {
                body[k] = serde_json::json!(v);
            }
        }
        let bytes = serde_json::to_vec(&body).unwrap();

        let event = verifier().check(&query(), &bytes, FUZZ_NOW_MS).expect("a valid webhook is accepted").event().unwrap();
        let again = verifier().check(&query(), &bytes, FUZZ_NOW_MS + 5_000).unwrap().event().unwrap();

        prop_assert_eq!(event.event_id(), again.event_id());
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        prop_assert!(schema().is_valid(&value), "not schema-valid: {}", value);
        prop_assert_eq!(value["group_id"].as_str(), Some(group.as_str()));
        prop_assert_eq!(value["event_time_ms"].as_i64(), Some(event_time));
        prop_assert_eq!(value["group_type"].as_str(), group_type.as_deref());
        prop_assert_eq!(value["operator_account"].as_str(), operator.as_deref());
        let changes = &value["changes"];
        prop_assert_eq!(changes["name"].as_str(), name.as_deref());
        prop_assert_eq!(changes["introduction"].as_str(), introduction.as_deref());
        prop_assert_eq!(changes["notification"].as_str(), notification.as_deref());
        prop_assert_eq!(changes["face_url"].as_str(), face_url.as_deref());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = fuzz_check(&data);
    }
}

#[test]
fn a_field_as_long_as_the_body_limit_allows_is_kept_whole() {
    let long: String = "长".repeat(21_000); // 63 000 bytes of UTF-8
    let body = serde_json::json!({"GroupId": "g", "EventTime": 1, "Introduction": long});
    let bytes = serde_json::to_vec(&body).unwrap();
    assert!(bytes.len() <= 65_536);
    let event = verifier().check(&query(), &bytes, FUZZ_NOW_MS).unwrap().event().unwrap();
    assert_eq!(event.as_info_changed().unwrap().changes().introduction.as_deref(), Some(long.as_str()));
}

// ---------------------------------------------------------------------------------------------------
// Against the running bridge.

/// A GroupId over 64 KiB once reached a panic in the spool record's encoding (its key has a 16-bit
/// length), and a body limit above 64 KiB let one through. With a limit of 4 MiB, a signed webhook
/// whose GroupId is over 64 bytes, or over 64 KiB, or 1 MiB, is refused 400 with Tencent's FAIL
/// envelope, and nothing changes: nothing is spooled or published, the bridge stays healthy and takes
/// the next webhook, with the longest GroupId there is.
#[tokio::test]
async fn a_signed_group_id_over_64_bytes_is_refused_400_and_changes_nothing_at_a_large_body_limit() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path()).env("BRIDGE_MAX_BODY_BYTES", 4 << 20)).await;
    let too_long = ["g".repeat(65), "长".repeat(22), "g".repeat(70_000), "g".repeat(1 << 20)];

    for group in &too_long {
        let (status, answer) = bridge.post(&signed_query(now_secs()), Webhook::rename(group, 0).body()).await;
        assert_eq!(status, 400, "{} bytes: {answer:?}", group.len());
        assert_eq!((answer.action_status.as_str(), answer.error_code), ("FAIL", 60021));
        assert!(answer.error_info.contains("at most 64"), "{answer:?}");
    }

    let metrics = scrape(&bridge).await;
    assert_eq!(
        sample(&metrics, "bridge_webhooks_total{outcome=\"bad_request\"}"),
        Some(too_long.len() as f64)
    );
    assert_eq!(sample(&metrics, "bridge_spool_pending_events"), Some(0.0), "nothing was spooled");
    assert_eq!(bridge.get("/healthz").await.status(), 200);
    let longest = "@".repeat(64);
    assert_eq!(bridge.send(&Webhook::rename(&longest, 1)).await.0, 200);
    let records = read_exactly(&bridge.topic, 1, Duration::from_secs(30));
    assert_eq!(
        (records[0].key.as_str(), records[0].header("ce_subject")),
        (longest.as_str(), Some(longest.as_str()))
    );
}

/// One malformed request of many kinds, chosen by `i`.
fn malformed(i: usize, good_query: &str) -> (String, String, String, Vec<u8>, &'static str) {
    let sample = Webhook::sample().body();
    let q = good_query.to_owned();
    let post = "POST".to_owned();
    let path = "/webhook".to_owned();
    let json = "application/json";
    match i % 16 {
        0 => (post, path, q, sample.as_bytes()[..i % sample.len()].to_vec(), json),
        1 => (post, path, q, vec![0xff, 0xfe, b'{', 0x80, b'}'], json),
        2 => (
            post,
            path,
            q,
            format!("{{\"GroupId\":\"g\",\"EventTime\":1,\"X\":{}{}}}", "[".repeat(5000), "]".repeat(5000))
                .into_bytes(),
            json,
        ),
        3 => (
            post,
            path,
            q,
            format!("{{\"GroupId\":\"g\",\"EventTime\":{}}}", "9".repeat(400)).into_bytes(),
            json,
        ),
        4 => (post, path, q, br#"{"GroupId":"g","GroupId":"h","EventTime":1}"#.to_vec(), json),
        5 => ("GET".into(), path, q, Vec::new(), json),
        6 => ("PUT".into(), path, q, sample.into_bytes(), json),
        7 => ("DELETE".into(), path, q, Vec::new(), json),
        8 => (post, format!("/webhook/{i}/../x"), q, sample.into_bytes(), json),
        9 => (post, "/%2e%2e/%00".into(), q, sample.into_bytes(), json),
        10 => (post, path, format!("{q}&SdkAppid=1"), sample.into_bytes(), json),
        11 => (post, path, "SdkAppid=%ZZ&&&==&CallbackCommand".into(), sample.into_bytes(), json),
        12 => (post, path, q, sample.into_bytes(), "text/plain"),
        13 => (post, path, q, b"GroupId=g&EventTime=1".to_vec(), "application/x-www-form-urlencoded"),
        14 => (
            post,
            path,
            q,
            format!("{{\"GroupId\":\"g\",\"EventTime\":1,\"Name\":{}}}", i).into_bytes(),
            json,
        ),
        _ => (post, path, q, b"null".to_vec(), json),
    }
}

#[tokio::test]
async fn a_flood_of_malformed_requests_gets_no_5xx_and_publishes_only_the_accepted() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let http = reqwest::Client::new();
    let mut accepted = 0;
    let mut statuses = std::collections::BTreeMap::new();

    for i in 0..3200 {
        // Every 16th request is a good one. Of the odd ones, two kinds are valid webhooks too: a deeply
        // nested unknown field (ignored) and a wrong Content-Type (the body decides, not the header).
        let (method, path, query, body, content_type) = if i % 16 == 15 {
            let hook = Webhook::rename("@TGS#sweep", i);
            (
                "POST".to_owned(),
                "/webhook".to_owned(),
                signed_query(now_secs()),
                hook.body().into_bytes(),
                "application/json",
            )
        } else {
            malformed(i, &signed_query(now_secs()))
        };
        let url = format!("http://127.0.0.1:{}{}?{}", bridge.port, path, query);
        let resp = http
            .request(method.parse().unwrap(), &url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the bridge answers every request");
        let status = resp.status().as_u16();
        *statuses.entry(status).or_insert(0) += 1;
        assert!(status < 500, "request {i} ({method} {path}) answered {status}");
        if status == 200 {
            assert!([2, 12, 15].contains(&(i % 16)), "request {i} ({method} {path}) was accepted");
            accepted += 1;
        }
    }

    assert_eq!(accepted, 600, "statuses: {statuses:?}");
    assert_eq!(bridge.get("/healthz").await.status(), 200);
    let records = read_exactly(&bridge.topic, accepted, Duration::from_secs(60));
    assert_valid(&records);
}

#[tokio::test]
async fn four_hundred_idle_connections_do_not_delay_a_real_webhook() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let addr = format!("127.0.0.1:{}", bridge.port);

    let mut idle: Vec<TcpStream> = (0..400).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // Half of them start a request and stall mid-head.
    for s in idle.iter_mut().step_by(2) {
        s.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n").unwrap();
    }

    let started = Instant::now();
    let (status, _) = bridge.send(&Webhook::sample()).await;

    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "answered in {:?}", started.elapsed());
    read_exactly(&bridge.topic, 1, Duration::from_secs(30));
    drop(idle);
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408_counted_as_body_timeout_and_publishes_nothing() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let mut s = TcpStream::connect(("127.0.0.1", bridge.port)).unwrap();
    let query = signed_query(now_secs());
    write!(s, "POST /webhook?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"GroupId\":").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    let started = Instant::now();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut answer);

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"ActionStatus\":\"FAIL\"") && answer.contains("60408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // Counted as what it is, not as a malformed request.
    let metrics = scrape(&bridge).await;
    assert_eq!(sample(&metrics, "bridge_webhooks_total{outcome=\"body_timeout\"}"), Some(1.0));
    assert_eq!(sample(&metrics, "bridge_webhooks_total{outcome=\"bad_request\"}"), Some(0.0));
    assert_eq!(bridge.send(&Webhook::sample()).await.0, 200);
    read_exactly(&bridge.topic, 1, Duration::from_secs(30));
}

#[tokio::test]
async fn https_with_a_certificate_made_for_the_test() {
    let _up = broker().shared().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let bridge = Bridge::spawn(
        BridgeOptions::new(&dir.path().join("spool"))
            .env("BRIDGE_TLS_CERT", cert_path.display())
            .env("BRIDGE_TLS_KEY", key_path.display()),
    )
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], bridge.port).into())
        .build()
        .unwrap();

    let resp = client
        .post(format!("https://localhost:{}/webhook?{}", bridge.port, signed_query(now_secs())))
        .body(Webhook::sample().body())
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 200);
    read_exactly(&bridge.topic, 1, Duration::from_secs(30));
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{}/healthz", bridge.port)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test]
async fn secrets_never_reach_logs_answers_or_metrics() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let sasl_password = "sasl-pw-3c9e1f0a";
    let mut bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("RUST_LOG", "debug")
            .env("BRIDGE_RDKAFKA_SASL_USERNAME", "bridge")
            .env("BRIDGE_RDKAFKA_SASL_PASSWORD", sasl_password),
    )
    .await;

    // Good, badly signed and refused traffic, a scrape, and a shutdown: every path that logs.
    assert_eq!(bridge.send(&Webhook::sample()).await.0, 200);
    let wrong = signed_query(now_secs()).replace("Sign=", "Sign=0");
    let (_, answer) = bridge.post(&wrong, Webhook::sample().body()).await;
    assert_eq!(answer.action_status, "FAIL");
    read_exactly(&bridge.topic, 1, Duration::from_secs(30));
    let metrics = bridge.get("/metrics").await.text().await.unwrap();
    assert!(bridge.terminate(Duration::from_secs(20)).success());

    let logs = bridge.logs();
    assert!(logs.lines().count() > 5, "the run logged: {logs}");
    for secret in [TOKEN, sasl_password] {
        assert!(!logs.contains(secret), "a secret is in the logs");
        assert!(!metrics.contains(secret), "a secret is in the metrics");
        assert!(!answer.error_info.contains(secret), "a secret is in an answer");
    }
}
