"""What changes a CPU training run's numbers: 30 AdamW steps of the demo model (TinyNet-E,
128 px, batch 16) on fixed random inputs, in a fresh process per setting, printing the loss
after 30 steps and the sum of all weights (equal to the last digit only when every kernel
rounded the same way).

    python benchmarks/bench_repro.py

Settings: torch's thread count; ATen's own vectorised kernels (``ATEN_CPU_CAPABILITY``:
reductions in batch norm, softmax, the loss and the optimizer); oneDNN's convolution kernels
(``ONEDNN_MAX_CPU_ISA``); MKL's matrix products (``MKL_CBWR``). Each one this machine can switch
shows whether it matters; a CPU without AVX-512 cannot show the AVX-512 rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _common import machine

SETTINGS = [
    ("the demo's pins (2 threads, AVX2 everywhere)", {}),
    ("the same, again", {}),
    ("1 thread", {"THREADS": "1"}),
    ("ATen kernels without SIMD (ATEN_CPU_CAPABILITY=default)", {"ATEN_CPU_CAPABILITY": "default"}),
    ("oneDNN limited to SSE4.1 (ONEDNN_MAX_CPU_ISA=SSE41)", {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
    ("MKL in its compatible mode (MKL_CBWR=COMPATIBLE)", {"MKL_CBWR": "COMPATIBLE"}),
]
PINS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def child() -> None:
    import torch

    from ichdet.models.slice_cnn import ModelConfig, build_model

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tinynet_e", in_chans=3))
    x = torch.rand(16, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    y = (torch.rand(16, 6, generator=torch.Generator().manual_seed(2)) > 0.8).float()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    total = float(sum(p.double().sum() for p in model.parameters()))
    capability = torch.backends.cpu.get_cpu_capability()
    print(json.dumps({"first": first, "last": float(loss), "sum": total, "aten": capability}))


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        child()
        return
    print(f"machine: {machine()}")
    print("| setting | ATen kernels | first loss | loss after 30 | weight sum |")
    print("|---|---|---|---|---|")
    for name, extra in SETTINGS:
        env = {**os.environ, **PINS, **extra}
        out = subprocess.run(
            [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True
        )
        if out.returncode != 0:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1]} | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['aten']} | {r['first']:.10f} | {r['last']:.6e} | {r['sum']:.10f} |")


if __name__ == "__main__":
    main()
