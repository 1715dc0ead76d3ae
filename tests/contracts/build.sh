#!/usr/bin/env bash
# Regenerates the checked-in ABI and bytecode of the test contracts with solc (npm package
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
