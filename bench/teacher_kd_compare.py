"""Compare two qwen KD caches: the default (student as its own teacher) and a stronger teacher's.

    python bench/teacher_kd_compare.py PATH/TO/teacher/qwen.safetensors

Top-1 vs the gold answer tokens (teacher-forced) and the mean top-k entropy, per cache."""
import json, sys, torch
from safetensors.torch import load_file
from safetensors import safe_open
for name, path in (("student 0.5B (default)", "/work/main/data/kd/qwen.safetensors"), ("teacher 1.5B", sys.argv[1])):
    t = load_file(path)
    with safe_open(path, "pt") as f: meta = f.metadata()
    first = (t["top_idx"][:, 0, 0].long() == t["answer_ids"][:, 0]).float().mean().item()
    m = t["answer_mask"]
    tok = ((t["top_idx"][..., 0].long() == t["answer_ids"]) & m).sum().item() / m.sum().item()
    p = t["top_logp"].exp(); ent = -(p * t["top_logp"]).sum(-1)[m].mean().item()
    print(f"{name}: n={meta['n']} teacher_hash={meta.get('teacher_hash','')[:16]} top-1 = gold first token {first:.3f}, all answer tokens {tok:.3f}, top-k entropy {ent:.3f}")
