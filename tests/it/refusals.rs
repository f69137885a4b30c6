//! Every refusal answers its status with a FAIL envelope, and publishes nothing.

use std::time::Duration;

use crate::helpers::*;

const CMD: &str = "Group.CallbackAfterGroupInfoChanged";

fn query_with(app: &str, command: &str, time: u64, sign_for: Option<&str>) -> String {
    let token = tim_kafka_bridge::webhook::CallbackToken::new(sign_for.unwrap_or(TOKEN).into()).unwrap();
    let t = time.to_string();
    format!(
        "SdkAppid={app}&CallbackCommand={command}&contenttype=json&ClientIP=1.2.3.4&OptPlatform=iOS&RequestTime={t}&Sign={}",
        tim_kafka_bridge::webhook::sign(&token, &t)
    )
}

#[tokio::test]
async fn each_refusal_answers_its_status_and_publishes_nothing() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let now = now_secs();
    let good_q = signed_query(now);
    let sample = Webhook::sample().body();
    let big = format!(r#"{{"GroupId":"g","EventTime":1,"Name":"{}"}}"#, "x".repeat(70_000));
    let cases: Vec<(&str, String, String, u16)> = vec![
        ("app not ours", query_with("999", CMD, now, None), sample.clone(), 403),
        ("no app", good_q.replace(&format!("SdkAppid={APP_ID}&"), ""), sample.clone(), 403),
        ("wrong token", query_with(APP_ID, CMD, now, Some("other-token")), sample.clone(), 401),
        ("replayed signed URL", query_with(APP_ID, CMD, now - 120, None), sample.clone(), 401),
        ("future RequestTime", query_with(APP_ID, CMD, now + 120, None), sample.clone(), 401),
        ("no Sign", good_q.split("&RequestTime").next().unwrap().to_owned(), sample.clone(), 401),
        // A command the bridge does not publish is no refusal (lifecycle.rs); a missing one is.
        ("no command", good_q.replace(&format!("CallbackCommand={CMD}&"), ""), sample.clone(), 400),
        ("commands disagree", good_q.clone(), sample.replace(CMD, "Group.CallbackAfterMemberExit"), 400),
        ("not an object", good_q.clone(), "[1,2]".into(), 400),
        ("not JSON", good_q.clone(), "{\"GroupId\":".into(), 400),
        ("empty body", good_q.clone(), String::new(), 400),
        ("no GroupId", good_q.clone(), r#"{"EventTime":1}"#.into(), 400),
        ("empty GroupId", good_q.clone(), r#"{"GroupId":"","EventTime":1}"#.into(), 400),
        ("no EventTime", good_q.clone(), r#"{"GroupId":"g"}"#.into(), 400),
        ("EventTime not an integer", good_q.clone(), r#"{"GroupId":"g","EventTime":"soon"}"#.into(), 400),
        ("EventTime fractional", good_q.clone(), r#"{"GroupId":"g","EventTime":1.5}"#.into(), 400),
        ("Name not a string", good_q.clone(), r#"{"GroupId":"g","EventTime":1,"Name":7}"#.into(), 400),
        ("body over the limit", good_q.clone(), big, 413),
    ];

    for (what, query, body, expected) in &cases {
        let (status, answer) = bridge.post(query, body.clone()).await;
        assert_eq!(status, *expected, "{what}: {answer:?}");
        assert_eq!(answer.action_status, "FAIL", "{what}");
        assert_ne!(answer.error_code, 0, "{what}");
        assert!(!answer.error_info.is_empty(), "{what}");
        assert!(!answer.error_info.contains(TOKEN), "{what}: the token leaked");
    }

    // Wrong method and unknown path also answer a FAIL envelope.
    let get = bridge.get("/webhook").await;
    assert_eq!(get.status().as_u16(), 405);
    let lost = bridge.get("/nope").await;
    assert_eq!(lost.status().as_u16(), 404);
    let envelope: tim_kafka_bridge::webhook::Envelope = lost.json().await.unwrap();
    assert_eq!(envelope.action_status, "FAIL");

    // A good webhook after all of them: once it is on the topic, nothing refused is before it.
    assert_eq!(bridge.send(&Webhook::sample()).await.0, 200);
    let records = read_exactly(&bridge.topic, 1, Duration::from_secs(30));
    assert_eq!(records[0].key, "@TGS#2J4SZEAEL");

    // One log line per refusal, with its reason, and never the token.
    let logs = bridge.logs();
    assert_eq!(logs.matches("webhook refused").count(), cases.len(), "{logs}");
    assert!(!logs.contains(TOKEN));
}

#[tokio::test]
async fn without_a_callback_token_the_sign_is_not_checked() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path()).env("BRIDGE_CALLBACK_TOKEN", "")).await;

    let query =
        format!("SdkAppid={APP_ID}&CallbackCommand={CMD}&contenttype=json&ClientIP=1.2.3.4&OptPlatform=Web");
    let (status, _) = bridge.post(&query, Webhook::sample().body()).await;

    assert_eq!(status, 200);
    read_exactly(&bridge.topic, 1, Duration::from_secs(30));
}
