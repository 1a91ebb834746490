"""Where a Swin-T step spends its time, ours vs transformers': torch.profiler self CPU time grouped by op kind.

    python benchmarks/profile_step.py train    # forward + backward, batch 8, 224x224
    python benchmarks/profile_step.py infer

Each model is profiled twice (alternating) and the faster profile is kept, to dodge load spikes.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import build_models, logits_of  # noqa: E402

torch.set_num_threads(2)
mode = sys.argv[1]
models = build_models("swin-tiny-patch4-window7-224", with_timm=False)
x = torch.randn(8,3,224,224); y = torch.randint(0,1000,(8,))
cats = {"GEMM (mm/addmm/bmm/linear/conv)": ("aten::mm","aten::addmm","aten::bmm","aten::mkldnn_convolution","aten::convolution_backward","aten::_scaled_dot_product_flash_attention_for_cpu"),
        "copies/cat/index": ("aten::copy_","aten::cat","aten::index_select","aten::index_add_","aten::index","aten::fill_","aten::zero_","aten::clone"),
        "layer norm": ("aten::native_layer_norm","aten::native_layer_norm_backward"),
        "gelu": ("aten::gelu","aten::gelu_backward"),
        "softmax": ("aten::_softmax","aten::_softmax_backward_data")}
out = {}
for name in ["ours","transformers","ours","transformers"]:
    m = models[name]
    def step():
        if mode == "infer":
            with torch.inference_mode(): logits_of(m.eval(), x)
        else:
            m.train(); torch.nn.functional.cross_entropy(logits_of(m, x), y).backward()
    step()
    with torch.profiler.profile() as p: step()
    ev = p.key_averages(); total = sum(e.self_cpu_time_total for e in ev)
    row = {}
    for c, keys in cats.items(): row[c] = sum(e.self_cpu_time_total for e in ev if e.key in keys)
    row["other (elementwise add/mul/sum, ...)"] = total - sum(row.values()); row["total"] = total
    out.setdefault(name, []).append(row)
print(f"| category ({mode}, self CPU ms, best of 2) | ours | transformers |\n|---|---:|---:|")
for c in list(cats) + ["other (elementwise add/mul/sum, ...)", "total"]:
    o = min(out["ours"], key=lambda r: r["total"]); t = min(out["transformers"], key=lambda r: r["total"])
    print(f"| {c} | {o[c]/1e3:.0f} ({o[c]/o['total']:.0%}) | {t[c]/1e3:.0f} ({t[c]/t['total']:.0%}) |")
