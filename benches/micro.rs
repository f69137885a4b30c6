//! Micro-benchmarks: the per-webhook CPU cost of the check (parse + validate + normalize, and the
//! JSON the spool stores). The spool's own (an append in each fsync mode, recovery at open) are in
//! its crate: crates/tim-spool/benches/spool.rs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tim_kafka_bridge::domain::SdkAppId;
use tim_kafka_bridge::webhook::{sign, CallbackToken, Verifier};

const NOW_MS: i64 = 1_670_574_420_000;

fn check(c: &mut Criterion) {
    let token = CallbackToken::new("bench-token".into()).unwrap();
    let t = (NOW_MS / 1000).to_string();
    let query = format!(
        "SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterGroupInfoChanged&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI&RequestTime={t}&Sign={}",
        sign(&token, &t)
    );
    let body = br#"{"CallbackCommand":"Group.CallbackAfterGroupInfoChanged","GroupId":"@TGS#2J4SZEAEL","Type":"Public","Operator_Account":"leckie","Notification":"NewNotification","EventTime":"1670574414123"}"#;
    let verifier = Verifier {
        app_ids: vec![SdkAppId::parse("1400000000").unwrap()],
        token: Some(token),
        max_skew_secs: 60,
        commands: tim_kafka_bridge::webhook::Command::ALL.to_vec(),
    };
    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Elements(1));
    g.bench_function("check (parse + validate + normalize)", |b| {
        b.iter(|| verifier.check(black_box(&query), black_box(body), NOW_MS).unwrap())
    });
    g.bench_function("check + to_json (what the spool stores)", |b| {
        b.iter(|| {
            verifier.check(black_box(&query), black_box(body), NOW_MS).unwrap().event().unwrap().to_json()
        })
    });
    g.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
