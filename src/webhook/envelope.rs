//! The answer Tencent expects: `{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}`, or FAIL with our
//! code and a reason.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "ActionStatus")]
    pub action_status: String,
    #[serde(rename = "ErrorInfo")]
    pub error_info: String,
    #[serde(rename = "ErrorCode")]
    pub error_code: u32,
}

impl Envelope {
    pub fn ok() -> Self {
        Self { action_status: "OK".into(), error_info: String::new(), error_code: 0 }
    }

    pub fn fail(code: u32, info: impl Into<String>) -> Self {
        Self { action_status: "FAIL".into(), error_info: info.into(), error_code: code }
    }

    pub fn is_ok(&self) -> bool {
        self.action_status == "OK"
    }
}
