"""packed.py: the receivers' linear weights reordered once for CPU inference, same answers."""
import pytest
import torch
from torch import nn

import tiny
from latentwire.config import ModelConfig, PromptConfig
from latentwire.receiver import Receiver
from latentwire.llm import load_frozen
from latentwire.packed import PackedLinear, pack

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = PromptConfig(instruction="Answer with a span.",
                      example_context="The Eiffel Tower was completed in 1889.",
                      example_question="When was the Eiffel Tower completed?", example_answer="1889")


def linears(model: nn.Module, cls=nn.Linear) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_pack_swaps_every_linear_and_keeps_the_answers(tiny_models, kind):
    llm = load_frozen(kind, ModelConfig(source="local", path=str(tiny_models[kind])), PROMPT)
    rows = tiny.qa_rows(4, "squad")
    rec = Receiver(llm)
    rests = [rec.embed(rec.ids(llm.template.body(r["context"], r["question"]) + llm.template.suffix))
             for r in rows[:3]] + [rec.embed(rec.ids("Context: Paris.\nQuestion: Which river?"))]  # padded
    answer = rec.ids(" the Seine")[None].expand(len(rests), -1)
    with torch.inference_mode():
        dense_logits = rec.answer_logits(rests, answer)
    dense_answers = rec.generate(rests, 6)
    n = linears(llm.model)
    assert n == 2 * 7 + 1  # q k v o gate up down per layer, and the output projection
    embedding = llm.model.get_input_embeddings().weight.clone()
    loaded = [p.detach() for p in llm.model.parameters()]  # held, so that no new tensor can reuse their memory

    assert pack(llm.model) == n
    assert linears(llm.model) == 0 and linears(llm.model, PackedLinear) == n
    assert torch.equal(llm.model.get_input_embeddings().weight, embedding)  # Qwen's is tied to the head
    # nothing still points into the loaded weights, so a memory-mapped checkpoint is released
    dense = [*llm.model.parameters(), *(m.bias for m in llm.model.modules() if isinstance(m, PackedLinear))]
    assert not {t.data_ptr() for t in loaded} & {t.data_ptr() for t in dense if t is not None}
    rec = Receiver(llm)  # its prefix cache from the packed model, as evaluate builds it
    with torch.inference_mode():
        packed_logits = rec.answer_logits(rests, answer)
    torch.testing.assert_close(packed_logits, dense_logits, rtol=1e-4, atol=1e-4)
    assert rec.generate(rests, 6) == dense_answers


def test_packed_linear_matches_dense_and_refuses_backward():
    torch.manual_seed(0)
    dense = nn.Linear(24, 40)
    x = torch.randn(3, 5, 24)
    packed = PackedLinear(dense)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), dense(x), rtol=1e-5, atol=1e-5)
    assert PackedLinear(nn.Linear(24, 40, bias=False)).bias is None
    with pytest.raises(RuntimeError, match="inference"):
        packed(x.requires_grad_())


def test_pack_leaves_what_it_cannot_pack():
    model = nn.Sequential(nn.Linear(8, 8).half(), nn.Linear(8, 8))
    assert pack(model) == 1
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], PackedLinear)
