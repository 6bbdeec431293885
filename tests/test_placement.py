"""placement.place: a pure plan for 0, 1, 2 and 4 GPUs; overrides win; CPU loading unchanged."""
import torch

from latentwire import placement
from latentwire.config import ModelConfig, Params
from latentwire.placement import place

GB = 1 << 30
STUDENTS = {"llama": 16 * GB, "qwen": 15 * GB}           # two 8B students in bf16
TEACHERS = {"llama": [40 * GB], "qwen": [30 * GB]}       # one teacher per slot
H100 = 80 * GB


def test_no_gpu_puts_everything_on_cpu():
    plan = place(STUDENTS, TEACHERS, [])
    assert plan == {"llama": "cpu", "qwen": "cpu", "llama.teacher0": "cpu", "qwen.teacher0": "cpu"}


def test_one_gpu_takes_what_fits_then_auto():
    plan = place(STUDENTS, TEACHERS, [H100])  # 68 GB usable: 16 + 15 + 30 fit, the 40 does not
    assert plan == {"llama": "cuda:0", "qwen": "cuda:0", "llama.teacher0": "auto",
                    "qwen.teacher0": "cuda:0"}
    assert set(place(STUDENTS, {}, [H100]).values()) == {"cuda:0"}
    assert place({"big": 200 * GB}, {}, [H100]) == {"big": "auto"}   # larger than the GPU


def test_two_gpus_one_student_each_and_teachers_wrap():
    plan = place(STUDENTS, TEACHERS, [H100, H100])
    assert plan == {"llama": "cuda:0", "qwen": "cuda:1", "llama.teacher0": "cuda:0",
                    "qwen.teacher0": "cuda:1"}
    # the second GPU is nearly full: its teacher is sharded by accelerate instead
    plan = place(STUDENTS, TEACHERS, [H100, 40 * GB])
    assert plan["qwen"] == "cuda:1" and plan["qwen.teacher0"] == "auto"


def test_four_gpus_students_then_teachers_on_the_following_gpus():
    teachers = {"llama": [60 * GB, 20 * GB], "qwen": [140 * GB]}
    plan = place(STUDENTS, teachers, [H100] * 4)
    assert plan == {"llama": "cuda:0", "qwen": "cuda:1", "llama.teacher0": "cuda:2",
                    "llama.teacher1": "cuda:3", "qwen.teacher0": "auto"}  # 140 GB > one H100
    # a data-parallel rank plans on its own GPU only
    assert place(STUDENTS, {}, [H100], gpu_ids=[3]) == {"llama": "cuda:3", "qwen": "cuda:3"}


def test_overrides_always_win():
    overrides = {"llama": "cuda:3", "qwen": None, "qwen.teacher0": "cpu"}
    plan = place(STUDENTS, TEACHERS, [H100] * 4, overrides)
    assert plan == {"llama": "cuda:3", "qwen": "cuda:1", "llama.teacher0": "cuda:2",
                    "qwen.teacher0": "cpu"}
    assert place(STUDENTS, {}, [], {"qwen": "auto"}) == {"llama": "cpu", "qwen": "auto"}


def test_resolve_leaves_cpu_loading_unchanged(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    params = Params(models={"llama": ModelConfig(source="hub", hub_id="x/y")})
    assert placement.resolve(params, teachers=True) is params
    assert params.models["llama"].device_map is None


def test_resolve_fills_null_device_maps_from_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (H100, H100))
    sizes = {"a/llama": 16 * GB, "a/qwen": 15 * GB, "a/big": 30 * GB}
    monkeypatch.setattr(placement, "model_bytes", lambda cfg, cache_dir=None: sizes[cfg.hub_id])
    params = Params(models={"llama": ModelConfig(hub_id="a/llama"),
                            "qwen": ModelConfig(hub_id="a/qwen", device_map="cuda:0")},
                    teachers={"llama": [ModelConfig(hub_id="a/big")]},
                    teacher_device_map={"llama": "cuda:1"})
    out = placement.resolve(params, teachers=True)
    assert out.models["llama"].device_map == "cuda:0" and out.models["qwen"].device_map == "cuda:0"
    assert out.teachers["llama"][0].device_map == "cuda:1"               # teacher_device_map
    assert out.teachers["qwen"][0].device_map == "cuda:0"                # the student itself
    assert params.models["llama"].device_map is None                     # the input is untouched
    params.teacher_device_map = {}
    assert placement.resolve(params, teachers=True).teachers["llama"][0].device_map == "cuda:0"
