#!/usr/bin/env bash
# The main job: build edgeml, then pack, sign, verify, inspect and run the
# three bundled models (digits through a PNG, Silero VAD through a WAV,
# SqueezeNet through a .npy tensor), and benchmark the digits bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --locked
edgeml="${CARGO_TARGET_DIR:-target}/release/edgeml"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
echo "== working in $work"
set -x
[ -f "$work/keys/publisher.key" ] || "$edgeml" keygen --out "$work/keys" --name publisher
"$edgeml" pack --model models/digits/digits.onnx --component image-classifier \
    --labels models/digits/labels.txt --preprocess models/digits/preprocess.json \
    --name digits --version 1.0.0 --out "$work/digits.wasm"
"$edgeml" sign "$work/digits.wasm" --key "$work/keys/publisher.key"
"$edgeml" verify "$work/digits.wasm" --trust "$work/keys/publisher.pub"
"$edgeml" inspect "$work/digits.wasm"
"$edgeml" run "$work/digits.wasm" --trust "$work/keys/publisher.pub" --input models/digits/holdout/000.png

"$edgeml" pack --model models/vad/silero_vad_16k.onnx --component voice-activity \
    --preprocess models/vad/preprocess.json --name silero-vad --version 5.0.0 --out "$work/vad.wasm"
"$edgeml" sign "$work/vad.wasm" --key "$work/keys/publisher.key"
"$edgeml" run "$work/vad.wasm" --trust "$work/keys/publisher.pub" --input models/vad/speech.wav --output-dir "$work/vad-out"

"$edgeml" pack --model models/squeezenet/squeezenet.onnx --name squeezenet --version 1.0.0 --out "$work/squeezenet.wasm"
"$edgeml" sign "$work/squeezenet.wasm" --key "$work/keys/publisher.key"
"$edgeml" run "$work/squeezenet.wasm" --trust "$work/keys/publisher.pub" \
    --input data_0=models/squeezenet/ref_input.npy --output-dir "$work/squeezenet-out"

"$edgeml" bench "$work/digits.wasm" --trust "$work/keys/publisher.pub" --input models/digits/holdout/000.png
