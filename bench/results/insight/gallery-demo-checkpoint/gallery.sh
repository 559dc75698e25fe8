#!/usr/bin/env bash
set -x
cd "$(dirname "$0")/../../../.."   # the repository root
G=.venv/bin/googlenet; C=runs/demo/checkpoint_last.pt; D=docs/gallery; L=bench/out/gallery-logs; mkdir -p $L
.venv/bin/python - <<'PY'
import torch
from torchvision.io import encode_png
from torchvision.transforms.v2 import functional as TF
from googlenet.data import load_fashion_mnist
x, y = load_fashion_mnist("test")
for i in (0, 1, 2, 13):  # ankle boot, pullover, trouser, dress
    img = TF.resize(x[i].unsqueeze(0), [256], antialias=True).expand(3, -1, -1).contiguous()
    open(f"docs/gallery/input-{i}.png", "wb").write(encode_png(img).numpy().tobytes())
PY
/usr/bin/time -f "%e s wall" $G dream $D/input-0.png --checkpoint $C --layer inception4c --out $D/dream-inception4c.png > $L/dream.log 2>&1
/usr/bin/time -f "%e s wall" $G visualize --checkpoint $C --layer inception4a --channels 0-15 --out $D/visualize-inception4a.png > $L/visualize.log 2>&1
for i in 0 1 2 13; do
  /usr/bin/time -f "%e s wall" $G explain $D/input-$i.png --checkpoint $C --method gradcam --layer inception3b --out $D/explain-gradcam-$i.png > $L/explain-$i.log 2>&1
done
/usr/bin/time -f "%e s wall" $G explain $D/input-13.png --checkpoint $C --method integrated-gradients --out $D/explain-ig-13.png > $L/explain-ig-13.log 2>&1
echo DONE
