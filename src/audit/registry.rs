//! The ERC-8004 v2 Reputation Registry's calls and event, as pag0 uses them.

use alloy_sol_types::sol;

sol! {
    /// Gives feedback about `agentId` (the caller must not be the agent's owner or operator).
    function giveFeedback(
        uint256 agentId,
        int128 value,
        uint8 valueDecimals,
        string tag1,
        string tag2,
        string endpoint,
        string feedbackURI,
        bytes32 feedbackHash
    ) external;

    /// The count and average of the feedback `clientAddresses` gave `agentId` with these tags
    /// (an empty tag matches any); reverts on an empty address list.
    function getSummary(uint256 agentId, address[] clientAddresses, string tag1, string tag2)
        external view returns (uint64 count, int128 summaryValue, uint8 summaryValueDecimals);

    /// Emitted by `giveFeedback`.
    event NewFeedback(
        uint256 indexed agentId,
        address indexed clientAddress,
        uint64 feedbackIndex,
        int128 value,
        uint8 valueDecimals,
        string indexed indexedTag1,
        string tag1,
        string tag2,
        string endpoint,
        string feedbackURI,
        bytes32 feedbackHash
    );
}
