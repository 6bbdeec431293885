"""Device placement: which device (map) each frozen LLM loads on.

`place` is a pure function of sizes, so it is unit-tested for 0, 1, 2 and 4 GPUs without one:

- no GPU: everything on "cpu";
- one GPU: every model that still fits on cuda:0, in order (students, then teachers), else
  "auto" (accelerate shards it over the GPU and CPU RAM);
- several GPUs: the students one per GPU in slot order (llama cuda:0, qwen cuda:1), then the
  teachers on the following GPUs (cuda:2, cuda:3, ..., wrapping round); a model that does not
  fit the GPU it is given gets "auto" (sharded over all GPUs by accelerate);
- an override (a slot's `models.<slot>.device_map`, a teacher's own `device_map`, or
  `teacher_device_map.<slot>`) always wins and takes no budget.

The plan is conservative: it counts every model as resident at once, although the KD stage
loads only one slot's teachers and the curriculum only the students.

`resolve` is the impure wrapper used by the stages: it fills the null `device_map`s of a
`Params` ("auto placement") from `torch.cuda` and the models' configs. A planned "cpu" is left
as null (plain CPU loading, exactly as before); with no GPU and no teacher_device_map it
returns the params unchanged.
"""
from __future__ import annotations

import copy
import os

import torch

from .config import ModelConfig, Params, teachers_of

HEADROOM = 0.85  # share of a GPU's free memory the weights may take (activations, KV cache)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def teacher_name(slot: str, i: int) -> str:
    return f"{slot}.teacher{i}"  # as kd.build_slot names them


def place(models: dict[str, int], teachers: dict[str, list[int]], gpus: list[int],
          overrides: dict[str, str] | None = None, headroom: float = HEADROOM,
          gpu_ids: list[int] | None = None) -> dict[str, str]:
    """Device map per model name.

    models: student slot -> weight bytes, in slot order; teachers: slot -> the bytes of each
    teacher (named `<slot>.teacher<i>`); gpus: free bytes per GPU; overrides: name -> device
    map that wins; gpu_ids: the CUDA index of each entry of `gpus` (default 0, 1, ...; a
    data-parallel rank passes its own GPU).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    ids = list(range(len(gpus))) if gpu_ids is None else list(gpu_ids)
    names = list(models) + [teacher_name(s, i) for s, ts in teachers.items() for i in range(len(ts))]
    size = {**models, **{teacher_name(s, i): b for s, ts in teachers.items() for i, b in enumerate(ts)}}
    free = [g * headroom for g in gpus]
    plan = {}
    for n, name in enumerate(names):  # the n-th model goes to GPU n mod len(gpus)
        if name in overrides:
            continue
        if not gpus:
            plan[name] = "cpu"
            continue
        g = n % len(gpus)
        if size[name] <= free[g]:
            free[g] -= size[name]
            plan[name] = f"cuda:{ids[g]}"
        else:
            plan[name] = "auto"
    return {name: overrides.get(name, plan.get(name)) for name in names}


# ---------------------------------------------------------------- the impure side

def model_bytes(cfg: ModelConfig, cache_dir: str | None = None) -> int:
    """Weight bytes at cfg.dtype, from the model's config on the meta device (nothing loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .llm import model_folder
    config = AutoConfig.from_pretrained(model_folder(cfg, cache_dir))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()) * DTYPE_BYTES[cfg.dtype]


def local_gpus() -> tuple[list[int], list[int]]:
    """(free bytes, CUDA index) of the GPUs this process may use: all of them in a single
    process, only its own (LOCAL_RANK) under `accelerate launch`."""
    n = torch.cuda.device_count()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ids = [int(os.environ.get("LOCAL_RANK", "0")) % max(n, 1)] if world > 1 and n else list(range(n))
    return [torch.cuda.mem_get_info(i)[0] for i in ids], ids


def resolve(params: Params, students: bool = True, teachers: bool = False) -> Params:
    """A copy of params whose null device_maps are filled by `place` (auto placement).
    Explicit device maps (models.<slot>.device_map, a teacher's device_map,
    teacher_device_map.<slot>) are kept. No GPU: params are returned unchanged."""
    gpus = torch.cuda.device_count() > 0
    if not gpus and not (teachers and params.teacher_device_map):
        return params
    free, ids = local_gpus()
    out = copy.deepcopy(params)
    size = (lambda cfg: model_bytes(cfg, params.cache_dir)) if gpus else (lambda cfg: 0)
    sizes = {s: size(c) for s, c in out.models.items()} if students else {}
    tsizes = {s: [size(t) for t in teachers_of(out, s)] for s in out.models} if teachers else {}
    overrides = {s: c.device_map for s, c in out.models.items()}
    for s in tsizes:
        for i, t in enumerate(teachers_of(out, s)):
            overrides[teacher_name(s, i)] = t.device_map or out.teacher_device_map.get(s)
    plan = {name: None if where == "cpu" else where  # "cpu": plain loading, no device map
            for name, where in place(sizes, tsizes, free, overrides, gpu_ids=ids).items()}
    for s, c in out.models.items():
        if students:
            c.device_map = plan[s]
    for s in tsizes:
        # teachers_of returns the student's own config when teachers.<slot> is empty: copy it
        # into teachers.<slot> so the student slot keeps its own placement
        out.teachers[s] = [copy.copy(t) for t in teachers_of(out, s)]
        for i, t in enumerate(out.teachers[s]):
            t.device_map = plan[teacher_name(s, i)]
    return out


def describe(params: Params, llms: dict | None = None) -> dict:
    """The placement for the metrics: the device map asked for and where each model is."""
    out = {s: {"device_map": c.device_map or "cpu"} for s, c in params.models.items()}
    for s, llm in (llms or {}).items():
        out[s]["device"] = str(llm.device)
    return out
