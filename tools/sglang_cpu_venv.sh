#!/usr/bin/env bash
# Build a CPU-only venv in which SGLang 0.5.23's ServerArgs parser/resolution,
# `python -m sglang.launch_server --help` and `python -m sglang.bench_serving` run.
# Usage: bash tools/sglang_cpu_venv.sh [VENV_DIR]   (default /tmp/sgvenv)
set -euo pipefail
VENV=${1:-/tmp/sgvenv}
SG_WHEEL=${SG_WHEEL:-sglang==0.5.23}  # or a downloaded wheel file
CONS=$(mktemp /tmp/sg-constraints.XXXX.txt)
# Pins: torch stays the local CPU build; torchvision 0.28.0 is the release paired with
# torch 2.13 (a newer one pulls a CUDA torch 2.14/2.15 + nvidia-* wheels); the rest
# are sglang 0.5.23's own Requires-Dist pins.
cat > "$CONS" <<'EOF'
torch==2.13.0
torchvision==0.28.0
transformers==5.19.0
tokenizers==0.23.2
apache-tvm-ffi==0.1.11
compressed-tensors==0.18.0
sentencepiece==0.2.1
python-dateutil<3
EOF

rm -rf "$VENV"
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
# 1. CPU torch first (resolves to the local torch-2.13.0+cpu wheel)
"$PIP" install torch==2.13.0
# 2. sglang without its (CUDA) dependency tree, plus triton
"$PIP" install --no-deps "$SG_WHEEL" "triton~=3.8"
# 3. only the modules imported by sglang.srt.server_args, sglang.launch_server,
#    the resolution pipeline and sglang.bench_serving (found by import-and-retry)
"$PIP" install -c "$CONS" \
  numpy orjson psutil pybase64 requests packaging pillow starlette msgspec pydantic \
  pyzmq tqdm IPython aiohttp transformers datasets torchvision apache-tvm-ffi \
  sentencepiece compressed-tensors gguf
# 4. The PyPI torchvision wheel is a CUDA build: its _C.so cannot load against CPU
#    torch, and torchvision/_meta_registrations.py then dies on the unconditional
#    register_fake("torchvision::nms"/"qnms"). Guard those two like the others.
TV=$("$VENV/bin/python" -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")
sed -i -E 's|^@torch\.library\.register_fake\(("torchvision::[a-z_]+")\)$|@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))|' "$TV/_meta_registrations.py"
rm -f "$CONS"

# 5. smoke checks
"$VENV/bin/python" - <<'EOF'
import torch; assert not torch.cuda.is_available() and "+cpu" in torch.__version__, torch.__version__
import sglang.srt.server_args, sglang.launch_server, sglang.bench_serving, sglang.srt.arg_groups.pipeline
print("imports OK; torch", torch.__version__)
EOF
"$VENV/bin/python" -m sglang.launch_server --help >/dev/null 2>&1 && echo "launch_server --help OK"
"$VENV/bin/python" -m sglang.bench_serving --help >/dev/null 2>&1 && echo "bench_serving --help OK"
