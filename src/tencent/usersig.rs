//! UserSig: the credential of Tencent's REST API (TLS-SIG-API v2), generated in-process.
//!
//! Tencent's own libraries (PyPI/npm `tls-sig-api-v2`, the Go package) all do the same: HMAC-SHA256 of
//! four `key:value` lines with the app's secret key, the result and the inputs in a small JSON
//! object, that object zlib-compressed (RFC 1950, not raw deflate) and base64-encoded with `+/=`
//! replaced by `*-_`. Tencent publishes no fixed-time test vector: the test suite checks this code
//! against the PyPI package itself (tests/it/tencent.rs) and against the vector produced with it in
//! the REST API notes.

use std::io::Write;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The app's secret key: never printed (`Debug` is redacted), compared and used only to sign.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// `None` for an empty key.
    pub fn new(key: impl Into<String>) -> Option<Self> {
        let key = key.into();
        (!key.trim().is_empty()).then_some(Self(key))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// The four lines the HMAC covers, each ending in `\n` (the last one too).
pub fn string_to_sign(identifier: &str, sdk_app_id: u64, time: i64, expire: i64) -> String {
    format!("TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n")
}

/// `TLS.sig`: standard base64 (with `+/=`) of HMAC-SHA256(key, [`string_to_sign`]).
pub fn hmac_sig(key: &SecretKey, identifier: &str, sdk_app_id: u64, time: i64, expire: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.0.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(string_to_sign(identifier, sdk_app_id, time, expire).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A UserSig for `identifier` of app `sdk_app_id`, issued at `time` (Unix seconds), valid for
/// `expire` seconds.
pub fn generate(key: &SecretKey, identifier: &str, sdk_app_id: u64, time: i64, expire: i64) -> String {
    let doc = serde_json::json!({
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdk_app_id,
        "TLS.expire": expire,
        "TLS.time": time,
        "TLS.sig": hmac_sig(key, identifier, sdk_app_id, time, expire),
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(doc.to_string().as_bytes()).expect("writing to a Vec cannot fail");
    let compressed = z.finish().expect("writing to a Vec cannot fail");
    base64::engine::general_purpose::STANDARD
        .encode(compressed)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// The worked example of the REST API notes: PyPI tls-sig-api-v2 1.1 with its sample key, the time
    /// pinned to 1700000000 (HMAC checked there with openssl).
    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    const PYTHON_USERSIG: &str = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkElNyM-Myi0uKEkvyi2BKilOyEwsKMlOACgxNDKAAKpdaUZBZlAqUsTAzgQuWZOaChAzN0RQXZ6aDLKn0cUzVLjcPD00NLS1MCrPM0A*JMLcoNTLMD3HP1M60jCowLDUOKMiLNDOwVaoFAD4PNPI_";

    fn decode(sig: &str) -> serde_json::Value {
        let b64: String = sig
            .chars()
            .map(|c| match c {
                '*' => '+',
                '-' => '/',
                '_' => '=',
                c => c,
            })
            .collect();
        let z = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let mut json = String::new();
        flate2::read::ZlibDecoder::new(&z[..]).read_to_string(&mut json).unwrap();
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn the_hmac_of_the_worked_example_is_the_one_tencents_python_library_computed() {
        let key = SecretKey::new(KEY).unwrap();
        assert_eq!(
            string_to_sign("administrator", 1400000000, 1700000000, 86400),
            "TLS.identifier:administrator\nTLS.sdkappid:1400000000\nTLS.time:1700000000\nTLS.expire:86400\n"
        );
        assert_eq!(
            hmac_sig(&key, "administrator", 1400000000, 1700000000, 86400),
            "yLAe+w7WUeUuqbV9h/TX78u21oTGi+i9Zp1u3PpnY60="
        );
    }

    #[test]
    fn a_generated_usersig_decodes_to_the_same_document_as_the_python_librarys() {
        let key = SecretKey::new(KEY).unwrap();
        let ours = decode(&generate(&key, "administrator", 1400000000, 1700000000, 86400));
        assert_eq!(ours, decode(PYTHON_USERSIG));
        assert_eq!(ours["TLS.ver"], "2.0");
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let key = SecretKey::new(KEY).unwrap();
        assert!(!format!("{key:?}").contains("5bd2"));
        assert_eq!(SecretKey::new("  "), None);
    }
}
