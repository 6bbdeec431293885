"""encoder.kind "tokens": the sender picks M prompt tokens and sends each as a learned code.

Pure learned latents collapse on a CPU budget (every input decodes to one answer: the
answer loss removes input dependence faster than it teaches content). This sender starts
useful instead, and the receivers read something close to text from step 0:

  1. read:   the feature model (models.<encoder.feature_model>, frozen) reads
             "<question part><context>" so every context token has seen the question;
  2. pick:   a learned scorer rates each context token as answer-bearing (trained on the
             gold answer's position, a dense signal) and a lexical prior adds 1 for tokens
             sharing a content word with the question; the M wire slots take the window of
             W context tokens with the highest sum, then the question part ("\nQuestion:
             ..."), in text order;
  3. code:   each picked token's frozen input embedding -> MLP -> d_wire values: the wire
             code, quantised like any latent (wire.bits, group scales);
  4. decode: each receiver's Adapter maps a code back into its own embedding space.

The codec (3 + 4) is warm-started before stage1 (`codec_warm_start`): every sender token
is mapped to the receiver embedding of the same string (several receiver tokens: their
mean), with a sampled softmax over the receiver's vocabulary. The curriculum then trains
the codec, scorer and adapters with KD + CE through the frozen receivers, and the scorer
with its own position loss (train.select_weight). The wire carries only codes: every slot
is shared by all receivers (use wire.shared_fraction: 1.0); the text never crosses it.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import EncoderConfig
from .llm import FrozenLLM

QUESTION = "\nQuestion: "
WORD = re.compile(r"\w+")
STOP = set("a an the of in on at to for by with from and or is are was were be been what which who whom "
           "whose when where why how did do does that this these those it its as into than".split())


def split_body(text: str) -> tuple[str, str]:
    """A template body (llm.BODY: "Context: {c}\\nQuestion: {q}") -> (context, question)."""
    head, sep, question = text.rpartition(QUESTION)
    if not sep:
        return text, ""
    return head.removeprefix("Context: "), question


class TokenSender(nn.Module):
    """Learned parts of the sender; the frozen feature model is attached (not a module)."""

    def __init__(self, cfg: EncoderConfig, d_wire: int, M: int, feature_dim: int):
        super().__init__()
        self.cfg, self.M, self.llm = cfg, M, None
        self.memo: dict[str, tuple] = {}
        self.codec = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, cfg.d_z), nn.GELU(),
                                   nn.Linear(cfg.d_z, d_wire))
        self.pad_code = nn.Parameter(torch.zeros(d_wire))
        self.scorer = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, 1))
        self.hint_head = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, cfg.hint_buckets))

    # every slot is shared: the slot view of the wire is all of it (wire.shared_fraction 1.0)
    P = 0

    @property
    def S(self) -> int:
        return self.M

    def slot_view(self, Z: torch.Tensor, slot: str) -> torch.Tensor:
        return Z

    def resize(self, M: int) -> None:
        """A new M is only a new budget: nothing learned depends on it."""
        self.M = M

    # ------------------------------------------------------------ reading (frozen, memoised)
    @torch.no_grad()
    def read(self, text: str, answer: str | None = None):
        """(question-part ids, context ids, hidden states over question part + context,
        answer labels per context token or None)."""
        key = text
        if key not in self.memo:
            tok, model = self.llm.tokenizer, self.llm.model
            context, question = split_body(text)
            q_ids = tok(QUESTION + question, add_special_tokens=False)["input_ids"]
            enc = tok(context, add_special_tokens=False, return_offsets_mapping=True)
            c_ids = enc["input_ids"][:self.cfg.max_bytes]  # max_bytes: tokens for this kind
            offsets = enc["offset_mapping"][:len(c_ids)]
            words = {w for w in WORD.findall(question.lower()) if w not in STOP}
            overlap = torch.tensor([float(bool(words & set(WORD.findall(context[a:b].lower()))))
                                    for a, b in offsets])
            ids = torch.tensor([q_ids + c_ids] if q_ids + c_ids else [[tok.eos_token_id or 0]],
                               device=self.llm.device)
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[self.cfg.feature_layer][0]
            self.memo[key] = (q_ids, c_ids, offsets, h.float().cpu(), context,
                              max(0, len(enc["input_ids"]) - len(c_ids)), overlap)
        q_ids, c_ids, offsets, h, context, cut, overlap = self.memo[key]
        labels = None
        if answer is not None:
            labels = torch.zeros(len(c_ids))
            start = context.find(answer) if answer else -1
            if start >= 0:
                end = start + len(answer)
                for i, (a, b) in enumerate(offsets):
                    labels[i] = float(a < end and b > start)
        return q_ids, c_ids, h, labels, cut, overlap

    def budget(self, n_q: int) -> tuple[int, int]:
        """(question-part tokens kept, context window W): the question part gets at most 3/4."""
        q = min(n_q, self.M - self.M // 4)
        return q, self.M - q

    def pick(self, text: str, use_scorer: bool = True):
        """The sent tokens for one text: the W context tokens with the highest summed answer
        probability (the scorer's sigmoid, unless use_scorer is off) + lexical overlap, then the
        question part. -> (picked ids, window start, W, the scorer's logits, the read)."""
        read = self.read(text)
        q_ids, c_ids, h, _, _, overlap = read
        n_q = len(q_ids)
        s = self.scorer(h[n_q:].to(self.pad_code.device)).squeeze(-1) if c_ids else h.new_zeros(0)
        q_keep, W = self.budget(n_q)
        W = min(W, len(c_ids))
        start = 0
        if W:
            p = overlap.to(s.device) + (torch.sigmoid(s.detach()) if use_scorer else 0)
            sums = torch.cat([p.new_zeros(1), p.cumsum(0)])
            start = int((sums[W:] - sums[:-W]).argmax())
        return c_ids[start:start + W] + q_ids[:q_keep], start, W, s, read

    # ------------------------------------------------------------ the wire
    def forward(self, texts: list[str]):
        """Z [B, M, d_wire], hint logits [B, buckets], context tokens cut per text, and the
        scorer's logits per text (for the position loss)."""
        dev = self.pad_code.device
        emb = self.llm.model.get_input_embeddings()
        zs, hints, cuts, scores = [], [], [], []
        for text in texts:
            picked, _, _, s, (_, _, h, _, cut, _) = self.pick(text)
            h = h.to(dev)
            with torch.no_grad():
                e = emb(torch.tensor(picked, dtype=torch.long, device=self.llm.device)).float().to(dev)
            z = self.codec(e) if picked else e.new_zeros(0, self.pad_code.shape[0])
            z = torch.cat([z, self.pad_code.expand(self.M - len(picked), -1)])
            zs.append(z)
            hints.append(self.hint_head(h.mean(0)))
            cuts.append(cut)
            scores.append(s)
        return torch.stack(zs), torch.stack(hints), cuts, scores

    def select_loss(self, texts: list[str], answers: list[str], scores: list[torch.Tensor]) -> torch.Tensor:
        """BCE of the scorer against the gold answer's tokens (positives up-weighted)."""
        losses = []
        for text, answer, s in zip(texts, answers, scores):
            labels = self.read(text, answer)[3].to(s.device)
            if labels.numel() and labels.sum() > 0:
                pos_weight = (labels.numel() - labels.sum()) / labels.sum()
                losses.append(F.binary_cross_entropy_with_logits(s, labels, pos_weight=pos_weight))
        return torch.stack(losses).mean() if losses else scores[0].new_zeros(()) if scores else torch.zeros(())


# ---------------------------------------------------------------- codec warm start

@torch.no_grad()
def string_targets(sender: FrozenLLM, receiver: FrozenLLM) -> torch.Tensor:
    """For every sender token id: the receiver's input embedding of the same string (mean
    over the receiver's tokens of it), [V_sender, H_receiver]."""
    stok, rtok = sender.tokenizer, receiver.tokenizer
    E = receiver.model.get_input_embeddings().weight.detach().float()
    if stok.get_vocab() == rtok.get_vocab():
        return E.cpu()
    V = len(stok)
    strings = [stok.convert_tokens_to_string([t]) for t in stok.convert_ids_to_tokens(list(range(V)))]
    out = torch.zeros(V, E.shape[1])
    for i, s in enumerate(strings):
        ids = rtok(s, add_special_tokens=False)["input_ids"]
        if ids:
            out[i] = E[ids].mean(0).cpu()
    return out


def scorer_warm_start(sender: TokenSender, texts: list[str], answers: list[str], steps: int,
                      lr: float = 1e-2, log=print) -> float:
    """Full-batch training of the scorer on the answer positions (frozen features, no LLM
    forward after the first read). Returns the final position loss."""
    opt = torch.optim.AdamW(sender.scorer.parameters(), lr=lr, weight_decay=0.1)
    dev = sender.pad_code.device
    loss = torch.zeros(())
    for _ in range(steps):
        scores = []
        for t in texts:
            q_ids, c_ids, h, *_ = sender.read(t)
            scores.append(sender.scorer(h[len(q_ids):].to(dev)).squeeze(-1))
        loss = sender.select_loss(texts, answers, scores)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    log(f"scorer warm start: {steps} steps, position loss {loss.item():.3f}")
    return loss.item()


def codec_warm_start(lw, llms: dict[str, FrozenLLM], texts: list[str], steps: int, seed: int,
                     batch: int = 512, negatives: int = 4096, lr: float = 2e-3, log=print) -> dict:
    """Train the sender's codec and every adapter's projection so that decoding a token's
    (quantised) code lands nearest the receiver's embedding of that token's string.

    Tokens are drawn by their frequency in `texts` (smoothed over the whole vocabulary).
    No LLM forward: only embedding tables. Returns the final token accuracy per receiver."""
    sender = lw.encoder
    feat = sender.llm
    g = torch.Generator().manual_seed(seed)
    E_in = feat.model.get_input_embeddings().weight.detach().float().cpu()
    V = E_in.shape[0]
    count = torch.ones(V)
    for t in texts:
        q_ids, c_ids, *_ = sender.read(t)
        count[torch.tensor(q_ids + c_ids, dtype=torch.long)] += 20.0
    prob = count / count.sum()
    targets = {s: F.normalize(string_targets(feat, llm), dim=-1) for s, llm in llms.items()}
    params = list(sender.codec.parameters()) + [p for a in lw.adapters.values() for p in a.proj.parameters()]
    opt = torch.optim.AdamW(params, lr=lr)
    dev = sender.pad_code.device
    acc = {}
    for step in range(steps):
        ids = torch.multinomial(prob, batch, replacement=True, generator=g)
        z = lw.quantize_codes(sender.codec(E_in[ids].to(dev)), qat=True)
        cand = torch.cat([ids, torch.randint(0, V, (negatives,), generator=g)]).unique()
        pos = torch.searchsorted(cand, ids).to(dev)
        loss = z.new_zeros(())
        for s, a in lw.adapters.items():
            out = F.normalize(a.proj(z), dim=-1)
            logits = out @ targets[s][cand].to(dev).T / 0.05
            loss = loss + F.cross_entropy(logits, pos)
            if step == steps - 1:
                acc[s] = (logits.argmax(-1) == pos).float().mean().item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0:
            log(f"codec warm start: step {step}/{steps}, loss {loss.item():.3f}")
    log(f"codec warm start: {steps} steps, token accuracy per receiver {acc}")
    return acc

