#!/bin/bash
# Follows docs/getting-started.md word for word in a fresh clone and a brand-new virtual environment.
set -x
cd /tmp/venv-docs && rm -rf excite && git clone -q /work/main excite && cd excite
git log --oneline -1
uptime
T0=$(date +%s)
python3 -m venv .venv
. .venv/bin/activate
python3 -m pip install torch==2.13.0 -e . > pip.log 2>&1; echo "pip rc $?"; tail -2 pip.log
T1=$(date +%s); echo "install_s $((T1-T0))"
which excite python3
excite --version
excite list attention
uptime; T2=$(date +%s)
python3 -m excite demo --quick
T3=$(date +%s); echo "quick_s $((T3-T2))"; uptime
excite train --model resnet20 --attention eca --epochs 1 --subset 256 --out runs/first --no-progress
ls runs/first
excite eval runs/first/best.safetensors
excite profile runs/first/best.safetensors --depth 0 | head -3
python3 - <<'PY'
import torch

import excite
from excite.data import load_dataset, normalize

model = excite.load_model("runs/first/best.safetensors")
model.eval()
_, test = load_dataset("digits")
with torch.no_grad():
    x = normalize(test.images[:4], test.mean, test.std)
    print(model(x).argmax(1).shape)
print(excite.list_attention())
PY
uptime; T4=$(date +%s)
python3 -m excite demo
T5=$(date +%s); echo "demo_s $((T5-T4))"; uptime
cat /proc/cpuinfo | grep "model name" | head -1; nproc; python3 -c "import torch, sys; print(torch.__version__, sys.version)"
