//! A fake of Tencent Cloud Chat's REST API (`get_appid_group_list`, `get_group_info`), faithful to the
//! documented protocol, for `tim-kafka-bridge snapshot`: Tencent's own servers cannot be reached from the
//! test machine.
//!
//! What it checks and enforces, as the REST API notes describe Tencent's: POST only, a non-empty JSON
//! body, `sdkappid`, `identifier`, `random` (a u32) and `contenttype=json` in the query; the UserSig
//! decoded (URL-safe base64, zlib), its identifier and sdkappid matched, its expiry (`now > time +
//! expire`: 70001), its HMAC recomputed with the app's key (70003); at most 1 list call a second and 200
//! info calls a second (60007 beyond); at most 50 ids per info call (10004); `Next` cursors above 2^32;
//! a group destroyed between the list and the info call answered per group with 10010. And what it
//! injects: a frequency-limit or transient code on every Nth call, one 70052 (a UserSig invalidated),
//! an HTTP 502; each counted, so a test can say it happened.
//!
//! Also here: the test of the UserSig against Tencent's own `tls-sig-api-v2` package from PyPI.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

/// Cursors start here: every `Next` the fake hands out is above 2^32 (documented as a u64).
const CURSOR_BASE: u64 = 5_000_000_000;

/// One group as Tencent keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeGroup {
    pub id: String,
    pub alive: bool,
    pub group_type: String,
    pub name: String,
    pub introduction: String,
    pub notification: String,
    pub face_url: String,
    pub owner: String,
    pub custom: BTreeMap<String, String>,
    pub member_num: u64,
    pub create_time_s: i64,
    pub last_info_time_s: i64,
    pub info_seq: u64,
}

/// What the fake was asked and what it answered, for the tests' assertions and report.
#[derive(Debug, Default, Clone)]
pub struct Calls {
    pub list: u64,
    pub info: u64,
    /// Answers by ErrorCode (0 included), and HTTP 502s under the code 502.
    pub answers: BTreeMap<i64, u64>,
    /// Groups answered 10010 in an info call.
    pub gone: u64,
    /// The greatest number of ids asked in one info call.
    pub most_ids: usize,
    /// Calls refused for coming faster than the documented rate (not counting injected codes).
    pub rate_refused: u64,
    /// When each group's profile was last served (ms), by GroupId.
    pub reads: HashMap<String, i64>,
}

/// When to answer a call with an injected code instead of serving it: on the calls whose number
/// (counted per API from 1) is `≡ at (mod every)`.
#[derive(Debug, Clone, Copy)]
pub struct Inject {
    pub every: u64,
    pub at: u64,
    pub code: i64,
}

pub struct State {
    pub sdk_app_id: u64,
    pub admin: String,
    key: String,
    /// Every life of every group, in the order it began (the list's order); a GroupId used again is
    /// a new entry.
    pub groups: Vec<FakeGroup>,
    /// The entry of each GroupId's current life.
    current: HashMap<String, usize>,
    pub calls: Calls,
    last_list: Option<Instant>,
    info_window: VecDeque<Instant>,
    pub inject_list: Vec<Inject>,
    pub inject_info: Vec<Inject>,
    /// Answer this info call (by number) with 70052 once.
    pub invalidate_usersig_at_info_call: Option<u64>,
    /// Answer this info call (by number) with an HTTP 502.
    pub bad_gateway_at_info_call: Option<u64>,
    /// From this info call (by number) on, answer every one with 10002 (a backend that stays down).
    pub fail_info_from_call: Option<u64>,
    /// Hand out the same `Next` on every page (a cursor that never ends).
    pub repeat_cursor: bool,
    /// Called with the state at the first info call, before it is served (a test's change "during"
    /// the snapshot, in the gap between the list and the profiles).
    #[allow(clippy::type_complexity)]
    pub on_first_info_call: Option<Box<dyn FnOnce(&mut State) + Send>>,
}

impl State {
    /// The current life of `id`, if it is alive.
    pub fn alive(&self, id: &str) -> Option<&FakeGroup> {
        self.current.get(id).map(|i| &self.groups[*i]).filter(|g| g.alive)
    }

    pub fn alive_mut(&mut self, id: &str) -> Option<&mut FakeGroup> {
        let i = *self.current.get(id)?;
        Some(&mut self.groups[i]).filter(|g| g.alive)
    }

    /// Creates `group` (a new life of its id).
    pub fn create(&mut self, group: FakeGroup) {
        assert!(self.alive(&group.id).is_none(), "{} is alive already", group.id);
        self.current.insert(group.id.clone(), self.groups.len());
        self.groups.push(group);
    }

    /// Every group alive now.
    pub fn alive_groups(&self) -> impl Iterator<Item = &FakeGroup> {
        self.current.values().map(|i| &self.groups[*i]).filter(|g| g.alive)
    }

    /// Every GroupId ever used, with its current life.
    pub fn latest(&self) -> impl Iterator<Item = &FakeGroup> {
        self.current.values().map(|i| &self.groups[*i])
    }
}

/// The fake, serving on 127.0.0.1 until dropped.
pub struct FakeTencent {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
    server: actix_web::dev::ServerHandle,
}

impl FakeTencent {
    pub fn start(sdk_app_id: u64, admin: &str, key: &str) -> Self {
        let state = Arc::new(Mutex::new(State {
            sdk_app_id,
            admin: admin.to_owned(),
            key: key.to_owned(),
            groups: Vec::new(),
            current: HashMap::new(),
            calls: Calls::default(),
            last_list: None,
            info_window: VecDeque::new(),
            inject_list: Vec::new(),
            inject_info: Vec::new(),
            invalidate_usersig_at_info_call: None,
            bad_gateway_at_info_call: None,
            fail_info_from_call: None,
            repeat_cursor: false,
            on_first_info_call: None,
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let data = web::Data::new(shared);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(4 << 20))
                        .route("/v4/{service}/{command}", web::post().to(serve))
                        .default_service(web::to(|| async { HttpResponse::NotFound().finish() }))
                })
                .workers(2)
                .bind("127.0.0.1:0")
                .expect("the fake binds");
                let port = server.addrs()[0].port();
                let server = server.run();
                tx.send((port, server.handle())).unwrap();
                let _ = server.await;
            });
        });
        let (port, server) = rx.recv().expect("the fake starts");
        Self { port, state, server }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

impl Drop for FakeTencent {
    fn drop(&mut self) {
        let _ = futures_util::FutureExt::now_or_never(self.server.stop(false));
    }
}

fn envelope(code: i64, info: &str) -> Value {
    json!({"ActionStatus": if code == 0 { "OK" } else { "FAIL" }, "ErrorInfo": info, "ErrorCode": code})
}

fn answer(state: &mut State, code: i64, info: &str) -> HttpResponse {
    *state.calls.answers.entry(code).or_default() += 1;
    HttpResponse::Ok().json(envelope(code, info))
}

async fn serve(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let mut guard = state.lock().unwrap();
    let s = &mut *guard;
    let query: HashMap<String, String> = serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let api = format!("{}/{}", path.0, path.1);
    // The common request format.
    if query.get("contenttype").map(String::as_str) != Some("json") {
        return answer(s, 60002, "contenttype must be json");
    }
    if query.get("random").and_then(|r| r.parse::<u32>().ok()).is_none() {
        return answer(s, 60002, "random must be a 32-bit unsigned integer");
    }
    match query.get("sdkappid").and_then(|a| a.parse::<u64>().ok()) {
        Some(a) if a == s.sdk_app_id => {}
        Some(_) => return answer(s, 70020, "SDKAppID not found"),
        None => return answer(s, 60006, "invalid SDKAppID"),
    }
    if query.get("identifier") != Some(&s.admin) {
        return answer(s, 60010, "the caller must be an App admin");
    }
    if let Err(code) =
        verify_usersig(query.get("usersig").map_or("", String::as_str), &s.key, s.sdk_app_id, &s.admin)
    {
        return answer(s, code, "UserSig check failed");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return answer(s, 60003, "the body is not JSON (it must not be empty: send {})");
    };
    match api.as_str() {
        "group_open_http_svc/get_appid_group_list" => list(s, &request),
        "group_open_http_svc/get_group_info" => info(s, &request),
        _ => answer(s, 60002, "unknown command"),
    }
}

/// The JSON document inside a UserSig (base64 with `*-_` for `+/=`, zlib), if it is one.
fn decode_usersig(sig: &str) -> Option<Value> {
    let b64: String = sig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    let z = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(&z[..]).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Checks a UserSig as Tencent's Go verifier does: identifier, sdkappid, expiry, HMAC.
pub fn verify_usersig(sig: &str, key: &str, sdk_app_id: u64, identifier: &str) -> Result<(), i64> {
    if sig.is_empty() {
        return Err(70002);
    }
    let doc = decode_usersig(sig).ok_or(70003)?;
    if doc["TLS.identifier"].as_str() != Some(identifier) {
        return Err(70013);
    }
    if doc["TLS.sdkappid"].as_u64() != Some(sdk_app_id) {
        return Err(70014);
    }
    let (Some(time), Some(expire)) = (doc["TLS.time"].as_i64(), doc["TLS.expire"].as_i64()) else {
        return Err(70003);
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(
        format!(
            "TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n"
        )
        .as_bytes(),
    );
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if doc["TLS.sig"].as_str() != Some(want.as_str()) {
        return Err(70003);
    }
    if tim_kafka_bridge::now_ms() / 1000 > time + expire {
        return Err(70001);
    }
    Ok(())
}

fn injected(rules: &[Inject], call: u64) -> Option<i64> {
    rules.iter().find(|r| call % r.every == r.at % r.every).map(|r| r.code)
}

fn list(s: &mut State, request: &Value) -> HttpResponse {
    s.calls.list += 1;
    // 1 call a second (documented). A little slack for the network between two calls a second apart.
    let now = Instant::now();
    if s.last_list.is_some_and(|last| now.duration_since(last) < Duration::from_millis(950)) {
        s.calls.rate_refused += 1;
        return answer(s, 60007, "REST API call frequency limit exceeded (get_appid_group_list: 1/s)");
    }
    s.last_list = Some(now);
    if let Some(code) = injected(&s.inject_list, s.calls.list) {
        return answer(s, code, "injected");
    }
    let limit = request["Limit"].as_u64().unwrap_or(10_000);
    if limit == 0 || limit > 10_000 {
        return answer(s, 10004, "Limit must be 1 to 10000");
    }
    let from = match request["Next"].as_u64().unwrap_or(0) {
        0 => 0,
        n if n >= CURSOR_BASE => (n - CURSOR_BASE) as usize,
        _ => return answer(s, 10004, "invalid Next"),
    };
    // The cursor is a position in the order groups were created: stable while groups come and go.
    let mut ids = Vec::new();
    let mut at = from;
    while at < s.groups.len() && ids.len() < limit as usize {
        if s.groups[at].alive {
            ids.push(json!({"GroupId": s.groups[at].id}));
        }
        at += 1;
    }
    let next = match (s.repeat_cursor, at < s.groups.len()) {
        (true, _) => CURSOR_BASE + 1,
        (false, true) => CURSOR_BASE + at as u64,
        (false, false) => 0,
    };
    let total = s.alive_groups().count();
    *s.calls.answers.entry(0).or_default() += 1;
    let mut body = envelope(0, "");
    body["TotalCount"] = total.into();
    body["GroupIdList"] = ids.into();
    body["Next"] = next.into();
    HttpResponse::Ok().json(body)
}

fn info(s: &mut State, request: &Value) -> HttpResponse {
    s.calls.info += 1;
    let call = s.calls.info;
    // 200 calls a second (documented).
    let now = Instant::now();
    while s.info_window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
        s.info_window.pop_front();
    }
    if s.info_window.len() >= 200 {
        s.calls.rate_refused += 1;
        return answer(s, 60007, "REST API call frequency limit exceeded (get_group_info: 200/s)");
    }
    s.info_window.push_back(now);
    if s.bad_gateway_at_info_call == Some(call) {
        *s.calls.answers.entry(502).or_default() += 1;
        return HttpResponse::BadGateway().body("<html>502 Bad Gateway</html>");
    }
    if s.fail_info_from_call.is_some_and(|from| call >= from) {
        return answer(s, 10002, "internal error, try again");
    }
    if s.invalidate_usersig_at_info_call == Some(call) {
        return answer(s, 70052, "UserSig invalidated");
    }
    if let Some(code) = injected(&s.inject_info, call) {
        return answer(s, code, "injected");
    }
    let Some(ids) = request["GroupIdList"].as_array() else {
        return answer(s, 10004, "GroupIdList is required");
    };
    if ids.is_empty() || ids.len() > 50 {
        return answer(s, 10004, "GroupIdList holds 1 to 50 ids");
    }
    s.calls.most_ids = s.calls.most_ids.max(ids.len());
    if let Some(hook) = s.on_first_info_call.take() {
        hook(s);
    }
    let filter = &request["ResponseFilter"];
    let base: Option<Vec<&str>> =
        filter["GroupBaseInfoFilter"].as_array().map(|f| f.iter().filter_map(Value::as_str).collect());
    let custom_keys: Vec<&str> = filter["AppDefinedDataFilter_Group"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    let now_ms = tim_kafka_bridge::now_ms();
    let mut served = Vec::new();
    for id in ids {
        let id = id.as_str().unwrap_or_default();
        let Some(g) = s.alive(id) else {
            s.calls.gone += 1;
            out.push(json!({"GroupId": id, "ErrorCode": 10010, "ErrorInfo": "group does not exist or has been disbanded"}));
            continue;
        };
        let all = json!({
            "Type": g.group_type, "Name": g.name, "Introduction": g.introduction, "Notification": g.notification,
            "FaceUrl": g.face_url, "Owner_Account": g.owner, "CreateTime": g.create_time_s, "InfoSeq": g.info_seq,
            "LastInfoTime": g.last_info_time_s, "LastMsgTime": 0, "NextMsgSeq": 1, "MemberNum": g.member_num,
            "MaxMemberNum": 2000, "ApplyJoinOption": "FreeAccess", "MuteAllMember": "Off",
        });
        let mut group = json!({"GroupId": id, "ErrorCode": 0, "ErrorInfo": "", "Appid": s.sdk_app_id});
        served.push(id.to_owned());
        for (k, v) in all.as_object().unwrap() {
            // With a filter, only the fields it names (documented); without one, everything.
            if base.as_ref().is_none_or(|b| b.contains(&k.as_str())) {
                group[k] = v.clone();
            }
        }
        let custom: Vec<Value> = g
            .custom
            .iter()
            .filter(|(k, _)| base.is_none() || custom_keys.contains(&k.as_str()))
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect();
        if base.is_none() || !custom_keys.is_empty() {
            group["AppDefinedData"] = custom.into();
        }
        if base.is_none() {
            group["MemberList"] = json!([{"Member_Account": g.owner, "Role": "Owner"}]);
        }
        out.push(group);
    }
    for id in served {
        s.calls.reads.insert(id, now_ms);
    }
    *s.calls.answers.entry(0).or_default() += 1;
    let mut body = envelope(0, "");
    body["GroupInfo"] = out.into();
    HttpResponse::Ok().json(body)
}

// ---------------------------------------------------------------------------------------------------
// The UserSig against Tencent's own package

/// Where `scripts/test` installs PyPI's `tls-sig-api-v2` (see there); the test installs it itself when
/// run by plain `cargo test`.
fn tls_sig_api() -> std::path::PathBuf {
    let dir = crate::helpers::repo().join("target").join("it-pypi");
    if !dir.join("TLSSigAPIv2.py").exists() {
        let out = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target"])
            .arg(&dir)
            .arg("tls-sig-api-v2==1.1")
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "pip install tls-sig-api-v2: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir
}

/// Runs Python with Tencent's package; `code` prints its result.
fn python(code: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .env("PYTHONPATH", tls_sig_api())
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn our_usersig_and_tencents_python_librarys_sign_the_same_document_and_each_passes_the_others_check() {
    use tim_kafka_bridge::tencent::usersig;
    let key = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    let (app, admin) = (1400000000u64, "administrator");
    // Tencent's library, its clock pinned so that both sign the same instant.
    let theirs = python(&format!(
        "import time; time.time = lambda: 1700000000\n\
         import TLSSigAPIv2\n\
         print(TLSSigAPIv2.TLSSigAPIv2({app}, '{key}').gen_sig('{admin}', 86400))"
    ));
    let ours = usersig::generate(&usersig::SecretKey::new(key).unwrap(), admin, app, 1700000000, 86400);
    let decode = |sig: &str| decode_usersig(sig).expect("a UserSig");
    assert_eq!(decode(&ours), decode(&theirs), "the same document, whatever the compressor's bytes");
    assert_eq!(decode(&theirs)["TLS.sig"], "yLAe+w7WUeUuqbV9h/TX78u21oTGi+i9Zp1u3PpnY60=");
    // Now, unpinned: Tencent's signature passes this fake's check (the one the snapshot tests rely on),
    // and so does ours; a wrong key fails it.
    let now = tim_kafka_bridge::now_ms() / 1000;
    let fresh = python(&format!(
        "import TLSSigAPIv2\nprint(TLSSigAPIv2.TLSSigAPIv2({app}, '{key}').gen_sig('{admin}', 600))"
    ));
    assert_eq!(verify_usersig(&fresh, key, app, admin), Ok(()));
    let ours = usersig::generate(&usersig::SecretKey::new(key).unwrap(), admin, app, now, 600);
    assert_eq!(verify_usersig(&ours, key, app, admin), Ok(()));
    assert_eq!(verify_usersig(&ours, "another key", app, admin), Err(70003));
    assert_eq!(verify_usersig(&ours, key, app, "someone"), Err(70013));
    let expired = usersig::generate(&usersig::SecretKey::new(key).unwrap(), admin, app, now - 700, 600);
    assert_eq!(verify_usersig(&expired, key, app, admin), Err(70001));
}
