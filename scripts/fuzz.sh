#!/usr/bin/env bash
# `make fuzz`: runs each cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 60), seeded from real
# files: the test images and manifests of target/fixtures and the AWS sample events that ship in
# the aws_lambda_events crate. Uses the nightly toolchain when rustup has one, else stable with
# RUSTC_BOOTSTRAP=1 (libFuzzer's instrumentation flags are unstable, the code is not). Installs
# cargo-fuzz into target/tools if it is missing. Exits non-zero if any target found a crash;
# the input is then in fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> <file>).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
targets=(${FUZZ_TARGETS:-image manifest event})
tools=$PWD/target/tools
export PATH=$tools/bin:$PATH

if rustup run nightly rustc --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
else
    echo "fuzz: no nightly toolchain, using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --root "$tools"
fi

# Seed corpora, rebuilt on every run from the files they come from.
seeds=target/fuzz/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{image,manifest,event}
find target/fixtures/images -type f -size -256k -exec cp {} "$seeds/image/" \;
for manifest in target/fixtures/models/*/manifest.json; do
    cp "$manifest" "$seeds/manifest/$(basename "$(dirname "$manifest")").json"
done
events=$(cargo metadata --format-version 1 | python3 -c '
import json, sys
meta = json.load(sys.stdin)
print(next(p for p in meta["packages"] if p["name"] == "aws_lambda_events")["manifest_path"])')
cp "$(dirname "$events")"/src/fixtures/example-{apigw,alb}*.json "$seeds/event/"
pixel=$(base64 -w0 target/fixtures/images/one_pixel.png)
echo "{\"image\": \"$pixel\", \"top_k\": 2}" >"$seeds/event/direct-image.json"
echo "{\"model\": \"tiny\", \"images\": [\"$pixel\", \"$pixel\"]}" >"$seeds/event/direct-images.json"
echo '{"model": "tensor", "tensor": {"shape": [1, 4], "data": [1, 2.5, -3e38, 0]}}' \
    >"$seeds/event/direct-tensor.json"

"${cargo[@]}" fuzz build -O
failed=()
for target in "${targets[@]}"; do
    corpus=target/fuzz/corpus/$target
    mkdir -p "$corpus"
    echo "fuzz: $target for ${seconds}s"
    if ! "${cargo[@]}" fuzz run -O "$target" "$corpus" "$seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
        -print_final_stats=1 2>&1 | tee "target/fuzz/$target.log" | grep -E '^(Done|INFO: seed|==|SUMMARY|.*panicked)'; then
        :
    fi
    if ! grep -qE '^Done [0-9]+ runs' "target/fuzz/$target.log"; then
        failed+=("$target")
    fi
done
for target in "${targets[@]}"; do
    stats=$(grep -E '^stat::(number_of_executed_units|new_units_added)' "target/fuzz/$target.log" |
        sed 's/stat:://' | tr '\n' ' ' || true)
    echo "fuzz: $target: $stats"
done
if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/, logs in target/fuzz/)" >&2
    exit 1
fi
echo "fuzz: no crash in ${#targets[@]} targets x ${seconds}s"
