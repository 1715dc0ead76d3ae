//! `pag0 reconcile`: every journaled payment of a time range checked against the chain, and
//! the payment wallets' transfers over the same blocks, with a progress bar on a terminal and
//! a table of the classes at the end. Exit status 0 when everything is explained, 3 when a
//! payment mismatches or unknown spend was found, 1 on an error.

use std::process::ExitCode;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use pag0::audit::reconcile::{self, Outcome, Progress};
use pag0::config::Config;

/// Found something a human must look at.
const EXIT_FINDINGS: u8 = 3;

/// An indicatif bar per stage (hidden when stderr is not a terminal).
struct Bar(std::sync::Mutex<Option<ProgressBar>>);

impl Progress for Bar {
    fn begin(&self, label: &str, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ({eta})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            bar.inc(n);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish();
        }
    }
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339, as unix seconds.
fn parse_date(raw: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(raw, &format)
        .map(|d| d.midnight().assume_utc().unix_timestamp())
        .map_err(|_| format!("{raw:?} is not a date (YYYY-MM-DD or RFC 3339)"))
}

pub fn run(config: Config, from: Option<&str>, to: Option<&str>) -> ExitCode {
    let now = pag0::clock::unix_now() as i64;
    let range = (|| {
        let from = from
            .map(parse_date)
            .transpose()?
            .unwrap_or(now - 7 * 86_400);
        let to = to.map(parse_date).transpose()?.unwrap_or(now + 1);
        if from >= to {
            return Err("--from must be before --to".to_string());
        }
        Ok((from, to))
    })();
    let (from, to) = match range {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reconcile: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(reconcile_range(&config, from, to)) {
        Ok((outcome, findings)) => {
            print_table(&config, &outcome);
            if findings {
                ExitCode::from(EXIT_FINDINGS)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("reconcile: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn reconcile_range(config: &Config, from: i64, to: i64) -> Result<(Outcome, bool), String> {
    let store = Arc::new(
        pag0::store::Store::open(&config.database)
            .await
            .map_err(|e| format!("database: {e}"))?,
    );
    let chains = pag0::live::payment_chains(config).map_err(|e| e.to_string())?;
    if chains.is_empty() {
        return Err("payments.rpc names no network: there is no chain to reconcile against".into());
    }
    let metrics = Arc::new(pag0::metrics::Metrics::new());
    // Refunds are the running pag0's job (its ledger), and so are alerts: unknown spend is
    // recorded and shown here, and the running pag0 sends the webhooks (with its policies,
    // database overrides included) and retries them until delivered.
    let ledger: Arc<dyn pag0::budget::Ledger> = Arc::new(pag0::budget::LocalLedger::new(
        store.clone(),
        std::time::Duration::from_secs(60),
    ));
    let effects = pag0::settle::ReconcileEffects {
        store: store.clone(),
        ledger,
        policies: Arc::default(),
        projects: config.projects.clone(),
        metrics: metrics.clone(),
    };
    let reconciler =
        pag0::live::reconciler(config, &store, chains, effects, metrics.reconcile.clone())
            .ok_or("no payment network to reconcile")?
            .without_alerts();
    let bar = Bar(std::sync::Mutex::new(None));
    let mut outcome = reconciler.payments(from, to, true, &bar).await?;
    for network in reconciler.networks() {
        let chain = reconciler.chain(&network).ok_or("no RPC")?.clone();
        let (latest, now) = chain
            .latest()
            .await
            .map_err(|e| format!("{network}: {e}"))?;
        // Not the newest blocks: their payments' journal rows may still be on their way.
        let Some(settled) = reconcile::settled_block(&chain, latest, now).await? else {
            continue;
        };
        let first = chain.block_at(from.max(0) as u64, latest).await?;
        let last = chain
            .block_at(to.max(0) as u64, latest)
            .await?
            .saturating_sub(1)
            .min(settled);
        if first > last {
            continue;
        }
        outcome.blocks += last - first + 1;
        let found = reconciler.scan(&network, first, last, &bar).await?;
        outcome.unknown_spend.extend(found);
    }
    let findings = outcome
        .states
        .get(reconcile::MISMATCH)
        .is_some_and(|t| t.payments > 0)
        || !outcome.unknown_spend.is_empty();
    Ok((outcome, findings))
}

fn print_table(config: &Config, outcome: &Outcome) {
    let symbol = |asset: &str| {
        config
            .payments
            .assets
            .iter()
            .find(|a| a.address.to_string().eq_ignore_ascii_case(asset))
            .map_or_else(|| asset.to_string(), |a| a.symbol.clone())
    };
    println!();
    println!("{:<14} {:>9}  amount (base units)", "state", "payments");
    for state in reconcile::STATES {
        let totals = outcome.states.get(state).cloned().unwrap_or_default();
        let amounts: Vec<String> = totals
            .amounts
            .iter()
            .map(|(asset, units)| format!("{units} {}", symbol(asset)))
            .collect();
        println!(
            "{:<14} {:>9}  {}",
            state,
            totals.payments,
            if amounts.is_empty() {
                "-".to_string()
            } else {
                amounts.join(", ")
            }
        );
    }
    println!(
        "{:<14} {:>9}  {}",
        "unknown_spend",
        outcome.unknown_spend.len(),
        if outcome.unknown_spend.is_empty() {
            "-".to_string()
        } else {
            outcome
                .unknown_spend
                .iter()
                .map(|u| {
                    format!(
                        "{} {} from {} to {} in {}",
                        u.amount,
                        symbol(&u.token),
                        u.from,
                        u.to,
                        u.tx_hash
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
    );
    println!("({} blocks scanned)", outcome.blocks);
}
