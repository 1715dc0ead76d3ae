//! A local EVM chain for tests: anvil (npm `@foundry-rs/anvil-linux-amd64`, installed under
//! target/tools by .ci/bootstrap) on a free port, and the test EIP-3009 token
//! (tests/contracts/TestUSDC.sol, compiled by tests/contracts/build.sh) deployed on it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{SolCall, SolConstructor, sol};
use serde_json::{Value, json};

sol! {
    constructor(string name_);
    function mint(address to, uint256 value) external;
    function balanceOf(address owner) external view returns (uint256);
}

mod registry {
    alloy_sol_types::sol! {
        constructor(address identityRegistry);
    }
}

/// Anvil's first dev account (unlocked: anvil signs its transactions): the "facilitator".
pub const FACILITATOR: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
/// Anvil's chain id.
pub const CHAIN_ID: u64 = 31337;

/// The anvil binary: `$ANVIL`, else target/tools (see .ci/bootstrap), else `anvil` on PATH.
fn anvil_binary() -> String {
    if let Ok(path) = std::env::var("ANVIL") {
        return path;
    }
    let local = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/tools/node_modules/.bin/anvil"
    );
    if std::path::Path::new(local).exists() {
        return local.to_string();
    }
    "anvil".to_string()
}

/// A running anvil. Dropping it stops it.
pub struct Anvil {
    child: Child,
    pub url: String,
}

impl Anvil {
    pub fn start() -> Anvil {
        let port = super::free_port();
        let child = Command::new(anvil_binary())
            .args([
                "--port",
                &port.to_string(),
                "--host",
                "127.0.0.1",
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run anvil ({e}); .ci/bootstrap installs it under target/tools")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "anvil did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Anvil {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// The JSON-RPC answer: `Ok(result)` or `Err(error)` (e.g. a reverted `eth_call`).
    pub async fn try_rpc(&self, method: &str, params: Value) -> Result<Value, Value> {
        let answer: Value = reqwest::Client::new()
            .post(&self.url)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match answer.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(answer["result"].clone()),
        }
    }

    /// `eth_call` at the latest block: the returned bytes, or the error (a revert).
    pub async fn call(&self, to: Address, data: Vec<u8>) -> Result<Vec<u8>, Value> {
        let out = self
            .try_rpc(
                "eth_call",
                json!([{"to": to.to_string(), "data": format!("0x{}", hex::encode(data))}, "latest"]),
            )
            .await?;
        Ok(hex::decode(out.as_str().unwrap_or_default().trim_start_matches("0x")).unwrap())
    }

    /// Sends a transaction from the facilitator account and returns its receipt.
    pub async fn send(&self, to: Option<Address>, data: Vec<u8>) -> Value {
        self.send_as(FACILITATOR, to, data).await
    }

    /// Sends a transaction from one of anvil's unlocked dev accounts and returns its receipt
    /// (`status` `0x0` when it reverted: the gas is given, so nothing is estimated first).
    pub async fn send_as(&self, from: &str, to: Option<Address>, data: Vec<u8>) -> Value {
        let mut tx =
            json!({"from": from, "data": format!("0x{}", hex::encode(data)), "gas": "0x1000000"});
        if let Some(to) = to {
            tx["to"] = json!(to.to_string());
        }
        let hash = self.rpc("eth_sendTransaction", json!([tx])).await;
        self.rpc("eth_getTransactionReceipt", json!([hash])).await
    }

    /// Deploys a contract (`code`: its bytecode and encoded constructor arguments) from the
    /// facilitator account.
    pub async fn deploy(&self, code: Vec<u8>) -> Address {
        let receipt = self.send(None, code).await;
        assert_eq!(receipt["status"], "0x1", "{receipt}");
        receipt["contractAddress"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Deploys the ERC-8004 test registries (tests/contracts): (identity, reputation).
    pub async fn deploy_registries(&self) -> (Address, Address) {
        let code = |text: &str| hex::decode(text.trim()).unwrap();
        let identity = self
            .deploy(code(include_str!("../contracts/IdentityRegistry.bin")))
            .await;
        let mut reputation = code(include_str!("../contracts/ReputationRegistry.bin"));
        reputation.extend(
            registry::constructorCall {
                identityRegistry: identity,
            }
            .abi_encode(),
        );
        (identity, self.deploy(reputation).await)
    }

    /// Deploys the test EIP-3009 token with EIP-712 domain name `name` (version "2").
    pub async fn deploy_token(&self, name: &str) -> Address {
        let mut code = hex::decode(include_str!("../contracts/TestUSDC.bin").trim()).unwrap();
        code.extend(
            constructorCall {
                name_: name.to_string(),
            }
            .abi_encode(),
        );
        self.deploy(code).await
    }

    pub async fn mint(&self, token: Address, to: Address, value: u64) {
        let receipt = self
            .send(
                Some(token),
                mintCall {
                    to,
                    value: U256::from(value),
                }
                .abi_encode(),
            )
            .await;
        assert_eq!(receipt["status"], "0x1", "{receipt}");
    }

    pub async fn balance(&self, token: Address, owner: Address) -> U256 {
        let out = self
            .rpc(
                "eth_call",
                json!([{"to": token.to_string(), "data": format!("0x{}", hex::encode(balanceOfCall { owner }.abi_encode()))}, "latest"]),
            )
            .await;
        let bytes = hex::decode(out.as_str().unwrap().trim_start_matches("0x")).unwrap();
        U256::from_be_slice(&bytes)
    }

    /// Settles an authorization as a facilitator would; returns the transaction hash.
    pub async fn settle(&self, token: Address, p: &super::paywall::Accepted) -> B256 {
        super::paywall::settle_at(&self.url, token, p).await
    }

    /// Mines a block stamped with the current time (block time moves on only with blocks).
    pub async fn mine(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.rpc("evm_mine", json!([now])).await;
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
