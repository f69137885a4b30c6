//! Micro-benchmarks: the per-webhook CPU cost of the check (parse + validate + normalize, and the
//! JSON the spool stores), and one spool append through the writer thread in each fsync mode.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tim_kafka_bridge::configuration::FsyncMode;
use tim_kafka_bridge::domain::SdkAppId;
use tim_kafka_bridge::spool::{Spool, SpoolConfig};
use tim_kafka_bridge::webhook::{sign, CallbackToken, Verifier};

const NOW_MS: i64 = 1_670_574_420_000;

/// Runs `bench` against a fresh spool in a temporary directory, then closes it. With
/// `fsync=always` the first segment is the writer's zero-filled spare (as every segment after the
/// first is in a running bridge) unless `spare` is false.
fn with_spool(fsync: FsyncMode, spare: bool, bench: impl FnOnce(&Spool)) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = SpoolConfig {
        dir: dir.path().to_owned(),
        fsync,
        max_bytes: 1 << 40,
        max_queued_bytes: tim_kafka_bridge::spool::MAX_QUEUED_BYTES,
        observer: None,
    };
    let (spool, thread) = Spool::open(config).unwrap();
    if fsync == FsyncMode::Always {
        let ready = dir.path().join("spare.zero");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ready.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(ready.exists(), "the spool prepared no spare segment");
        if !spare {
            std::fs::remove_file(ready).unwrap();
        }
    }
    bench(&spool);
    spool.close();
    drop(spool);
    thread.join();
}

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

fn spool_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let payload = vec![b'x'; 400];
    let mut g = c.benchmark_group("spool append (400 B, one at a time)");
    g.throughput(Throughput::Elements(1));
    for (name, fsync, spare) in [
        ("fsync=never", FsyncMode::Never, false),
        ("fsync=interval", FsyncMode::Interval(std::time::Duration::from_millis(50)), false),
        ("fsync=always", FsyncMode::Always, true),
        ("fsync=always, segment file growing (no spare)", FsyncMode::Always, false),
    ] {
        with_spool(fsync, spare, |spool| {
            g.bench_function(name, |b| {
                b.iter_batched(
                    || payload.clone(),
                    |p| rt.block_on(spool.append(p)).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        });
    }
    g.finish();

    // Group commit: 64 appends in flight at once share the fsyncs.
    let mut g = c.benchmark_group("spool append (400 B, 64 concurrent)");
    g.throughput(Throughput::Elements(64));
    for (name, fsync) in [("fsync=never", FsyncMode::Never), ("fsync=always", FsyncMode::Always)] {
        with_spool(fsync, true, |spool| {
            g.bench_function(name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let appends = (0..64).map(|_| spool.append(payload.clone()));
                        for r in futures_util::future::join_all(appends).await {
                            r.unwrap();
                        }
                    })
                })
            });
        });
    }
    g.finish();
}

criterion_group!(benches, check, spool_append);
criterion_main!(benches);
