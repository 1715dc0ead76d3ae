//! The records feedback is about: canonical JSON (keys sorted, no spaces) whose keccak-256 is
//! the on-chain `feedbackHash`. pag0 stores the exact bytes and serves them at `feedbackURI`,
//! so anyone can fetch the record and check the hash. Field names follow the ERC-8004
//! off-chain feedback file (`agentRegistry`, `agentId`, `clientAddress`, `createdAt`, `value`,
//! `valueDecimals`, `tag1`, `tag2`, `endpoint`, `proofOfPayment`); pag0's own numbers are
//! under `pag0`.

use alloy_primitives::{B256, U256, keccak256};
use serde_json::{Value, json};

use super::Settings;

/// `tag1` of a delivered-or-not rating (percent).
pub const SUCCESS_RATE: &str = "successRate";
/// `tag1` of a latency rating (milliseconds).
pub const RESPONSE_TIME: &str = "responseTime";

/// One feedback to give, as the planner makes it (before the outbox has it).
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub id: String,
    pub created_ms: i64,
    pub agent_id: U256,
    pub endpoint: String,
    pub tag1: String,
    pub tag2: String,
    pub value: i128,
    pub value_decimals: u8,
    /// Canonical JSON.
    pub record: String,
    pub hash: B256,
}

/// A committed payment, as the journal has it.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: String,
    pub url: String,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    pub payer: String,
    pub amount: String,
    pub tx_hash: Option<String>,
    pub committed_at: i64,
}

/// One endpoint's upstream calls in one UTC hour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hour {
    pub calls: u64,
    pub successes: u64,
    pub latency_sum_us: u64,
}

/// The endpoint key of a journaled URL: `host[:port]/path` (as the analytics write it).
pub fn endpoint_of(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

/// Feedback for one delivered paid call: `successRate` 100 (the paid response came back; a
/// payment whose response did not is not journaled as committed).
pub fn payment(settings: &Settings, agent_id: U256, p: &Payment) -> Feedback {
    let endpoint = endpoint_of(&p.url).to_string();
    let created_ms = p.committed_at.saturating_mul(1000);
    let mut proof = json!({
        "fromAddress": p.payer,
        "toAddress": p.pay_to,
    });
    if let Some(chain) = crate::x402::networks::chain_id(&p.network) {
        proof["chainId"] = json!(chain.to_string());
    }
    if let Some(tx) = &p.tx_hash {
        proof["txHash"] = json!(tx);
    }
    let pag0 = json!({
        "kind": "payment",
        "payment": {
            "id": p.id,
            "amount": p.amount,
            "asset": p.asset,
            "network": p.network,
        },
    });
    let mut record = base(
        settings,
        agent_id,
        &endpoint,
        created_ms,
        (SUCCESS_RATE, "x402"),
        (100, 0),
    );
    record["proofOfPayment"] = proof;
    record["pag0"] = pag0;
    finish(
        format!("p-{}", p.id),
        agent_id,
        endpoint,
        created_ms,
        record,
    )
}

/// The two feedbacks of one endpoint's hour: `successRate` (percent, two decimals: 2xx/3xx
/// answers among calls that reached it) and `responseTime` (mean milliseconds upstream).
pub fn hourly(
    settings: &Settings,
    agent_id: U256,
    endpoint: &str,
    hour_ms: i64,
    h: &Hour,
) -> [Feedback; 2] {
    let end_ms = hour_ms + super::HOUR_MS;
    let calls = h.calls.max(1);
    // Percent with two decimals, rounded half up: 9977 = 99.77 %.
    let rate = (u128::from(h.successes) * 10_000 + u128::from(calls) / 2) / u128::from(calls);
    let mean_ms =
        (u128::from(h.latency_sum_us) + u128::from(calls) * 500) / u128::from(calls) / 1000;
    let pag0 = json!({
        "kind": "hourly",
        "period": {"from": iso(hour_ms), "to": iso(end_ms)},
        "calls": h.calls,
        "successes": h.successes,
        "latencyMeanMs": mean_ms as u64,
    });
    let digest = &hex::encode(keccak256(endpoint.as_bytes()))[..16];
    let one = |tag: &str, value: i128, decimals: u8| {
        let mut record = base(
            settings,
            agent_id,
            endpoint,
            end_ms,
            (tag, "hourly"),
            (value, decimals),
        );
        record["pag0"] = pag0.clone();
        finish(
            format!("h-{hour_ms}-{tag}-{digest}"),
            agent_id,
            endpoint.to_string(),
            end_ms,
            record,
        )
    };
    [
        one(SUCCESS_RATE, rate as i128, 2),
        one(RESPONSE_TIME, mean_ms as i128, 0),
    ]
}

fn base(
    settings: &Settings,
    agent_id: U256,
    endpoint: &str,
    created_ms: i64,
    (tag1, tag2): (&str, &str),
    (value, decimals): (i128, u8),
) -> Value {
    let chain = settings.chain_id;
    let mut record = json!({
        "agentId": agent_id.to_string(),
        "clientAddress": format!("eip155:{chain}:{}", settings.signer.address()),
        "createdAt": iso(created_ms),
        "endpoint": endpoint,
        "tag1": tag1,
        "tag2": tag2,
        "value": value as i64,
        "valueDecimals": decimals,
    });
    if let Some(identity) = settings.identity_registry {
        record["agentRegistry"] = json!(format!("eip155:{chain}:{identity}"));
    }
    record
}

fn finish(
    id: String,
    agent_id: U256,
    endpoint: String,
    created_ms: i64,
    record: Value,
) -> Feedback {
    let text = canonical(&record);
    let tag = |k: &str| record[k].as_str().unwrap_or_default().to_string();
    Feedback {
        id,
        created_ms,
        agent_id,
        endpoint,
        tag1: tag("tag1"),
        tag2: tag("tag2"),
        value: i128::from(record["value"].as_i64().unwrap_or_default()),
        value_decimals: record["valueDecimals"].as_u64().unwrap_or_default() as u8,
        hash: keccak256(text.as_bytes()),
        record: text,
    }
}

/// JSON with object keys sorted (by UTF-16 code units, as RFC 8785 says; the same as bytes for
/// the ASCII keys used here) and no insignificant whitespace.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// RFC 3339 UTC with second precision: `2026-12-04T05:00:00Z`.
pub fn iso(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_has_no_spaces() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": "x", "c": null}], "A": "é\"q"}});
        assert_eq!(
            canonical(&v),
            r#"{"a":{"A":"é\"q","z":[1,{"c":null,"y":"x"}]},"b":1}"#
        );
    }

    #[test]
    fn times_are_rfc3339_utc_seconds() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        // 2026-11-30T23:59:59Z.
        assert_eq!(iso(1_796_083_199_999), "2026-11-30T23:59:59Z");
    }

    #[test]
    fn endpoints_drop_the_scheme() {
        assert_eq!(
            endpoint_of("https://api.x.example:8443/v1/q"),
            "api.x.example:8443/v1/q"
        );
        assert_eq!(endpoint_of("api.x.example/v1"), "api.x.example/v1");
    }
}
