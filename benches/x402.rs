//! Helper for `benches/paid.sh` (run with `cargo bench --bench x402 -- <command>`):
//!
//! * `paywall <addr> [--no-verify]`: serves the test x402 paywall (tests/common/paywall.rs)
//!   until killed; `--no-verify` skips signature recovery so the upstream stays cheap (as do
//!   mimalloc and a single-threaded runtime: the upstream shares the cores with pag0).
//! * `sign <iterations>`: EIP-3009 signing cost per call with pag0's signer: the CPU cost on
//!   one thread, and the round trip through the signing pool.

#[allow(dead_code)]
#[path = "../tests/common/paywall.rs"]
mod paywall;

use std::time::Instant;

use pag0::x402::{self, PaymentSigner};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("paywall") => {
            let addr = args
                .get(1)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:18080".into());
            let verify = !args.iter().any(|a| a == "--no-verify");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let wall = paywall::Paywall::start_on(&addr, verify).await;
                eprintln!("paywall listening on {} (verify: {verify})", wall.addr);
                std::future::pending::<()>().await;
            });
        }
        Some("sign") => {
            let n: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
            let body = format!(
                r#"{{"x402Version":1,"accepts":[{{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","payTo":"{}","maxTimeoutSeconds":60,"asset":"{}","extra":{{"name":"USDC","version":"2"}}}}]}}"#,
                paywall::PAY_TO,
                paywall::ASSET
            );
            let required = x402::parse_v1_body(body.as_bytes()).unwrap();
            let signer = x402::Eip3009Signer::from_hex(paywall::WALLET_KEY).unwrap();
            let offer = &required.offers[0];
            let domain = x402::sign::TokenDomain::of(offer).unwrap();
            // CPU cost on this thread: EIP-712 hash + ECDSA, then payload JSON + base64.
            let auth = |i: u32| x402::Authorization {
                from: signer.address(),
                to: offer.pay_to,
                value: offer.amount,
                valid_after: 0,
                valid_before: 1_800_000_000,
                nonce: alloy_primitives::B256::from(alloy_primitives::U256::from(i)),
            };
            let start = Instant::now();
            let mut signed = Vec::with_capacity(n as usize);
            for i in 0..n {
                let signature = signer.sign_authorization(&domain, &auth(i)).unwrap();
                signed.push(x402::SignedPayment {
                    authorization: auth(i),
                    signature,
                    presigned: false,
                });
            }
            let sign = start.elapsed() / n;
            let start = Instant::now();
            for s in &signed {
                std::hint::black_box(x402::payment_header(&required, offer, s));
            }
            let encode = start.elapsed() / n;
            // One call at a time through the signing pool (what an idle pag0 sees per call).
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let start = Instant::now();
            for i in 0..n {
                // Seconds apart as far as the signer can tell: lone calls, nothing stocked.
                let now = 1_800_000_000 + 2 * u64::from(i);
                let signed = rt.block_on(signer.sign(offer, now)).unwrap();
                std::hint::black_box(x402::payment_header(&required, offer, &signed));
            }
            let pooled = start.elapsed() / n;
            let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
            println!(
                "per call: sign {:.1} us + encode {:.1} us of CPU on one thread; {:.1} us round trip through the signing pool ({n} iterations)",
                us(sign),
                us(encode),
                us(pooled)
            );
        }
        _ => eprintln!("usage: x402 paywall <addr> [--no-verify] | x402 sign <iterations>"),
    }
}
