//! The query string Tencent appends to the callback URL.

use serde::Deserialize;

use super::Refusal;

/// The query parameters of a webhook, spelled as Tencent spells them (`SdkAppid`, `contenttype`).
/// Unknown parameters are ignored; a parameter given twice is a malformed query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CallbackQuery {
    #[serde(rename = "SdkAppid")]
    pub sdk_app_id: Option<String>,
    #[serde(rename = "CallbackCommand")]
    pub callback_command: Option<String>,
    #[serde(rename = "contenttype")]
    pub content_type: Option<String>,
    #[serde(rename = "ClientIP")]
    pub client_ip: Option<String>,
    #[serde(rename = "OptPlatform")]
    pub opt_platform: Option<String>,
    #[serde(rename = "RequestTime")]
    pub request_time: Option<String>,
    #[serde(rename = "Sign")]
    pub sign: Option<String>,
}

impl CallbackQuery {
    pub fn parse(query: &str) -> Result<Self, Refusal> {
        let mut q: CallbackQuery =
            serde_urlencoded::from_str(query).map_err(|e| Refusal::BadQuery(e.to_string()))?;
        // Empty values carry nothing: `ClientIP=` is the same as no ClientIP.
        for v in [&mut q.client_ip, &mut q.opt_platform, &mut q.content_type] {
            if v.as_deref() == Some("") {
                *v = None;
            }
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_query_string_parses() {
        let q = CallbackQuery::parse(
            "SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterGroupInfoChanged&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI",
        )
        .unwrap();
        assert_eq!(q.sdk_app_id.as_deref(), Some("1400000000"));
        assert_eq!(q.client_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(q.opt_platform.as_deref(), Some("RESTAPI"));
        assert_eq!(q.sign, None);
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        let err = CallbackQuery::parse("SdkAppid=1&SdkAppid=2").unwrap_err();
        assert!(matches!(err, Refusal::BadQuery(_)), "{err:?}");
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        let q = CallbackQuery::parse("SdkAppid=1&Future=yes").unwrap();
        assert_eq!(q.sdk_app_id.as_deref(), Some("1"));
    }
}
