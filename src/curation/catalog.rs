//! The catalog: every endpoint pag0 has seen, the categories the YAML puts them in, and what
//! their x402 offers say about them (kept in the `curation_endpoints` table).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use crate::store::{Db, StoreError, with_pool};
use crate::x402::PaymentRequired;

/// `catalog: [{category, description, endpoints}]`: endpoints grouped by what they do.
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    pub name: String,
    pub description: Option<String>,
    pub endpoints: Vec<Member>,
}

/// An endpoint key, or a pattern of them (`*` matches any run of characters).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub pattern: String,
    pub description: Option<String>,
}

/// The category naming `endpoint` exactly (a smart route's candidates are named so), else the
/// first category (in YAML order) with a pattern matching it; and that member.
pub fn category_of<'a>(
    categories: &'a [Category],
    endpoint: &str,
) -> Option<(&'a Category, &'a Member)> {
    let find = |matches: &dyn Fn(&Member) -> bool| {
        categories
            .iter()
            .find_map(|c| c.endpoints.iter().find(|m| matches(m)).map(|m| (c, m)))
    };
    find(&|m: &Member| m.pattern == endpoint)
        .or_else(|| find(&|m: &Member| crate::glob::matches(&m.pattern, endpoint)))
}

/// Most bytes of Bazaar `info`/`schema` kept per endpoint (larger ones are left out).
pub const MAX_BAZAAR_BYTES: usize = 16 * 1024;
/// Most characters of an offer's description or MIME type kept.
const MAX_TEXT: usize = 1024;

/// What an x402 v2 offer says about its endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OfferInfo {
    /// `resource.description`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `resource.mimeType`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// `extensions.bazaar` `info` and `schema` (how to call it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bazaar: Option<Value>,
    /// The first offer's amount (base units), asset and network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// When pag0 read it (unix ms).
    pub seen_ms: i64,
}

fn text(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?.trim();
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect();
    (!s.is_empty()).then_some(s)
}

impl OfferInfo {
    /// What `required` says (`None`: nothing descriptive).
    pub fn of(required: &PaymentRequired, seen_ms: i64) -> Option<OfferInfo> {
        let resource: Option<Value> = required
            .resource
            .as_ref()
            .and_then(|r| serde_json::from_str(r.get()).ok());
        let bazaar = required
            .extensions
            .as_ref()
            .filter(|e| e.get().len() <= 4 * MAX_BAZAAR_BYTES)
            .and_then(|e| serde_json::from_str::<Value>(e.get()).ok())
            .and_then(|e| {
                let b = e.get("bazaar")?;
                let mut kept = serde_json::Map::new();
                for key in ["info", "schema"] {
                    if let Some(v) = b.get(key) {
                        kept.insert(key.to_string(), v.clone());
                    }
                }
                let kept = Value::Object(kept);
                (kept.as_object().is_some_and(|o| !o.is_empty())
                    && kept.to_string().len() <= MAX_BAZAAR_BYTES)
                    .then_some(kept)
            });
        let offer = required.offers.first();
        let info = OfferInfo {
            description: text(resource.as_ref().and_then(|r| r.get("description"))),
            mime_type: text(resource.as_ref().and_then(|r| r.get("mimeType"))),
            bazaar,
            price: offer.map(|o| o.amount.to_string()),
            asset: offer.map(|o| o.asset.to_string()),
            network: offer.map(|o| o.network.clone()),
            seen_ms,
        };
        (info.description.is_some() || info.mime_type.is_some() || info.bazaar.is_some())
            .then_some(info)
    }
}

/// One catalog row as stored.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub endpoint: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub offer: Option<OfferInfo>,
}

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

/// Most catalog rows loaded (the most recently seen).
pub const MAX_ENDPOINTS: i64 = 10_000;

/// Records that `endpoint` was called in the hour `hour_ms` (first seen then if new).
pub async fn seen(db: &Db, endpoint: &str, hour_ms: i64) -> Result<(), StoreError> {
    let sql = "INSERT INTO curation_endpoints (endpoint, first_seen_ms, last_seen_ms) VALUES ($1, $2, $2) \
               ON CONFLICT (endpoint) DO UPDATE SET \
               last_seen_ms = CASE WHEN excluded.last_seen_ms > curation_endpoints.last_seen_ms THEN excluded.last_seen_ms ELSE curation_endpoints.last_seen_ms END, \
               first_seen_ms = CASE WHEN excluded.first_seen_ms < curation_endpoints.first_seen_ms THEN excluded.first_seen_ms ELSE curation_endpoints.first_seen_ms END";
    with_pool!(db, p => sqlx::query(sql)
        .bind(endpoint)
        .bind(hour_ms)
        .execute(p)
        .await
        .map(|_| ()))
    .map_err(|e| err("curation catalog", e))
}

/// Stores what an offer said about `endpoint` (the latest offer wins).
pub async fn describe(db: &Db, endpoint: &str, info: &OfferInfo) -> Result<(), StoreError> {
    let sql = "INSERT INTO curation_endpoints (endpoint, first_seen_ms, last_seen_ms, description, mime_type, bazaar, price, asset, network, described_ms) \
               VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $2) \
               ON CONFLICT (endpoint) DO UPDATE SET description = excluded.description, mime_type = excluded.mime_type, \
               bazaar = excluded.bazaar, price = excluded.price, asset = excluded.asset, network = excluded.network, \
               described_ms = excluded.described_ms";
    let bazaar = info.bazaar.as_ref().map(Value::to_string);
    with_pool!(db, p => sqlx::query(sql)
        .bind(endpoint)
        .bind(info.seen_ms)
        .bind(&info.description)
        .bind(&info.mime_type)
        .bind(&bazaar)
        .bind(&info.price)
        .bind(&info.asset)
        .bind(&info.network)
        .execute(p)
        .await
        .map(|_| ()))
    .map_err(|e| err("curation catalog", e))
}

/// The catalog as stored, most recently seen first (at most [`MAX_ENDPOINTS`]).
pub async fn load(db: &Db) -> Result<Vec<Stored>, StoreError> {
    let sql = "SELECT endpoint, first_seen_ms, last_seen_ms, description, mime_type, bazaar, price, asset, network, described_ms \
               FROM curation_endpoints ORDER BY last_seen_ms DESC, endpoint LIMIT $1";
    let rows = with_pool!(db, p => {
        let rows = sqlx::query(sql)
            .bind(MAX_ENDPOINTS)
            .fetch_all(p)
            .await
            .map_err(|e| err("curation catalog", e))?;
        rows.iter().map(stored).collect::<Result<Vec<Stored>, sqlx::Error>>()
    });
    rows.map_err(|e| err("curation catalog", e))
}

/// One catalog row read back.
fn stored<R: Row>(row: &R) -> Result<Stored, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let described: Option<i64> = row.try_get("described_ms")?;
    let bazaar: Option<String> = row.try_get("bazaar")?;
    Ok(Stored {
        endpoint: row.try_get("endpoint")?,
        first_seen_ms: row.try_get("first_seen_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        offer: match described {
            None => None,
            Some(seen_ms) => Some(OfferInfo {
                description: row.try_get("description")?,
                mime_type: row.try_get("mime_type")?,
                bazaar: bazaar.and_then(|b| serde_json::from_str::<Value>(&b).ok()),
                price: row.try_get("price")?,
                asset: row.try_get("asset")?,
                network: row.try_get("network")?,
                seen_ms,
            }),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_category_wins() {
        let member = |p: &str| Member {
            pattern: p.into(),
            description: None,
        };
        let cats = vec![
            Category {
                name: "weather".into(),
                description: None,
                endpoints: vec![
                    member("api.a.example/v1/weather"),
                    member("api.b.example/weather/*"),
                ],
            },
            Category {
                name: "all-b".into(),
                description: None,
                endpoints: vec![member("api.b.example/*")],
            },
        ];
        let name = |e: &str| category_of(&cats, e).map(|(c, _)| c.name.as_str());
        assert_eq!(name("api.a.example/v1/weather"), Some("weather"));
        assert_eq!(name("api.a.example/v1/weather/x"), None);
        assert_eq!(name("api.b.example/weather/paris"), Some("weather"));
        assert_eq!(name("api.b.example/news"), Some("all-b"));
        // An exact key wins over an earlier pattern.
        let mut cats = cats;
        cats[1].endpoints.push(member("api.b.example/weather/*"));
        let name = |e: &str| category_of(&cats, e).map(|(c, _)| c.name.as_str());
        assert_eq!(name("api.b.example/weather/*"), Some("weather"));
        cats[0].endpoints.remove(1);
        let name = |e: &str| category_of(&cats, e).map(|(c, _)| c.name.as_str());
        assert_eq!(name("api.b.example/weather/*"), Some("all-b"));
    }

    #[test]
    fn an_offer_describes_its_endpoint() {
        let header = r#"{"x402Version":2,"resource":{"url":"https://api.example.com/w","description":"Weather\u0007 now","mimeType":"application/json"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60}],"extensions":{"bazaar":{"info":{"input":{"type":"http","method":"GET","queryParams":{"city":"Paris"}}},"schema":{"type":"object"},"other":1}}}"#;
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(header);
        let required = crate::x402::parse_v2_header(b64.as_bytes()).unwrap();
        let info = OfferInfo::of(&required, 7).unwrap();
        assert_eq!(info.description.as_deref(), Some("Weather now"));
        assert_eq!(info.mime_type.as_deref(), Some("application/json"));
        assert_eq!(
            info.bazaar.unwrap(),
            serde_json::json!({"info":{"input":{"type":"http","method":"GET","queryParams":{"city":"Paris"}}},"schema":{"type":"object"}})
        );
        assert_eq!(info.price.as_deref(), Some("10000"));
        assert_eq!(info.network.as_deref(), Some("eip155:84532"));
    }
}
