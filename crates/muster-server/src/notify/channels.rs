//! Placeholder until the notifiers land (replaced on merge).
use std::time::Duration;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ChannelSpec {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChannelKind {
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub timeout: Duration,
    pub backoff: Duration,
    pub give_up_after: Duration,
}

impl Channel {
    pub fn resolve(
        spec: ChannelSpec,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Channel, String> {
        Ok(Channel {
            name: spec.name,
            kind: ChannelKind::None,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(6 * 3600),
        })
    }

    pub fn kind_name(&self) -> &'static str {
        "none"
    }

    pub fn describe(&self) -> String {
        String::new()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn send(
    _client: &reqwest::Client,
    _channel: &Channel,
    _message: &super::Message,
    _now: chrono::DateTime<chrono::Utc>,
) -> super::Outcome {
    super::Outcome::Refused {
        status: 400,
        error: String::new(),
    }
}
