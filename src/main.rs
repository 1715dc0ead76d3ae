//! `pag0` command line: run the proxy, check a config, create API keys, probe health.
//!
//! | command | what |
//! |---|---|
//! | `pag0 -c FILE` | run (default file `conf/pag0.yaml`) |
//! | `pag0 -t -c FILE` | validate the file, print every problem, exit 0/1 |
//! | `pag0 keys new` | print a new API key and the hash to put in `projects[].keys` |
//! | `pag0 healthcheck -c FILE` | GET the admin `/health` (for container health checks) |
//! | `pag0 migrate -c FILE` | apply the SQL migrations to `database.url` and exit |
//! | `pag0 wallet new [--dir D] [--name N]` | create an encrypted keystore (password: `PAG0_WALLET_PASSWORD`) |
//! | `pag0 wallet address -c FILE` | print each project's payment address |
//!
//! Signals: SIGHUP reloads the config; SIGTERM drains and exits; SIGINT exits at once;
//! SIGQUIT hands the listeners to a new `pag0 --upgrade` process (Pingora graceful upgrade).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pingora::server::RunArgs;

use pag0::config;

mod reconcile_cmd;

/// mimalloc: fewer cycles per request than the system allocator under Pingora's many small,
/// short-lived allocations (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas eagerly by default, so an idle pag0 held tens of MiB more than
/// it uses (benches/idle.sh); commit on demand instead. (Purging freed pages at once as well
/// saved a few MiB more but cost about 15 % of pass-through throughput: not done.) Set in the
/// environment, where mimalloc reads its options, by a constructor that runs before
/// mimalloc's own (which has priority 101); an operator's own `MIMALLOC_*` values win.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static ALLOCATOR_OPTIONS: extern "C" fn() = {
    extern "C" fn set() {
        // SAFETY: runs once, before main and before any other thread exists; the strings are
        // static and NUL-terminated; overwrite = 0 leaves values already set alone.
        unsafe {
            libc::setenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr(), c"0".as_ptr(), 0);
        }
    }
    set
};

use pag0::server::{self, StartOptions};

#[derive(Parser)]
#[command(
    name = "pag0",
    version,
    about = "Payment-aware HTTP proxy for AI agents"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "conf",
        default_value = "conf/pag0.yaml",
        global = true
    )]
    conf: PathBuf,
    /// Validate the configuration and exit (0 = valid, 1 = invalid).
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Take over the listeners of a running pag0 (graceful upgrade; send it SIGQUIT).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// API key management.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Query the admin /health endpoint of a running pag0 (exit 0 when healthy).
    Healthcheck,
    /// Apply the SQL migrations to the configured database and exit (pag0 also applies them
    /// at startup).
    Migrate,
    /// Payment wallets.
    Wallet {
        #[command(subcommand)]
        action: WalletAction,
    },
    /// The local CA for intercepting HTTPS (CONNECT) traffic.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Check every journaled payment of a time range against the chain (settled, not
    /// settled, mismatch) and the payment wallets' transfers over the same blocks (unknown
    /// spend). Exit 0: all explained; 3: a mismatch or unknown spend; 1: an error.
    Reconcile {
        /// Start of the range (YYYY-MM-DD or RFC 3339; default: 7 days ago).
        #[arg(long)]
        from: Option<String>,
        /// End of the range, exclusive (default: now).
        #[arg(long)]
        to: Option<String>,
    },
    /// Run pag0 next to a small x402 demo API on loopback, with a throwaway wallet, and print
    /// commands that show a paid call, a cache hit and a budget refusal (no chain, no
    /// internet; nothing is settled).
    Demo {
        /// pag0's proxy listener.
        #[arg(long, default_value = "127.0.0.1:8402")]
        listen: std::net::SocketAddr,
        /// pag0's admin listener.
        #[arg(long, default_value = "127.0.0.1:9402")]
        admin: std::net::SocketAddr,
        /// The demo x402 API.
        #[arg(long, default_value = "127.0.0.1:8403")]
        api: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Create the CA (ca.crt + ca.key, mode 0600) unless it exists; print where it is.
    Init {
        /// CA directory (default: the config's `connect.ca_dir`, `pag0-ca` next to it).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the CA certificate (PEM) for agents to trust.
    Export {
        /// CA directory (default: the config's `connect.ca_dir`, `pag0-ca` next to it).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum WalletAction {
    /// Create an encrypted JSON keystore (password from PAG0_WALLET_PASSWORD) and print its address.
    New {
        /// Directory for the keystore file.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// File name (default: a random UUID).
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the payment address of every project in the config.
    Address,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Print a new random API key and its sha256 hash for projects[].keys.
    New,
}

fn main() -> ExitCode {
    // Info by default; RUST_LOG overrides. pingora-cache warns once that pag0 does not use a
    // header compression dictionary (a deliberate choice: entries stay readable by any build).
    // alloy's HTTP transport logs its span with the RPC URL, which may hold an API key
    // (`payments.rpc`): never printed, whatever RUST_LOG says in general. Every record goes
    // through `logs::Filtered`: secrets redacted, Pingora's per-request records at debug.
    let logger = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("pingora_cache::meta", log::LevelFilter::Error)
        .filter_module("alloy_transport_http", log::LevelFilter::Off)
        .parse_env(env_logger::Env::default())
        .build();
    log::set_max_level(logger.filter());
    log::set_boxed_logger(Box::new(pag0::logs::Filtered::new(logger)))
        .expect("the logger is set once");
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Keys {
            action: KeysAction::New,
        }) => {
            let (key, hash) = pag0::keys::new_key();
            println!("key:  {key}\nhash: {hash}");
            println!(
                "\nPut the hash in projects[].keys; give the key to the agent (it is not stored anywhere)."
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Healthcheck) => return healthcheck(&cli.conf),
        Some(Command::Migrate) => return migrate(&cli.conf),
        Some(Command::Wallet {
            action: WalletAction::New { dir, name },
        }) => return wallet_new(&dir, name.as_deref()),
        Some(Command::Wallet {
            action: WalletAction::Address,
        }) => return wallet_address(&cli.conf),
        Some(Command::Ca { action }) => return ca(&cli.conf, action),
        Some(Command::Demo { listen, admin, api }) => return demo(listen, admin, api),
        Some(Command::Reconcile { from, to }) => {
            return match config::load(&cli.conf) {
                Ok(config) => reconcile_cmd::run(config, from.as_deref(), to.as_deref()),
                Err(errors) => {
                    eprintln!("{}: invalid configuration:\n{errors}", cli.conf.display());
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let config = match config::load(&cli.conf) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", cli.conf.display());
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        // The chains are part of the configuration: the audit RPC must answer for its chain id,
        // and a payment network's RPC must not serve another chain.
        let checked = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(async {
                    let chains = pag0::live::payment_chains(&config).map_err(|e| e.to_string())?;
                    pag0::live::check_payment_chains(&chains).await?;
                    match &config.audit {
                        Some(audit) => pag0::audit::check_chain(audit).await,
                        None => Ok(()),
                    }
                })
            });
        if let Err(e) = checked {
            eprintln!("{}: invalid configuration:\n{e}", cli.conf.display());
            return ExitCode::FAILURE;
        }
        println!("{}: configuration OK", cli.conf.display());
        return ExitCode::SUCCESS;
    }
    let listen = config.server.listen.clone();
    let pid_file = PathBuf::from(
        config
            .server
            .pid_file
            .clone()
            .unwrap_or_else(|| pag0::server::DEFAULT_PID_FILE.to_string()),
    );
    let admin = config.admin.listen;
    let connect = config.connect.clone();
    log::debug!("configuration: {config:?}");
    let pag0 = match server::build(
        config,
        Some(cli.conf.clone()),
        &StartOptions {
            upgrade: cli.upgrade,
        },
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pag0: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for addr in &listen {
        println!(
            "pag0 proxy listening on http://{addr} (HTTP_PROXY and HTTPS_PROXY=http://PROJECT:KEY@{addr})"
        );
    }
    match connect.mode {
        config::ConnectMode::Intercept => println!(
            "pag0 intercepts HTTPS (CONNECT): agents must trust {}",
            connect
                .ca_dir
                .join(pag0::intercept::ca::CA_CERT_FILE)
                .display()
        ),
        config::ConnectMode::Tunnel => println!("pag0 relays HTTPS (CONNECT) blind"),
        config::ConnectMode::Off => {}
    }
    println!("pag0 admin listening on http://{admin} (/health, /metrics, /reload; bearer token)");
    // Pingora writes the pid file only when it daemonizes; `kill -HUP $(cat …)` needs it in
    // the foreground too.
    let pid = std::process::id().to_string();
    match write_pid_file(&pid_file, &pid) {
        Ok(()) => println!(
            "pag0 pid {pid} in {} (kill -HUP reloads the config; SIGINT stops at once, SIGTERM after the grace period)",
            pid_file.display()
        ),
        Err(e) => log::warn!("cannot write the pid file {}: {e}", pid_file.display()),
    }
    pag0.run(RunArgs::default());
    if std::fs::read_to_string(&pid_file).is_ok_and(|p| p == pid) {
        let _ = std::fs::remove_file(&pid_file);
    }
    ExitCode::SUCCESS
}

/// Writes `pid` to `path`, never through a symbolic link (the default lives in /tmp).
fn write_pid_file(path: &std::path::Path, pid: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(pid.as_bytes())
}

/// `pag0 demo`: the demo API on its own thread, pag0 in the foreground, state in a temporary
/// directory removed on exit.
fn demo(
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    api: std::net::SocketAddr,
) -> ExitCode {
    use pag0::demo;
    // A fresh private directory (its name is not guessable; it holds the demo's CA key).
    let dir = std::env::temp_dir().join(format!(
        "pag0-demo-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let created = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir)
    };
    if let Err(e) = created {
        eprintln!("pag0 demo: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let key = format!("0x{}", hex::encode(rand::random::<[u8; 32]>()));
    let yaml = demo::config_yaml(listen, admin, api, &dir.display().to_string());
    let config = match config::parse(&yaml, &dir, |var| match var {
        "PAG0_DEMO_WALLET_KEY" => Some(key.clone()),
        other => std::env::var(other).ok(),
    }) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("pag0 demo: invalid configuration:\n{errors}");
            return ExitCode::FAILURE;
        }
    };
    let api_listener = match std::net::TcpListener::bind(api) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pag0 demo: cannot listen on {api}: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the demo API");
        rt.block_on(async move {
            let _ = api_listener.set_nonblocking(true);
            match tokio::net::TcpListener::from_std(api_listener) {
                Ok(l) => {
                    if let Err(e) = demo::serve_api(l).await {
                        log::error!("demo API stopped: {e}");
                    }
                }
                Err(e) => log::error!("demo API: {e}"),
            }
        });
    });
    let pag0 = match server::build(config, None, &StartOptions::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pag0 demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    use pag0::x402::PaymentSigner;
    let address = pag0::x402::Eip3009Signer::from_hex(&key)
        .map(|s| pag0::x402::checksummed(&s.address()))
        .unwrap_or_default();
    println!(
        "pag0 demo: pag0 on http://{listen} pays the demo x402 API on http://{api} (0.001 USDC per /weather call, 0.05 per /premium) from a throwaway wallet {address}. The API verifies each signature; nothing is settled, no chain or internet is used."
    );
    println!(
        "Budget of project demo: 0.01 USDC per request, 1.00 a day. Try, in another terminal:\n"
    );
    for line in demo::commands(listen, admin, api) {
        println!("  {line}");
    }
    println!();
    pag0.run(RunArgs::default());
    let _ = std::fs::remove_dir_all(&dir);
    ExitCode::SUCCESS
}

/// The CA directory: `--dir`, else the config's `connect.ca_dir`, else `pag0-ca` next to the
/// config file (when the config does not load).
fn ca_dir(conf: &std::path::Path, dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| match config::load(conf) {
        Ok(c) => c.connect.ca_dir,
        Err(_) => conf
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(config::file::DEFAULT_CA_DIR),
    })
}

fn ca(conf: &std::path::Path, action: CaAction) -> ExitCode {
    use pag0::intercept::LocalCa;
    match action {
        CaAction::Init { dir } => {
            let dir = ca_dir(conf, dir);
            match LocalCa::load_or_create(&dir) {
                Ok((ca, created)) => {
                    let what = if created { "created" } else { "already exists" };
                    println!("CA {what}: {}", ca.cert_path().display());
                    println!(
                        "\nAgents must trust it, e.g. curl --cacert {0}, CURL_CA_BUNDLE / SSL_CERT_FILE / REQUESTS_CA_BUNDLE / NODE_EXTRA_CA_CERTS={0}",
                        ca.cert_path().display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pag0 ca init: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        CaAction::Export { dir } => match LocalCa::load(&ca_dir(conf, dir)) {
            Ok(ca) => {
                print!("{}", ca.cert_pem());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pag0 ca export: {e} (create it with `pag0 ca init`)");
                ExitCode::FAILURE
            }
        },
    }
}

/// Environment variable holding the password of keystores created by `pag0 wallet new`.
const WALLET_PASSWORD_ENV: &str = "PAG0_WALLET_PASSWORD";

fn wallet_new(dir: &std::path::Path, name: Option<&str>) -> ExitCode {
    let password = match std::env::var(WALLET_PASSWORD_ENV) {
        Ok(p) if p.len() >= 8 => p,
        _ => {
            eprintln!("set {WALLET_PASSWORD_ENV} (at least 8 characters) to the keystore password");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut rng = rand08::rngs::OsRng;
    match alloy_signer_local::PrivateKeySigner::new_keystore(dir, &mut rng, password, name) {
        Ok((signer, uuid)) => {
            let file = dir.join(name.unwrap_or(&uuid));
            println!("keystore: {}", file.display());
            println!("address:  {}", signer.address());
            println!(
                "\nIn the YAML:  wallet: {{ keystore: {}, password: ${{{WALLET_PASSWORD_ENV}}} }}",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot create the keystore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn wallet_address(conf: &std::path::Path) -> ExitCode {
    let config = match config::load(conf) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", conf.display());
            return ExitCode::FAILURE;
        }
    };
    for project in &config.projects {
        match &project.wallet {
            Some(wallet) => println!("{}\t{}", project.id, wallet.0.address()),
            None => println!("{}\t(no wallet)", project.id),
        }
    }
    ExitCode::SUCCESS
}

/// A dependency-free HTTP/1.1 GET of the admin `/health`, for `HEALTHCHECK` in containers.
fn healthcheck(conf: &std::path::Path) -> ExitCode {
    let config = match config::load(conf) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", conf.display());
            return ExitCode::FAILURE;
        }
    };
    let addr = config.admin.listen;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        config.admin.token.expose()
    );
    let result =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            Ok(response)
        });
    match result {
        Ok(response) if response.starts_with("HTTP/1.1 200") => {
            println!("{}", response.split("\r\n\r\n").nth(1).unwrap_or(""));
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!(
                "unhealthy: {}",
                response.lines().next().unwrap_or("no response")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot reach the admin listener at {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pag0 migrate`: opens the configured database and applies pending migrations.
fn migrate(conf: &std::path::Path) -> ExitCode {
    let config = match config::load(conf) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", conf.display());
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let store = pag0::store::Store::open(&config.database).await?;
        store.migrate().await?;
        Ok::<_, pag0::store::StoreError>(store.kind())
    });
    match result {
        Ok(kind) => {
            println!(
                "{kind} database {}: migrations applied",
                config.database.url
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate: {e}");
            ExitCode::FAILURE
        }
    }
}
