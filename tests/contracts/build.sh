#!/usr/bin/env bash
# Regenerates the checked-in ABI and bytecode of the test contracts (the EIP-3009 token and the
# ERC-8004 v2 identity and reputation registries) with solc (npm package
# `solc`, pinned), installed under target/tools like anvil (see .ci/bootstrap):
#
#   tests/contracts/build.sh
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
tools="$root/target/tools"
SOLC_VERSION=0.8.37
if [ ! -x "$tools/node_modules/.bin/solcjs" ]; then
  mkdir -p "$tools"
  (cd "$tools" && npm install --no-audit --no-fund --silent "solc@$SOLC_VERSION")
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$tools/node_modules/.bin/solcjs" --optimize --abi --bin -o "$out" TestUSDC.sol
cp "$out/TestUSDC_sol_TestUSDC.abi" TestUSDC.abi.json
cp "$out/TestUSDC_sol_TestUSDC.bin" TestUSDC.bin
echo "built TestUSDC with solc $SOLC_VERSION: $(wc -c < TestUSDC.bin) hex chars of bytecode"
# The registries need the IR pipeline (viaIR: readAllFeedback's seven arrays do not fit the
# legacy code generator's stack), which solcjs takes through standard JSON only.
SOLC="$tools/node_modules/solc" node - <<'JS'
const solc = require(process.env.SOLC);
const fs = require("fs");
const file = "ERC8004Registries.sol";
const input = {
  language: "Solidity",
  sources: { [file]: { content: fs.readFileSync(file, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    viaIR: true,
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (out.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
for (const name of ["IdentityRegistry", "ReputationRegistry"]) {
  const c = out.contracts[file][name];
  fs.writeFileSync(name + ".abi.json", JSON.stringify(c.abi));
  fs.writeFileSync(name + ".bin", c.evm.bytecode.object);
  console.log("built " + name + " with solc " + solc.version() + ": " + c.evm.bytecode.object.length + " hex chars of bytecode");
}
JS
