//! Group lifecycle: created, info_changed, owner_changed and destroyed on one topic, keyed by group;
//! every other command answered OK (or relayed to the app's handler) and never published.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::delivery::assert_valid;
use crate::helpers::*;

const CREATE: &str = "Group.CallbackAfterCreateGroup";
const INFO: &str = "Group.CallbackAfterGroupInfoChanged";
const OWNER: &str = "Group.CallbackAfterChangeGroupOwner";
const DESTROY: &str = "Group.CallbackAfterGroupDestroyed";
const JOIN: &str = "Group.CallbackAfterNewMemberJoin";
const BEFORE_SEND: &str = "Group.CallbackBeforeSendMsg";

/// Tencent's samples ("After a Group Is Created", "Callback After the Group Owner Changed", "After a
/// Group Is Disbanded"), as the pages give them.
fn created_sample() -> serde_json::Value {
    json!({"CallbackCommand":"Group.CallbackAfterCreateGroup","GroupId":"@TGS#2J4SZEAEL","Operator_Account":"group_root",
     "Owner_Account":"leckie","Type":"Public","Name":"MyFirstGroup",
     "MemberList":[{"Member_Account":"bob"},{"Member_Account":"peter"}],
     "UserDefinedDataList":[{"Key":"UserDefined1","Value":"hello"},{"Key":"UserDefined2","Value":"world"}],
     "EventTime":"1670574414123"})
}

fn owner_changed_sample() -> serde_json::Value {
    json!({"CallbackCommand":"Group.CallbackAfterChangeGroupOwner","GroupId":"@TGS#2TTV7VSII","Type":"Public",
     "Operator_Account":"admin","OldOwner_Account":"user1","NewOwner_Account":"user2","EventTime":"1670574414123"})
}

fn destroyed_sample() -> serde_json::Value {
    json!({"CallbackCommand":"Group.CallbackAfterGroupDestroyed","GroupId":"@TGS#2J4SZEAEL","Type":"Public",
     "Owner_Account":"leckie","Name":"MyFirstGroup",
     "MemberList":[{"Member_Account":"leckie"},{"Member_Account":"peter"},{"Member_Account":"bob"}],
     "EventTime":"1670574414123"})
}

/// Tencent's "After a User Joins a Group" fields.
fn join_body(group: &str) -> serde_json::Value {
    json!({"CallbackCommand": JOIN, "GroupId": group, "Type": "Public", "JoinType": "Apply",
     "Operator_Account": "leckie", "NewMemberList": [{"Member_Account": "jared"}], "EventTime": "1670574414123"})
}

async fn post(bridge: &Bridge, command: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, answer) = bridge.post(&signed_query_for(command, now_secs()), body.to_string()).await;
    (status, serde_json::to_value(answer).unwrap())
}

fn ok() -> serde_json::Value {
    json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})
}

/// The value without what differs from run to run.
fn stable(r: &Record) -> serde_json::Value {
    let mut v = r.value.clone();
    let o = v.as_object_mut().unwrap();
    assert!(o.remove("received_at_ms").unwrap().is_i64());
    assert_eq!(o.remove("event_id").unwrap().as_str(), r.header("ce_id"));
    v
}

/// Everything the bridge published, the record of `group` (a marker sent last) left out. The marker
/// seen on the topic says nothing of records of other partitions, so this waits for the spool to
/// have nothing pending (the forwarder acknowledges in order), then reads the whole topic.
async fn read_up_to_marker(bridge: &Bridge, group: &str) -> Vec<Record> {
    wait_for("the spool to be forwarded", Duration::from_secs(30), || async {
        sample(&scrape(bridge).await, "bridge_spool_pending_events") == Some(0.0)
    })
    .await;
    let total = topic_len(&bridge.topic) as usize;
    let mut records = read_until(&bridge.topic, Duration::from_secs(30), |r| r.len() >= total);
    assert!(records.iter().any(|r| r.key == group), "the marker was published");
    records.retain(|r| r.key != group);
    records
}

async fn webhook_outcome(bridge: &Bridge, outcome: &str) -> f64 {
    let text = scrape(bridge).await;
    sample(&text, &format!("bridge_webhooks_total{{outcome=\"{outcome}\"}}")).unwrap_or_default()
}

#[tokio::test]
async fn each_documented_sample_is_published_with_its_type_and_ce_type_in_order_per_group() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;

    for (command, body) in [
        (CREATE, created_sample()),
        (INFO, Webhook::sample().0),
        (OWNER, owner_changed_sample()),
        (DESTROY, destroyed_sample()),
    ] {
        assert_eq!(post(&bridge, command, &body).await, (200, ok()), "{command}");
    }

    let records = read_exactly(&bridge.topic, 4, Duration::from_secs(30));
    assert_valid(&records);
    let ce_types: Vec<_> = records.iter().map(|r| (r.key.as_str(), r.header("ce_type").unwrap())).collect();
    let mut by_offset = records.clone();
    by_offset.sort_by_key(|r| (r.key.clone(), r.offset));
    let find = |t: &str| {
        records.iter().find(|r| r.header("ce_type") == Some(t)).unwrap_or_else(|| panic!("{t}: {ce_types:?}"))
    };
    let created = find("com.tencentcloud.im.group.created");
    let info = find("com.tencentcloud.im.group.info_changed");
    let owner = find("com.tencentcloud.im.group.owner_changed");
    let destroyed = find("com.tencentcloud.im.group.destroyed");

    let envelope = |group: &str, operator: serde_json::Value| {
        json!({"sdk_app_id": APP_ID, "group_id": group, "group_type": "Public", "operator_account": operator,
               "event_time_ms": 1670574414123i64, "client_ip": "10.0.0.7", "opt_platform": "RESTAPI"})
    };
    let with = |mut base: serde_json::Value, extra: serde_json::Value| {
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        base
    };
    assert_eq!(
        stable(created),
        with(
            envelope("@TGS#2J4SZEAEL", json!("group_root")),
            json!({"schema_version": 2, "type": "created", "owner_account": "leckie",
                   "profile": {"name": "MyFirstGroup"},
                   "custom_fields": {"UserDefined1": "hello", "UserDefined2": "world"}, "member_count": 2})
        )
    );
    assert_eq!(
        stable(owner),
        with(
            envelope("@TGS#2TTV7VSII", json!("admin")),
            json!({"schema_version": 2, "type": "owner_changed", "old_owner_account": "user1",
                   "new_owner_account": "user2"})
        )
    );
    assert_eq!(
        stable(destroyed),
        with(
            envelope("@TGS#2J4SZEAEL", serde_json::Value::Null),
            json!({"schema_version": 2, "type": "destroyed", "owner_account": "leckie", "name": "MyFirstGroup"})
        )
    );
    // info_changed keeps the version 1 layout: no `type`.
    assert_eq!(
        stable(info),
        with(
            envelope("@TGS#2J4SZEAEL", json!("leckie")),
            json!({"schema_version": 1, "changes": {"notification": "NewNotification"}})
        )
    );
    for r in &records {
        assert_eq!(r.key, r.value["group_id"].as_str().unwrap());
        assert_eq!(r.header("ce_subject"), Some(r.key.as_str()));
        assert_eq!(r.header("ce_source"), Some("/tencent-cloud-chat/1400000000"));
        assert_eq!(r.header("ce_time"), Some("2022-12-09T08:26:54.123Z"));
        assert_eq!(r.timestamp, Some(1670574414123));
    }
    // One group's events of every type share a partition, in the order they were accepted.
    assert!(created.partition == info.partition && info.partition == destroyed.partition);
    assert!(created.offset < info.offset && info.offset < destroyed.offset);
}

#[tokio::test]
async fn documented_field_spellings_and_event_time_as_number_or_string_are_accepted() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let group = unique("@TGS#spell");
    // `groupID` (the English field table's spelling), EventTime as a number, the zh page's
    // Introduction and Notification, no lists at all.
    let hooks = [
        (
            CREATE,
            json!({"CallbackCommand": CREATE, "groupID": group, "Type": "Work", "Owner_Account": "o",
                   "Name": "n", "Introduction": "", "Notification": "hi", "EventTime": 1700000000001u64}),
        ),
        (
            INFO,
            json!({"CallbackCommand": INFO, "groupID": group, "FaceUrl": "https://x/y.png", "EventTime": "1700000000002"}),
        ),
        (OWNER, json!({"groupID": group, "NewOwner_Account": "p", "EventTime": 1700000000003u64})),
        (DESTROY, json!({"CallbackCommand": DESTROY, "groupID": group, "EventTime": 1700000000004u64})),
    ];
    for (command, body) in &hooks {
        assert_eq!(post(&bridge, command, body).await, (200, ok()), "{command}: {body}");
    }

    let records = read_exactly(&bridge.topic, 4, Duration::from_secs(30));
    assert_valid(&records);
    let mut records = records;
    records.sort_by_key(|r| r.offset);
    let types: Vec<_> = records.iter().map(|r| r.value["type"].as_str().unwrap_or("(v1)")).collect();
    assert_eq!(types, ["created", "(v1)", "owner_changed", "destroyed"]);
    assert!(records.iter().all(|r| r.key == group));
    let times: Vec<_> = records.iter().map(|r| r.value["event_time_ms"].as_i64().unwrap()).collect();
    assert_eq!(times, [1700000000001, 1700000000002, 1700000000003, 1700000000004]);
    assert_eq!(records[0].value["profile"], json!({"name": "n", "introduction": "", "notification": "hi"}));
    assert_eq!(
        (&records[0].value["custom_fields"], &records[0].value["member_count"]),
        (&json!({}), &json!(null))
    );
    assert_eq!(records[2].value["old_owner_account"], json!(null));
    assert_eq!(records[3].value["owner_account"], json!(null));
}

#[tokio::test]
async fn an_ignored_command_is_answered_ok_counted_and_never_published() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let marker = unique("@TGS#marker");

    let join = post(&bridge, JOIN, &join_body("@TGS#joined")).await;
    let before = json!({"CallbackCommand": BEFORE_SEND, "GroupId": "@TGS#joined", "From_Account": "leckie",
                        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]});
    let before = post(&bridge, BEFORE_SEND, &before).await;
    // A body with no CallbackCommand of its own is taken at the query's word.
    let bare = post(&bridge, "Group.CallbackAfterMemberExit", &json!({"GroupId": "@TGS#joined"})).await;
    assert_eq!(bridge.send(&Webhook::rename(&marker, 0)).await.0, 200);

    assert_eq!((join, before, bare), ((200, ok()), (200, ok()), (200, ok())));
    let before_marker = read_up_to_marker(&bridge, &marker).await;
    assert!(before_marker.is_empty(), "published: {before_marker:?}");
    assert_eq!(topic_len(&bridge.topic), 1);
    assert_eq!(webhook_outcome(&bridge, "ignored_command").await, 3.0);
    assert_eq!(webhook_outcome(&bridge, "accepted").await, 1.0);
}

#[tokio::test]
async fn an_ignored_command_is_still_authenticated_and_checked_against_its_body() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path()).env("BRIDGE_MAX_BODY_BYTES", 2000)).await;
    let body = join_body("@TGS#x").to_string();
    let good = signed_query_for(JOIN, now_secs());
    let t = now_secs().to_string();
    let wrong_token = tim_kafka_bridge::webhook::CallbackToken::new("not-the-token".into()).unwrap();
    let bad_sign = good.replace(
        &format!("Sign={}", good.rsplit("Sign=").next().unwrap()),
        &format!("Sign={}", tim_kafka_bridge::webhook::sign(&wrong_token, &t)),
    );
    let cases = [
        ("bad Sign", bad_sign, body.clone(), 401, 60004),
        ("no Sign", good.split("&RequestTime").next().unwrap().to_owned(), body.clone(), 401, 60002),
        ("other app", good.replace(&format!("SdkAppid={APP_ID}"), "SdkAppid=42"), body.clone(), 403, 60001),
        ("body names another command", good.clone(), body.replace(JOIN, INFO), 400, 60012),
        ("body over the limit", good.clone(), format!("{{\"X\":\"{}\"}}", "x".repeat(3000)), 413, 60030),
        ("body not JSON", good.clone(), "CallbackCommand=x".into(), 400, 60020),
    ];

    for (what, query, body, status, code) in &cases {
        let (got, answer) = bridge.post(query, body.clone()).await;
        assert_eq!(
            (got, answer.action_status.as_str(), answer.error_code),
            (*status, "FAIL", *code),
            "{what}"
        );
    }

    assert_eq!(webhook_outcome(&bridge, "ignored_command").await, 0.0);
    assert_eq!(webhook_outcome(&bridge, "rejected_sign").await, 2.0);
}

#[tokio::test]
async fn a_command_left_out_of_bridge_commands_is_ignored() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let published = [CREATE, INFO, OWNER].join(",");
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path()).env("BRIDGE_COMMANDS", &published)).await;
    let marker = unique("@TGS#marker");

    assert_eq!(post(&bridge, DESTROY, &destroyed_sample()).await, (200, ok()));
    assert_eq!(post(&bridge, CREATE, &created_sample()).await, (200, ok()));
    assert_eq!(bridge.send(&Webhook::rename(&marker, 0)).await.0, 200);

    let before_marker = read_up_to_marker(&bridge, &marker).await;
    let types: Vec<_> = before_marker.iter().map(|r| r.header("ce_type").unwrap()).collect();
    assert_eq!(types, ["com.tencentcloud.im.group.created"]);
    assert_eq!(webhook_outcome(&bridge, "ignored_command").await, 1.0);
}

/// What the app's own callback handler received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    query: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A stand-in for the app's callback handler: records each request, waits `delay`, then answers 202
/// with a deny envelope, so that what comes back can only have come from it.
struct AppHandler {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    server: actix_web::dev::ServerHandle,
}

const HANDLER_ANSWER: &str = r#"{"ActionStatus":"OK","ErrorInfo":"from the app","ErrorCode":1}"#;

impl AppHandler {
    fn start(delay: Duration) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = received.clone();
        let server = actix_web::HttpServer::new(move || {
            let log = log.clone();
            actix_web::App::new().default_service(actix_web::web::to(
                move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                    let log = log.clone();
                    async move {
                        log.lock().unwrap().push(Received {
                            path: req.path().to_owned(),
                            query: req.query_string().to_owned(),
                            content_type: req
                                .headers()
                                .get("content-type")
                                .map(|v| v.to_str().unwrap().to_owned()),
                            body: body.to_vec(),
                        });
                        tokio::time::sleep(delay).await;
                        actix_web::HttpResponse::Accepted()
                            .content_type("application/json; charset=utf-8")
                            .body(HANDLER_ANSWER)
                    }
                },
            ))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { port, received, server: handle }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_forward_url_relays_query_and_body_and_returns_the_handlers_answer() {
    let _up = broker().shared().await;
    let app = AppHandler::start(Duration::ZERO);
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("BRIDGE_FORWARD_URL", format!("http://127.0.0.1:{}/im/callback", app.port)),
    )
    .await;
    let marker = unique("@TGS#marker");
    let query = signed_query_for(JOIN, now_secs());
    let body = join_body("@TGS#joined").to_string();

    let resp = reqwest::Client::new()
        .post(format!("{}?{query}", bridge.url("/webhook")))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let answer = resp.text().await.unwrap();
    // Published commands are not relayed.
    assert_eq!(bridge.send(&Webhook::rename(&marker, 0)).await.0, 200);

    assert_eq!((status, answer.as_str()), (202, HANDLER_ANSWER));
    assert_eq!(content_type.as_deref(), Some("application/json; charset=utf-8"));
    let received = app.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/im/callback");
    assert_eq!(received[0].query, query, "the query string as Tencent sent it, Sign included");
    assert_eq!(received[0].body, body.as_bytes());
    assert_eq!(received[0].content_type.as_deref(), Some("application/json"));
    assert!(read_up_to_marker(&bridge, &marker).await.is_empty());
    assert_eq!(webhook_outcome(&bridge, "forwarded").await, 1.0);
    assert_eq!(webhook_outcome(&bridge, "ignored_command").await, 0.0);
    app.server.stop(false).await;
}

#[tokio::test]
async fn a_relay_that_times_out_or_fails_is_answered_ok_in_time_and_counted() {
    let _up = broker().shared().await;
    let slow = AppHandler::start(Duration::from_secs(3));
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("BRIDGE_FORWARD_URL", format!("http://127.0.0.1:{}/cb", slow.port))
            .env("BRIDGE_FORWARD_TIMEOUT_MS", 300),
    )
    .await;

    let started = Instant::now();
    let answer = post(&bridge, BEFORE_SEND, &json!({"CallbackCommand": BEFORE_SEND, "GroupId": "g"})).await;
    let took = started.elapsed();

    assert_eq!(answer, (200, ok()), "the allow envelope");
    assert!(took < Duration::from_millis(1500), "answered within Tencent's 2 s: {took:?}");
    assert_eq!(slow.received().len(), 1);
    assert_eq!(webhook_outcome(&bridge, "forward_failed").await, 1.0);
    assert_eq!(webhook_outcome(&bridge, "forwarded").await, 0.0);
    // Log lines reach the test through the bridge's stdout a moment after the answer.
    wait_for("the relay failure's log line", Duration::from_secs(10), || async {
        bridge.logs().contains("relay failed")
    })
    .await;
    slow.server.stop(false).await;

    // Nobody listening: refused at once, answered the same way.
    let spool = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path()).env("BRIDGE_FORWARD_URL", format!("http://127.0.0.1:{closed}/cb")),
    )
    .await;
    assert_eq!(post(&bridge, JOIN, &join_body("g")).await, (200, ok()));
    assert_eq!(webhook_outcome(&bridge, "forward_failed").await, 1.0);
    // The failure is logged without the URL: Tencent's query carries a Sign that would let a reader
    // of the logs forge callbacks while it is fresh.
    wait_for("the relay failure's log line", Duration::from_secs(10), || async {
        bridge.logs().contains("relay failed")
    })
    .await;
    let logs = bridge.logs();
    assert!(logs.contains("relay failed") && !logs.contains("Sign="), "{logs}");
}

#[test]
fn an_unknown_command_in_bridge_commands_stops_the_bridge_with_one_line_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tim-kafka-bridge"))
        .env_clear()
        .env("BRIDGE_SDK_APP_ID", APP_ID)
        .env("BRIDGE_COMMANDS", format!("{CREATE},{JOIN}"))
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("BRIDGE_COMMANDS") && err.contains(JOIN), "{err}");
}

/// The events the documentation shows: Tencent's samples, received at a fixed instant.
fn documented_events() -> Vec<serde_json::Value> {
    use tim_kafka_bridge::webhook::{sign, CallbackToken, Command, Verifier};
    let verifier = Verifier {
        app_ids: vec![tim_kafka_bridge::domain::SdkAppId::parse(APP_ID).unwrap()],
        token: CallbackToken::new(TOKEN.into()),
        max_skew_secs: 60,
        commands: Command::ALL.to_vec(),
    };
    let received_at_ms = 1_795_746_701_870;
    let t = (received_at_ms / 1000).to_string();
    let s = sign(&CallbackToken::new(TOKEN.into()).unwrap(), &t);
    [(CREATE, created_sample()), (INFO, Webhook::sample().0), (OWNER, owner_changed_sample()), (DESTROY, destroyed_sample())]
        .into_iter()
        .map(|(command, body)| {
            let query = format!("SdkAppid={APP_ID}&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI&RequestTime={t}&Sign={s}");
            let event = verifier.check(&query, body.to_string().as_bytes(), received_at_ms).unwrap().event().unwrap();
            serde_json::from_slice(&event.to_json()).unwrap()
        })
        .collect()
}

/// The JSON code blocks of a Markdown file.
fn json_blocks(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    text.split("```json\n")
        .skip(1)
        .map(|b| {
            serde_json::from_str(b.split("```").next().unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}\n{b}"))
        })
        .collect()
}

#[test]
fn the_examples_in_the_docs_are_what_the_code_produces_and_match_the_schema() {
    let documented = json_blocks("docs/event.md");
    let schema = crate::delivery::schema();
    for event in documented_events() {
        assert!(documented.contains(&event), "docs/event.md does not show {event}");
        assert!(schema.is_valid(&event), "{event}");
    }
    let info = &documented_events()[1];
    assert!(json_blocks("README.md").contains(info), "README.md does not show {info}");
}

mod properties {
    use proptest::prelude::*;
    use tim_kafka_bridge::webhook::{sign, CallbackToken, Command, Verifier, FUZZ_NOW_MS, FUZZ_TOKEN};

    fn check(command: &str, body: &serde_json::Value) -> Option<serde_json::Value> {
        let verifier = Verifier {
            app_ids: vec![tim_kafka_bridge::domain::SdkAppId::parse("1400000000").unwrap()],
            token: CallbackToken::new(FUZZ_TOKEN.into()),
            max_skew_secs: 60,
            commands: Command::ALL.to_vec(),
        };
        let t = (FUZZ_NOW_MS / 1000).to_string();
        let s = sign(&CallbackToken::new(FUZZ_TOKEN.into()).unwrap(), &t);
        let query = format!("SdkAppid=1400000000&CallbackCommand={command}&RequestTime={t}&Sign={s}");
        let verdict = verifier.check(&query, body.to_string().as_bytes(), FUZZ_NOW_MS).expect("accepted");
        verdict.event().map(|e| serde_json::from_slice(&e.to_json()).unwrap())
    }

    fn opt(v: &Option<String>) -> serde_json::Value {
        v.as_ref().map_or(serde_json::Value::Null, |s| serde_json::json!(s))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn any_valid_lifecycle_webhook_normalizes_to_a_schema_valid_event_that_keeps_every_value(
            group in "\\PC{1,16}",  // at most 64 bytes: a longer GroupId is refused
            spelled_lower in any::<bool>(),
            owner in proptest::option::of("\\PC{0,16}"),
            new_owner in "\\PC{1,16}",
            name in proptest::option::of("\\PC{0,16}"),
            introduction in proptest::option::of("\\PC{0,16}"),
            custom in proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..5),
            members in proptest::option::of(0usize..40),
            event_time in 0i64..=253_402_300_799_999,
            time_as_string in any::<bool>(),
        ) {
            let schema = crate::delivery::schema();
            let mut base = serde_json::json!({
                "EventTime": if time_as_string { serde_json::json!(event_time.to_string()) } else { serde_json::json!(event_time) },
            });
            base[if spelled_lower { "groupID" } else { "GroupId" }] = serde_json::json!(group);
            let mut created = base.clone();
            for (k, v) in [("Owner_Account", &owner), ("Name", &name), ("Introduction", &introduction)] {
                if let Some(v) = v { created[k] = serde_json::json!(v); }
            }
            created["UserDefinedDataList"] =
                custom.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect();
            if let Some(n) = members {
                created["MemberList"] = (0..n).map(|i| serde_json::json!({"Member_Account": i.to_string()})).collect();
            }
            let mut owner_changed = base.clone();
            owner_changed["NewOwner_Account"] = serde_json::json!(new_owner);
            if let Some(o) = &owner { owner_changed["OldOwner_Account"] = serde_json::json!(o); }
            let mut destroyed = base.clone();
            if let Some(o) = &owner { destroyed["Owner_Account"] = serde_json::json!(o); }
            if let Some(n) = &name { destroyed["Name"] = serde_json::json!(n); }

            let c = check("Group.CallbackAfterCreateGroup", &created).unwrap();
            let o = check("Group.CallbackAfterChangeGroupOwner", &owner_changed).unwrap();
            let d = check("Group.CallbackAfterGroupDestroyed", &destroyed).unwrap();

            for v in [&c, &o, &d] {
                prop_assert!(schema.is_valid(v), "not schema-valid: {}", v);
                prop_assert_eq!(v["group_id"].as_str(), Some(group.as_str()));
                prop_assert_eq!(v["event_time_ms"].as_i64(), Some(event_time));
            }
            prop_assert_eq!(&c["owner_account"], &opt(&owner));
            prop_assert_eq!(&c["profile"]["name"], &opt(&name));
            prop_assert_eq!(&c["profile"]["introduction"], &opt(&introduction));
            prop_assert_eq!(c["custom_fields"].as_object().unwrap().len(), custom.len());
            for (k, v) in &custom {
                prop_assert_eq!(c["custom_fields"][k].as_str(), Some(v.as_str()));
            }
            prop_assert_eq!(c["member_count"].as_u64(), members.map(|n| n as u64));
            prop_assert_eq!(o["new_owner_account"].as_str(), Some(new_owner.as_str()));
            prop_assert_eq!(&o["old_owner_account"], &opt(&owner));
            prop_assert_eq!(&d["owner_account"], &opt(&owner));
            prop_assert_eq!(&d["name"], &opt(&name));
        }
    }
}
