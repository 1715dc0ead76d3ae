//! The ERC-8004 v2 test registries (tests/contracts/ERC8004Registries.sol, built by
//! tests/contracts/build.sh) on anvil: the selectors and event layout pag0's audit relies on.

mod common;

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::{SolCall, SolConstructor, SolEvent};
use common::chain::{Anvil, FACILITATOR};

mod abi {
    alloy_sol_types::sol! {
        constructor(address identityRegistry);
        function register(string agentURI) external returns (uint256 agentId);
        function getAgentWallet(uint256 agentId) external view returns (address);
        function getVersion() external pure returns (string);
        function giveFeedback(uint256 agentId, int128 value, uint8 valueDecimals, string tag1,
            string tag2, string endpoint, string feedbackURI, bytes32 feedbackHash) external;
        event NewFeedback(uint256 indexed agentId, address indexed clientAddress,
            uint64 feedbackIndex, int128 value, uint8 valueDecimals, string indexed indexedTag1,
            string tag1, string tag2, string endpoint, string feedbackURI, bytes32 feedbackHash);
        function getSummary(uint256 agentId, address[] clientAddresses, string tag1, string tag2)
            external view returns (uint64 count, int128 summaryValue, uint8 summaryValueDecimals);
        function readFeedback(uint256 agentId, address clientAddress, uint64 feedbackIndex)
            external view returns (int128 value, uint8 valueDecimals, string tag1, string tag2,
            bool isRevoked);
    }
}

/// Anvil's second dev account: the agent's owner.
const OWNER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

fn bytecode(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text.trim()).unwrap()
}

fn feedback(value: i128, decimals: u8, tag1: &str, hash: B256) -> abi::giveFeedbackCall {
    abi::giveFeedbackCall {
        agentId: U256::ZERO,
        value,
        valueDecimals: decimals,
        tag1: tag1.into(),
        tag2: "hourly".into(),
        endpoint: "api.example.com/v1/*".into(),
        feedbackURI: "http://127.0.0.1:9402/api/audit/feedback/1".into(),
        feedbackHash: hash,
    }
}

#[tokio::test]
async fn feedback_lands_with_the_v2_fields_and_summaries_merge_it() {
    let chain = Anvil::start();
    let identity = chain
        .deploy(bytecode(include_str!("contracts/IdentityRegistry.bin")))
        .await;
    let mut code = bytecode(include_str!("contracts/ReputationRegistry.bin"));
    code.extend(
        abi::constructorCall {
            identityRegistry: identity,
        }
        .abi_encode(),
    );
    let reputation = chain.deploy(code).await;
    let version = chain
        .call(reputation, abi::getVersionCall {}.abi_encode())
        .await
        .unwrap();
    assert_eq!(
        abi::getVersionCall::abi_decode_returns(&version).unwrap(),
        "2.0.0"
    );

    // The first agent registered gets id 0; its wallet is its owner's until set.
    let owner: Address = OWNER.parse().unwrap();
    let receipt = chain
        .send_as(
            OWNER,
            Some(identity),
            abi::registerCall {
                agentURI: "https://agent.example/card.json".into(),
            }
            .abi_encode(),
        )
        .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    let wallet = chain
        .call(
            identity,
            abi::getAgentWalletCall {
                agentId: U256::ZERO,
            }
            .abi_encode(),
        )
        .await
        .unwrap();
    assert_eq!(
        abi::getAgentWalletCall::abi_decode_returns(&wallet).unwrap(),
        owner
    );

    // Feedback from a client: the event carries every v2 field.
    let hash = keccak256(br#"{"endpoint":"api.example.com/v1/*","calls":100,"successes":89}"#);
    let receipt = chain
        .send(
            Some(reputation),
            feedback(89, 0, "successRate", hash).abi_encode(),
        )
        .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    let log = &receipt["logs"][0];
    let topics: Vec<B256> = log["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().parse().unwrap())
        .collect();
    let data = hex::decode(log["data"].as_str().unwrap().trim_start_matches("0x")).unwrap();
    let event = abi::NewFeedback::decode_raw_log(topics.iter().copied(), &data).unwrap();
    let client: Address = FACILITATOR.parse().unwrap();
    assert_eq!(event.agentId, U256::ZERO);
    assert_eq!(event.clientAddress, client);
    assert_eq!(event.feedbackIndex, 1);
    assert_eq!((event.value, event.valueDecimals), (89, 0));
    assert_eq!(event.indexedTag1, keccak256("successRate"));
    assert_eq!(event.tag1, "successRate");
    assert_eq!(event.tag2, "hourly");
    assert_eq!(event.endpoint, "api.example.com/v1/*");
    assert_eq!(
        event.feedbackURI,
        "http://127.0.0.1:9402/api/audit/feedback/1"
    );
    assert_eq!(event.feedbackHash, hash);

    // A second one (99.77 %, two decimals): summaries filter by tag and merge decimals.
    let receipt = chain
        .send(
            Some(reputation),
            feedback(9977, 2, "uptime", hash).abi_encode(),
        )
        .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    let summary = |tag1: &str, clients: Vec<Address>| abi::getSummaryCall {
        agentId: U256::ZERO,
        clientAddresses: clients,
        tag1: tag1.into(),
        tag2: String::new(),
    };
    let out = chain
        .call(
            reputation,
            summary("successRate", vec![client]).abi_encode(),
        )
        .await
        .unwrap();
    let s = abi::getSummaryCall::abi_decode_returns(&out).unwrap();
    assert_eq!(
        (s.count, s.summaryValue, s.summaryValueDecimals),
        (1, 89, 0)
    );
    let out = chain
        .call(reputation, summary("", vec![client]).abi_encode())
        .await
        .unwrap();
    let s = abi::getSummaryCall::abi_decode_returns(&out).unwrap();
    assert_eq!(
        (s.count, s.summaryValue, s.summaryValueDecimals),
        (2, (8900 + 9977) / 2, 2)
    );
    let out = chain
        .call(
            reputation,
            abi::readFeedbackCall {
                agentId: U256::ZERO,
                clientAddress: client,
                feedbackIndex: 2,
            }
            .abi_encode(),
        )
        .await
        .unwrap();
    let f = abi::readFeedbackCall::abi_decode_returns(&out).unwrap();
    assert_eq!((f.value, f.valueDecimals, f.isRevoked), (9977, 2, false));
    assert_eq!((f.tag1.as_str(), f.tag2.as_str()), ("uptime", "hourly"));

    // Whose feedback counts is the reader's choice: an empty list reverts.
    assert!(
        chain
            .call(reputation, summary("", vec![]).abi_encode())
            .await
            .is_err()
    );
    // An agent's owner may not rate itself; an unknown agent cannot be rated.
    let receipt = chain
        .send_as(
            OWNER,
            Some(reputation),
            feedback(100, 0, "successRate", hash).abi_encode(),
        )
        .await;
    assert_eq!(receipt["status"], "0x0", "self-feedback reverts: {receipt}");
    let mut unknown = feedback(1, 0, "successRate", hash);
    unknown.agentId = U256::from(7);
    let receipt = chain.send(Some(reputation), unknown.abi_encode()).await;
    assert_eq!(receipt["status"], "0x0", "unknown agent reverts: {receipt}");
}
