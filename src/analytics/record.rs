//! One analytics record: what pag0 did with one request. No headers, no bodies, no query
//! string, no keys and no payment signatures ever get here.

use std::borrow::Cow;

use alloy_primitives::U256;
use serde::{Deserialize, Serialize};

/// One request pag0 answered (`Default`: nothing known of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Given by the writer (instance id + sequence, 32 hex digits) before the record reaches
    /// the database or the spool, so that a replay never duplicates it.
    #[serde(default)]
    pub id: String,
    /// Unix milliseconds when the request arrived.
    pub at_ms: i64,
    /// `""` when pag0 answered before it knew the project (401/407, bad target).
    pub project: String,
    /// Route name, `forward` or `connect` (`""` without a target).
    pub route: String,
    pub method: String,
    pub scheme: Cow<'static, str>,
    pub host: String,
    pub port: u16,
    /// Without the query string.
    pub path: String,
    /// `host[:port]/path`, or a route's `upstream-host/base/*`.
    pub endpoint: String,
    /// What the agent got (0: the agent went away before an answer).
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub attempts: u8,
    pub latency_us: u64,
    pub upstream_latency_us: Option<u64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub cache: CacheOutcome,
    pub payment: PaymentOutcome,
    pub payment_reason: Option<String>,
    pub paid: Option<Paid>,
    /// Price of a paid response the cache served instead (symbol, base units).
    pub saved: Option<Money>,
    /// pag0's error code (`UPSTREAM_TIMEOUT`, ...).
    pub error: Option<Cow<'static, str>>,
    pub tx_hash: Option<String>,
    pub x402_version: Option<u8>,
}

/// What a paid (or relayed) call cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paid {
    #[serde(flatten)]
    pub money: Money,
    /// Token contract.
    pub asset: String,
    /// CAIP-2 network.
    pub network: String,
    pub pay_to: String,
}

/// An amount in base units of an asset named by its symbol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub symbol: String,
    #[serde(with = "decimal")]
    pub amount: U256,
}

mod decimal {
    use alloy_primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s = String::deserialize(d)?;
        U256::from_str_radix(&s, 10).map_err(serde::de::Error::custom)
    }
}

/// How the cache took part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheOutcome {
    #[serde(rename = "HIT")]
    Hit,
    #[serde(rename = "MISS")]
    Miss,
    #[serde(rename = "BYPASS")]
    Bypass,
    #[serde(rename = "STALE")]
    Stale,
    /// The cache stage is not configured, or the request never reached it.
    #[serde(rename = "none")]
    #[default]
    None,
}

impl CacheOutcome {
    pub const ALL: [CacheOutcome; 5] = [
        CacheOutcome::Hit,
        CacheOutcome::Miss,
        CacheOutcome::Bypass,
        CacheOutcome::Stale,
        CacheOutcome::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "HIT",
            CacheOutcome::Miss => "MISS",
            CacheOutcome::Bypass => "BYPASS",
            CacheOutcome::Stale => "STALE",
            CacheOutcome::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<CacheOutcome> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What pag0 did about payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentOutcome {
    /// pag0 paid and the upstream answered the paid attempt successfully.
    Paid,
    /// A 402 pag0 did not pay (policy, budget, malformed offer, no wallet, ...).
    Declined,
    /// The upstream refused the paid attempt (a 402 again, or a failed settlement receipt).
    Rejected,
    /// The paid attempt got no usable answer: it may still settle.
    InDoubt,
    /// The project relays its agents' own payments (or the agent sent one).
    Relay,
    /// Payments are off for the project: its 402 went to the agent.
    Off,
    /// The request body was too large to replay with a payment.
    BodyTooLarge,
    /// No 402 was involved.
    #[default]
    None,
}

impl PaymentOutcome {
    pub const ALL: [PaymentOutcome; 8] = [
        PaymentOutcome::Paid,
        PaymentOutcome::Declined,
        PaymentOutcome::Rejected,
        PaymentOutcome::InDoubt,
        PaymentOutcome::Relay,
        PaymentOutcome::Off,
        PaymentOutcome::BodyTooLarge,
        PaymentOutcome::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Paid => "paid",
            PaymentOutcome::Declined => "declined",
            PaymentOutcome::Rejected => "rejected",
            PaymentOutcome::InDoubt => "in-doubt",
            PaymentOutcome::Relay => "relay",
            PaymentOutcome::Off => "off",
            PaymentOutcome::BodyTooLarge => "body-too-large",
            PaymentOutcome::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<PaymentOutcome> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Upper bounds (µs) of the latency histogram's buckets; one more bucket takes the rest. Fixed,
/// so histograms of any hours and endpoints merge by adding counts.
pub const BUCKETS_US: [u64; 25] = [
    100, 250, 500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000,
    75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 2_000_000, 5_000_000,
    10_000_000, 30_000_000,
];

/// Number of histogram buckets (the last one is unbounded).
pub const BUCKETS: usize = BUCKETS_US.len() + 1;

/// The bucket a latency falls in.
pub fn bucket(us: u64) -> usize {
    BUCKETS_US.partition_point(|&upper| upper < us)
}

/// A latency histogram over [`BUCKETS_US`].
pub type Histogram = [i64; BUCKETS];

/// The `q` quantile (0..=1) of a histogram, interpolated inside its bucket; `None` when empty.
pub fn quantile(h: &Histogram, q: f64) -> Option<u64> {
    let total: i64 = h.iter().sum();
    if total <= 0 {
        return None;
    }
    // The rank of the wanted sample (1-based), as in "nearest rank".
    let rank = ((q * total as f64).ceil() as i64).clamp(1, total);
    let mut below = 0i64;
    for (i, &n) in h.iter().enumerate() {
        if below + n >= rank {
            let lower = if i == 0 { 0 } else { BUCKETS_US[i - 1] };
            let Some(&upper) = BUCKETS_US.get(i) else {
                return Some(lower);
            };
            let within = (rank - below) as f64 / n as f64;
            return Some(lower + ((upper - lower) as f64 * within).round() as u64);
        }
        below += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(100), 0);
        assert_eq!(bucket(101), 1);
        assert_eq!(bucket(30_000_000), 24);
        assert_eq!(bucket(30_000_001), 25);
        let mut h = [0i64; BUCKETS];
        assert_eq!(quantile(&h, 0.5), None);
        // 90 fast (≤ 100 µs), 10 slow (1–2 ms).
        h[0] = 90;
        h[bucket(1_500)] = 10;
        assert!(quantile(&h, 0.5).unwrap() <= 100);
        let p95 = quantile(&h, 0.95).unwrap();
        assert!((1_000..=2_000).contains(&p95), "{p95}");
        h[BUCKETS - 1] = 1000;
        assert_eq!(quantile(&h, 0.99), Some(30_000_000));
    }

    #[test]
    fn outcomes_round_trip_their_names() {
        for c in CacheOutcome::ALL {
            assert_eq!(CacheOutcome::parse(c.as_str()), Some(c));
        }
        for p in PaymentOutcome::ALL {
            assert_eq!(PaymentOutcome::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
    }
}
