"""Typed, validated params: `params.yaml` -> nested dataclasses.

Every section of params.yaml maps to one dataclass below. Loading rejects unknown
keys and wrong types with a message that names the file and the dotted key, so a
typo in `dvc exp run -S` fails loudly instead of being silently ignored.

A little over 300 lines: one dataclass per params.yaml section, and the loader that builds
them all; each default here equals params.yaml's (tests/test_config.py).
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A params file that does not match the schema below."""


@dataclass
class DatasetConfig:
    """One QA source. `format: auto` sniffs the official/hub/sample layouts."""
    source: str = "local"            # local | hub
    path: str = ""                   # relative to data.root (local)
    train_path: str = ""             # a train-only file (local, format sniffed): with it, `path` is eval-only
    hub_train_split: str = ""        # the same for source hub: a train-only split
    format: str = "auto"             # auto | squad | hotpot | hotpot-sample | nq-oracle
    hub_id: str = ""                 # datasets.load_dataset id (source: hub)
    hub_config: str | None = None
    hub_split: str = "validation"
    weight: float = 1.0              # share of the train mix
    max_eval: int = 100              # cap on eval examples (deterministic sample)
    min_train_pool: int = 500        # below this many examples the dataset is eval-only
    distractors: int = 0             # HotpotQA: distractor paragraphs added to the gold ones
    train_distractors: int = 0       # the same for the train-only source
    max_context_chars: int | None = None  # this dataset's answer-blind cap (null: data.max_context_chars)
    M: int | None = None             # this dataset's eval slots / positions (null: stage3.M)

    def __post_init__(self):
        _choice("source", self.source, ("local", "hub"))
        _choice("format", self.format, ("auto", "squad", "hotpot", "hotpot-sample", "nq-oracle"))
        if self.weight < 0 or self.max_eval < 0 or self.distractors < 0 or self.train_distractors < 0:
            raise ConfigError("weight, max_eval, distractors and train_distractors must be >= 0")
        if self.max_context_chars is not None and self.max_context_chars < 64:
            raise ConfigError("max_context_chars must be >= 64")
        if self.M is not None and not 1 <= self.M <= 255:
            raise ConfigError("M must be in [1, 255] (one byte of the payload header)")


@dataclass
class DataConfig:
    root: str = "../shared/data"     # env LATENTWIRE_DATA overrides
    eval_fraction: float = 0.2       # share of titles held out for eval (split by title hash)
    train_examples: int = 112        # size of the train mix, split by weight
    max_context_chars: int = 2000    # answer-blind cap: whole paragraphs from the start, then a sentence end
    pick_pool: int = 20000           # train-split examples (never an eval title) to fit the pick on
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError("data.eval_fraction must be in (0, 1)")
        if self.max_context_chars < 64:
            raise ConfigError("data.max_context_chars must be >= 64")

    def resolved_root(self, base: Path | None = None) -> Path:
        root = Path(os.environ.get("LATENTWIRE_DATA") or self.root)
        return root if root.is_absolute() else (base or Path.cwd()) / root


@dataclass
class GGUFPart:
    package: str                     # the PyPI distribution's top-level import name
    file: str                        # path inside that package


@dataclass
class ModelConfig:
    """A frozen LLM slot. `source` picks how `path`/`hub_id`/`gguf` are read."""
    source: str = "hub"              # hub | local | gguf-pypi
    hub_id: str = ""                 # HF hub id (source: hub); also a display name
    path: str = ""                   # HF folder (source: local)
    gguf: list[GGUFPart] = field(default_factory=list)   # parts, concatenated in order
    gguf_sha256: str = ""
    dtype: str = "float32"           # float32 | bfloat16 | float16
    device_map: str | None = None    # null: cpu, or "auto" / "cuda:0" ...

    def __post_init__(self):
        _choice("source", self.source, ("hub", "local", "gguf-pypi"))
        _choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if self.source == "gguf-pypi" and not (self.gguf and self.gguf_sha256):
            raise ConfigError("source gguf-pypi needs gguf parts and gguf_sha256")
        if self.source == "local" and not self.path:
            raise ConfigError("source local needs path")
        if self.source == "hub" and not self.hub_id:
            raise ConfigError("source hub needs hub_id")


@dataclass
class PromptConfig:
    """One template for every model and stage; see llm.PromptTemplate."""
    instruction: str = "Answer the question with a short span copied from the context."
    example_context: str = ("The Eiffel Tower was completed in 1889 and stands on the Champ de Mars "
                            "in Paris.")     # one-shot example (empty: zero-shot)
    example_question: str = "When was the Eiffel Tower completed?"
    example_answer: str = "1889"
    use_chat_template: bool = True


@dataclass
class EncoderConfig:
    """The sender: which one, nothing else. Its own knobs sit in the section named after it
    (`ids` or `bytes`), so that dvc.yaml declares exactly that section (`${encoder.kind}`) and a
    knob of the other sender reruns nothing."""
    kind: str = "ids"                # ids (ids.py, sender.py, pick.py) | bytes (encoder.py)

    def __post_init__(self):
        _choice("kind", self.kind, ("ids", "bytes"))


@dataclass
class IdsConfig:
    """encoder.kind ids: picked context tokens sent as 16-bit ids of a codebook (the pick has its
    own section, `pick`; the receivers' adapters are trained under `train`)."""
    feature_model: str = "llama"     # the model slot whose tokenizer is the codebook (its embeddings feed the pick)
    rating_edges: list[float] = field(default_factory=list)  # the rating channel (off: []): each id also
                                     # carries the pick's answer probability as a bucket cut at these edges
                                     # (3 edges: 2 bits an id), read through a learned embedding per bucket
    keep: int | None = None          # variable-rate slots (off: null, one picked token a position): the pick's
                                     # `keep` best-rated picked tokens keep a position each, the other picked
                                     # tokens go in adjacent pairs inside their span, one position a pair read
                                     # through each receiver's learned pooler (pooler.py); payload kind paired ids
    pooler_steps: int = 400          # ids.keep: stage1 first fits each receiver's pooler, this many steps of
    pooler_rows: int = 1000          # train.batch_size on this many rows of the pick's train-split pool, to the
    pooler_layers: int = 6           # receiver's own states at this layer over the same tokens one a position

    def __post_init__(self):
        e = self.rating_edges
        if any(not 0.0 < x < 1.0 for x in e) or any(a >= b for a, b in zip(e, e[1:])) or len(e) > 255:
            raise ConfigError(f"ids.rating_edges: at most 255 increasing probabilities in (0, 1), not {e}")
        if self.keep is not None and (self.keep < 0 or e):
            raise ConfigError(f"ids.keep: a count >= 0 (or null), and not with ids.rating_edges, not {self.keep}")
        if self.pooler_steps < 0 or self.pooler_rows < 1 or self.pooler_layers < 1:
            raise ConfigError("ids: pooler_steps >= 0, pooler_rows and pooler_layers >= 1")

    @property
    def rating_bits(self) -> int:
        """Bits an id's rating bucket takes on the wire (0: the channel is off)."""
        return (len(self.rating_edges)).bit_length()


@dataclass
class BytesConfig:
    """encoder.kind bytes: the seed's byte encoder (the context's UTF-8 bytes -> transformer ->
    gated residual pooling -> Z), its continuous codes on the wire (payload kind values) and the
    knobs of its training."""
    d_z: int = 512                   # encoder width
    layers: int = 6                  # transformer layers before pooling
    heads: int = 4
    max_bytes: int = 768             # longer contexts are cut (the count is in metrics)
    dropout: float = 0.0
    hint_buckets: int = 8            # answer-length hint classes, one byte in the header
    d_wire: int = 16                 # values per slot on the wire
    bits: int = 4                    # precision: 16 (fp16), 8 or 4 (ints with one fp16 scale per group)
    group_size: int = 32             # values sharing one scale
    shared_fraction: float = 1.0     # S / M; P = M - S private slots per model
    qat: bool = True                 # train through the wire's quantisation (straight-through)
    hint_weight: float = 0.1         # loss weight of the answer-length hint head
    diversity_weight: float = 0.0    # weight of the mean pairwise cosine of Z across the batch

    def __post_init__(self):
        _choice("bits", self.bits, (16, 8, 4))
        if self.d_wire < 1 or self.group_size < 1 or not 0.0 <= self.shared_fraction <= 1.0:
            raise ConfigError("d_wire, group_size >= 1 and 0 <= shared_fraction <= 1")
        if self.d_z % self.heads:
            raise ConfigError("bytes.d_z must be divisible by bytes.heads")
        if not 1 <= self.hint_buckets <= 256:
            raise ConfigError("bytes.hint_buckets must be in [1, 256] (one uint8 on the wire)")


# Keys that moved into the section of the sender that reads them (a params.yaml from before
# this layout is answered with where each key lives now).
MOVED = {"wire": "bytes", "encoder.feature_model": "ids.feature_model", "encoder.adapter_rank": "train.adapter_rank",
         **{f"encoder.{k}": f"bytes.{k}" for k in ("d_z", "layers", "heads", "max_bytes", "dropout", "hint_buckets")},
         **{f"train.{k}": f"bytes.{k}" for k in ("qat", "hint_weight", "diversity_weight")}}


@dataclass
class PickConfig:
    """encoder.kind ids: the sender's pick (pick.py), fitted by the `pick` stage."""
    spans: list[int] = field(default_factory=lambda: [24])  # candidate least span widths (tokens around
                                     # a best-rated token and its run); the stage keeps the best recall on
                                     # its held-out tenth (bench/pick_reader.py: a reader prefers wide ones)
    hidden: int = 64                 # the pick GRU's width
    epochs: int = 6                  # passes over the pool's windows
    lr: float = 6e-3                 # AdamW learning rate of the pick's fit
    batch_size: int = 128            # windows per step of the pick's fit
    max_tokens: int = 2048           # longer contexts are read up to this many sender tokens
    dev_M: int = 32                  # positions at which the held-out tenth of the pool chooses how
                                     # the pick spends them (span, run margin, support weight, coverage)
    members: int = 2                 # fits from seeds seed, seed + 1, ...; a token's rating is their mean
    ema: float = 0.99                # each fit keeps this moving average of its weights per step (0: the last)
    whole_words: bool = False        # spans start and end between words (pick.spans_for); off: anywhere

    def __post_init__(self):
        if not self.spans or min(self.spans) < 1 or self.hidden < 1 or self.epochs < 1 or self.max_tokens < 1 \
                or self.dev_M < 1 or self.members < 1:
            raise ConfigError("pick: spans (non-empty), hidden, epochs, max_tokens, dev_M and members must be >= 1")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"pick.ema: a decay in [0, 1), not {self.ema}")


@dataclass
class KDConfig:
    """The teacher cache: top-k log-probs over the first K_max gold answer tokens."""
    k: int = 16
    K_max: int = 6
    tau: float = 1.0                 # KD temperature (applied to the k+1-bucket distribution)
    batch_size: int = 8
    batch_tokens: int | None = 1400  # at most this many prompt tokens a batch (rows x the longest); None: off

    def __post_init__(self):
        if self.batch_size < 1 or (self.batch_tokens is not None and self.batch_tokens < 1):
            raise ConfigError("kd: batch_size and batch_tokens must be >= 1 (batch_tokens: or null)")


@dataclass
class TrainConfig:
    """Settings shared by every curriculum stage."""
    lr: float = 1e-3
    receiver_lr: str = "shared"      # shared: every parameter at lr | embedding: each ids receiver's adapter at
                                     # lr x its embeddings' scale / the codebook model's (train.receiver_lrs)
    weight_decay: float = 0.01
    batch_size: int = 8
    grad_accum: int = 1
    warmup_frac: float = 0.1         # of the stage's optimiser steps
    dev_examples: int = 16           # held out of the train mix for adaptive K + best checkpoint
    eval_every: int = 12             # optimiser steps between dev evaluations
    save_every: int = 4              # optimiser steps between resumable checkpoints
    model_weights: dict[str, float] = field(default_factory=dict)  # loss weight per slot (default 1)
    K_thresholds: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5])  # acc -> K+1
    hard_negative: bool = True       # weight KD towards wrong first tokens + uncertain teachers
    adapter_rank: int = 64           # ids: rank of each TokenAdapter's learned correction
    max_steps: int | None = None     # cap on optimiser steps per stage (tests, smoke runs)
    deterministic: bool = False      # deterministic GPU kernels (slower; README "Determinism")

    def __post_init__(self):
        _choice("receiver_lr", self.receiver_lr, ("shared", "embedding"))


@dataclass
class StageConfig:
    M: int = 32                      # latent slots per model (S shared + P private)
    epochs: int = 1
    K: int = 2                       # first answer tokens in the loss; adaptive K ramps it to kd.K_max
    kd: float = 1.0                  # loss weights; 0 switches a loss off
    ce: float = 0.0
    slots: list[str] | None = None   # the model slots this stage trains (null: every one); the others
                                     # keep the previous stage's adapter and cost no forward pass
    pool_rows: int = 0               # + this many rows of data/mix/pool.jsonl's train part, CE only (no KD target)

    def __post_init__(self):
        if self.M < 1 or self.epochs < 0 or self.K < 1 or self.pool_rows < 0:
            raise ConfigError("M >= 1, K >= 1, epochs >= 0 and pool_rows >= 0")
        if self.slots is not None and not self.slots:
            raise ConfigError("slots: at least one model slot, or null for every one")
        if self.M > 255:
            raise ConfigError(f"M = {self.M}: at most 255 slots (the payload header stores n in one byte)")


@dataclass
class EvaluateConfig:
    max_new_tokens: int = 12
    batch_size: int = 32
    batch_tokens: int | None = 2800  # text prompts: at most this many tokens a batch (rows x the longest); None: off
    max_examples: int | None = None  # per dataset, on top of data.*.max_eval (tests use it)
    bootstrap: int = 2000            # paired bootstrap resamples for each CI
    prepack: bool = True             # CPU: linear weights reordered once at load (packed.py)

    def __post_init__(self):
        if self.batch_size < 1 or (self.batch_tokens is not None and self.batch_tokens < 1):
            raise ConfigError("evaluate: batch_size and batch_tokens must be >= 1 (batch_tokens: or null)")


@dataclass
class Params:
    seed: int = 0
    cache_dir: str | None = None     # converted GGUF models; null: $LATENTWIRE_CACHE or ~/.cache/latentwire
    data: DataConfig = field(default_factory=DataConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    ids: IdsConfig = field(default_factory=IdsConfig)
    bytes: BytesConfig = field(default_factory=BytesConfig)
    pick: PickConfig = field(default_factory=PickConfig)
    teachers: dict[str, list[ModelConfig]] = field(default_factory=dict)  # empty: the student itself
    # slot -> device map for all of that slot's teachers ("cuda:2", "auto"); a teacher's own
    # device_map wins; absent: auto placement (placement.py)
    teacher_device_map: dict[str, str] = field(default_factory=dict)
    kd: KDConfig = field(default_factory=KDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage1: StageConfig = field(default_factory=lambda: StageConfig(M=64, kd=1.0, ce=0.0, slots=["llama"]))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(M=48, kd=1.0, ce=1.0, slots=["llama"]))
    stage3: StageConfig = field(default_factory=lambda: StageConfig(M=32, K=6, kd=1.0, ce=1.0, slots=["llama"],
                                                                    pool_rows=1104))
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def positions(self, dataset: str | None, M: int | None = None) -> int:
        """A dataset's receiver positions: data.datasets.<name>.M where set, else M (default:
        stage3.M). The sender's pick, every baseline cut and the payload's limits use this."""
        d = self.data.datasets.get(dataset) if dataset is not None else None
        if d is not None and d.M is not None:
            return d.M
        return self.stage3.M if M is None else M

    def __post_init__(self):
        if not self.models:
            raise ConfigError("models: at least one model slot is needed")
        for key in ("teachers", "teacher_device_map"):
            for slot in getattr(self, key):
                if slot not in self.models:
                    raise ConfigError(f"{key}.{slot}: no such model slot {list(self.models)}")
        for name in ("stage1", "stage2", "stage3"):
            for slot in getattr(self, name).slots or []:
                if slot not in self.models:
                    raise ConfigError(f"{name}.slots: no such model slot {slot!r} {list(self.models)}")
        own_M = [n for n, d in self.data.datasets.items() if d.M is not None]
        if self.encoder.kind != "ids" and own_M:
            raise ConfigError(f"data.datasets.{own_M[0]}.M: a dataset's own M needs encoder.kind ids "
                              "(the byte encoder's queries are fixed at stage3.M)")
        if self.train.receiver_lr != "shared" and self.encoder.kind != "ids":
            raise ConfigError("train.receiver_lr: embedding scales the ids receivers' adapters (encoder.kind ids); "
                              "the byte encoder's adapters already rescale their output to each model's norm")
        if self.encoder.kind == "ids" and self.ids.feature_model not in self.models:
            raise ConfigError(f"ids.feature_model: no such model slot "
                              f"{self.ids.feature_model!r} {list(self.models)}")

    def trained_slots(self) -> list[str]:
        """The model slots some curriculum stage trains (in models' order): the ones that need a KD
        cache (teacher-kd-cache builds no other)."""
        named = [set(s.slots or self.models) for s in (self.stage1, self.stage2, self.stage3)]
        return [s for s in self.models if any(s in n for n in named)]

    def stage(self, name: str) -> StageConfig:
        if name not in ("stage1", "stage2", "stage3"):
            raise ConfigError(f"unknown curriculum stage {name!r}: expected stage1, stage2 or stage3")
        return getattr(self, name)


def sender_params(params: Params) -> dict:
    """encoder.kind and its own section (what dvc.yaml declares as ${encoder.kind}): the part of
    the params a stage that runs the sender depends on, e.g. in a resume key."""
    kind = params.encoder.kind
    return {"kind": kind, kind: dataclasses.asdict(getattr(params, kind))}


def teachers_of(params: Params, slot: str) -> list[ModelConfig]:
    """The teachers of model slot `slot`: teachers.<slot>, or the model itself."""
    return params.teachers.get(slot) or [params.models[slot]]


def _choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: expected one of {list(allowed)}")


def build(cls, raw, where: str):
    """Build dataclass `cls` from plain YAML data, naming `where` in every error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        dotted = [f"{where}.{k}".removeprefix("params.") for k in unknown]
        moved = [f"{k} is now {MOVED[k]}" for k in dotted if k in MOVED]
        raise ConfigError(f"{where}: unknown key(s) {[f'{where}.{k}' for k in unknown]}; "
                          f"known: {sorted(names)}" + (f" ({'; '.join(moved)})" if moved else ""))
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None


def _coerce(tp, value, where):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _coerce(tp, value, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read params: {e}") from None
    try:
        return build(Params, raw, "params")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
