// SPDX-License-Identifier: MIT
// Minimal, non-upgradeable ERC-8004 v2 ("Trustless Agents", Jan 2026) Identity and Reputation
// registries for tests on a local chain: the same selectors and event layout as the spec
// (getVersion() == "2.0.0"), none of its upgradeability. Written from the published
// signatures. Test-only simplification: an agent's owner sets its wallet directly (the spec
// asks for an EIP-712 signature of the new wallet).
pragma solidity ^0.8.20;

contract IdentityRegistry {
    struct MetadataEntry {
        string metadataKey;
        bytes metadataValue;
    }

    string public constant name = "AgentIdentity";
    string public constant symbol = "AGENT";

    uint256 private nextId;
    mapping(uint256 => address) private owners;
    mapping(address => uint256) private balances;
    mapping(uint256 => string) private uris;
    mapping(uint256 => address) private wallets;
    mapping(uint256 => mapping(string => bytes)) private metadata;
    mapping(uint256 => mapping(address => bool)) private operators;

    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);
    event Registered(uint256 indexed agentId, string agentURI, address indexed owner);
    event MetadataSet(uint256 indexed agentId, string indexed indexedMetadataKey, string metadataKey, bytes metadataValue);
    event URIUpdated(uint256 indexed agentId, string newURI, address indexed updatedBy);

    function getVersion() external pure returns (string memory) {
        return "2.0.0";
    }

    function register() external returns (uint256 agentId) {
        return mint("");
    }

    function register(string calldata agentURI) external returns (uint256 agentId) {
        return mint(agentURI);
    }

    function register(string calldata agentURI, MetadataEntry[] calldata entries) external returns (uint256 agentId) {
        agentId = mint(agentURI);
        for (uint256 i = 0; i < entries.length; i++) {
            require(keccak256(bytes(entries[i].metadataKey)) != keccak256("agentWallet"), "reserved key");
            metadata[agentId][entries[i].metadataKey] = entries[i].metadataValue;
            emit MetadataSet(agentId, entries[i].metadataKey, entries[i].metadataKey, entries[i].metadataValue);
        }
    }

    function mint(string memory agentURI) private returns (uint256 agentId) {
        agentId = nextId++;
        owners[agentId] = msg.sender;
        balances[msg.sender] += 1;
        uris[agentId] = agentURI;
        wallets[agentId] = msg.sender;
        emit Transfer(address(0), msg.sender, agentId);
        emit Registered(agentId, agentURI, msg.sender);
    }

    function ownerOf(uint256 agentId) public view returns (address owner) {
        owner = owners[agentId];
        require(owner != address(0), "ERC721NonexistentToken");
    }

    function balanceOf(address owner) external view returns (uint256) {
        return balances[owner];
    }

    function tokenURI(uint256 agentId) external view returns (string memory) {
        ownerOf(agentId);
        return uris[agentId];
    }

    function setAgentURI(uint256 agentId, string calldata newURI) external {
        require(isAuthorizedOrOwner(msg.sender, agentId), "not authorized");
        uris[agentId] = newURI;
        emit URIUpdated(agentId, newURI, msg.sender);
    }

    function setApprovalForAgent(uint256 agentId, address operator, bool approved) external {
        require(ownerOf(agentId) == msg.sender, "not the owner");
        operators[agentId][operator] = approved;
    }

    function isAuthorizedOrOwner(address spender, uint256 agentId) public view returns (bool) {
        address owner = ownerOf(agentId);
        return spender == owner || operators[agentId][spender];
    }

    function getMetadata(uint256 agentId, string calldata metadataKey) external view returns (bytes memory) {
        if (keccak256(bytes(metadataKey)) == keccak256("agentWallet")) {
            return abi.encodePacked(wallets[agentId]);
        }
        return metadata[agentId][metadataKey];
    }

    function getAgentWallet(uint256 agentId) external view returns (address) {
        ownerOf(agentId);
        return wallets[agentId];
    }

    /// Test-only: the owner sets the wallet (the spec requires the new wallet's signature).
    function setAgentWallet(uint256 agentId, address wallet) external {
        require(isAuthorizedOrOwner(msg.sender, agentId), "not authorized");
        wallets[agentId] = wallet;
        emit MetadataSet(agentId, "agentWallet", "agentWallet", abi.encodePacked(wallet));
    }
}

contract ReputationRegistry {
    struct Feedback {
        int128 value;
        uint8 valueDecimals;
        string tag1;
        string tag2;
        bool isRevoked;
    }

    IdentityRegistry private immutable identity;
    mapping(uint256 => mapping(address => Feedback[])) private feedback;

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
    event FeedbackRevoked(uint256 indexed agentId, address indexed clientAddress, uint64 indexed feedbackIndex);

    constructor(address identityRegistry) {
        identity = IdentityRegistry(identityRegistry);
    }

    function getVersion() external pure returns (string memory) {
        return "2.0.0";
    }

    function getIdentityRegistry() external view returns (address) {
        return address(identity);
    }

    function giveFeedback(
        uint256 agentId,
        int128 value,
        uint8 valueDecimals,
        string memory tag1,
        string memory tag2,
        string memory endpoint,
        string memory feedbackURI,
        bytes32 feedbackHash
    ) external {
        // (memory, not calldata: five calldata strings would not fit the stack; same selector)
        require(!identity.isAuthorizedOrOwner(msg.sender, agentId), "Self-feedback not allowed");
        require(valueDecimals <= 18, "valueDecimals > 18");
        require(value <= 1e38 && value >= -1e38, "value out of range");
        Feedback[] storage list = feedback[agentId][msg.sender];
        list.push(Feedback(value, valueDecimals, tag1, tag2, false));
        emit NewFeedback(
            agentId, msg.sender, uint64(list.length), value, valueDecimals, tag1, tag1, tag2, endpoint, feedbackURI, feedbackHash
        );
    }

    function revokeFeedback(uint256 agentId, uint64 feedbackIndex) external {
        Feedback[] storage list = feedback[agentId][msg.sender];
        require(feedbackIndex >= 1 && feedbackIndex <= list.length, "no such feedback");
        list[feedbackIndex - 1].isRevoked = true;
        emit FeedbackRevoked(agentId, msg.sender, feedbackIndex);
    }

    function getLastIndex(uint256 agentId, address clientAddress) external view returns (uint64) {
        return uint64(feedback[agentId][clientAddress].length);
    }

    function readFeedback(uint256 agentId, address clientAddress, uint64 feedbackIndex)
        external
        view
        returns (int128 value, uint8 valueDecimals, string memory tag1, string memory tag2, bool isRevoked)
    {
        Feedback[] storage list = feedback[agentId][clientAddress];
        require(feedbackIndex >= 1 && feedbackIndex <= list.length, "no such feedback");
        Feedback storage f = list[feedbackIndex - 1];
        return (f.value, f.valueDecimals, f.tag1, f.tag2, f.isRevoked);
    }

    function matches(Feedback storage f, string calldata tag1, string calldata tag2) private view returns (bool) {
        return (bytes(tag1).length == 0 || keccak256(bytes(f.tag1)) == keccak256(bytes(tag1)))
            && (bytes(tag2).length == 0 || keccak256(bytes(f.tag2)) == keccak256(bytes(tag2)));
    }

    /// The mean of the matching, unrevoked feedback of `clientAddresses` (at least one: whose
    /// feedback to trust is the caller's choice), at the largest decimals among them.
    function getSummary(uint256 agentId, address[] calldata clientAddresses, string calldata tag1, string calldata tag2)
        external
        view
        returns (uint64 count, int128 summaryValue, uint8 summaryValueDecimals)
    {
        require(clientAddresses.length > 0, "clientAddresses required");
        for (uint256 c = 0; c < clientAddresses.length; c++) {
            Feedback[] storage list = feedback[agentId][clientAddresses[c]];
            for (uint256 i = 0; i < list.length; i++) {
                if (!list[i].isRevoked && matches(list[i], tag1, tag2) && list[i].valueDecimals > summaryValueDecimals) {
                    summaryValueDecimals = list[i].valueDecimals;
                }
            }
        }
        int256 sum = 0;
        for (uint256 c = 0; c < clientAddresses.length; c++) {
            Feedback[] storage list = feedback[agentId][clientAddresses[c]];
            for (uint256 i = 0; i < list.length; i++) {
                Feedback storage f = list[i];
                if (f.isRevoked || !matches(f, tag1, tag2)) continue;
                sum += int256(f.value) * int256(10 ** uint256(summaryValueDecimals - f.valueDecimals));
                count++;
            }
        }
        if (count > 0) {
            int256 mean = sum / int256(uint256(count));
            require(mean <= type(int128).max && mean >= type(int128).min, "summary out of range");
            summaryValue = int128(mean);
        }
    }

    function readAllFeedback(
        uint256 agentId,
        address[] calldata clientAddresses,
        string calldata tag1,
        string calldata tag2,
        bool includeRevoked
    )
        external
        view
        returns (
            address[] memory clients,
            uint64[] memory feedbackIndexes,
            int128[] memory values,
            uint8[] memory valueDecimals,
            string[] memory tag1s,
            string[] memory tag2s,
            bool[] memory revokedStatuses
        )
    {
        uint256 n = 0;
        for (uint256 c = 0; c < clientAddresses.length; c++) {
            Feedback[] storage list = feedback[agentId][clientAddresses[c]];
            for (uint256 i = 0; i < list.length; i++) {
                if ((includeRevoked || !list[i].isRevoked) && matches(list[i], tag1, tag2)) n++;
            }
        }
        clients = new address[](n);
        feedbackIndexes = new uint64[](n);
        values = new int128[](n);
        valueDecimals = new uint8[](n);
        tag1s = new string[](n);
        tag2s = new string[](n);
        revokedStatuses = new bool[](n);
        uint256 k = 0;
        for (uint256 c = 0; c < clientAddresses.length; c++) {
            Feedback[] storage list = feedback[agentId][clientAddresses[c]];
            for (uint256 i = 0; i < list.length; i++) {
                Feedback storage f = list[i];
                if (!((includeRevoked || !f.isRevoked) && matches(f, tag1, tag2))) continue;
                clients[k] = clientAddresses[c];
                feedbackIndexes[k] = uint64(i + 1);
                values[k] = f.value;
                valueDecimals[k] = f.valueDecimals;
                tag1s[k] = f.tag1;
                tag2s[k] = f.tag2;
                revokedStatuses[k] = f.isRevoked;
                k++;
            }
        }
    }
}
