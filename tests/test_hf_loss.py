"""``use_fused_loss``: a Hugging Face causal LM whose forward(labels=...) uses the fused loss, no logits."""
import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

from engine_fixtures import TRANSFORM_FAMILY_CONFIGS
from fusedrl.hf import use_fused_loss


def _model(tied: bool, family: str = "llama"):
    """A 2-layer causal LM with 301 tokens: a Llama, or a family whose logits are transformed (engine_fixtures)."""
    torch.manual_seed(0)
    overrides = dict(TRANSFORM_FAMILY_CONFIGS.get(family, {"model_type": family}))
    config = AutoConfig.for_model(overrides.pop("model_type"), vocab_size=301, hidden_size=32, intermediate_size=48,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  tie_word_embeddings=tied, **overrides)
    return AutoModelForCausalLM.from_config(config)


def _batch():
    torch.manual_seed(1)
    input_ids = torch.randint(0, 301, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :4] = -100  # the prompt
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("tied, family", [(True, "llama"), (False, "llama"), (True, "gemma2"), (False, "cohere"),
                                          (True, "granite")], ids=["tied", "untied", "gemma2", "cohere", "granite"])
@pytest.mark.parametrize("num_items", [None, 13.0], ids=["mean", "num_items_in_batch"])
def test_loss_and_gradients_match_the_model_own_loss(tied, family, num_items):
    """The model's own causal-LM loss and its gradients; for gemma2, cohere and granite with the logit transform
    (softcapping, logit_scale, logits_scaling) reproduced."""
    reference = _model(tied, family)
    fused = use_fused_loss(copy.deepcopy(reference), backend="torch")
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    expected = reference(**_batch(), **extra)
    got = fused(**_batch(), **extra)
    assert got.logits is None and expected.logits is not None
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    expected.loss.backward()
    got.loss.backward()
    for (name, p), q in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_forward_without_labels_is_the_model_own():
    reference = _model(tied=False)
    fused = use_fused_loss(copy.deepcopy(reference))
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    torch.testing.assert_close(fused(**batch).logits, reference(**batch).logits)


def test_model_with_an_unknown_logit_transform_is_refused():
    """A forward that changes the logits after the lm_head in a way fusedrl does not know (here: doubles them)."""
    model = _model(tied=True)
    forward = model.forward

    def doubled(**kwargs):
        out = forward(**kwargs)
        out.logits = out.logits * 2
        return out

    model.forward = doubled
    with pytest.raises(ValueError, match=r"^model: the model passed to use_fused_loss \(LlamaForCausalLM\) "
                                         r".*cannot reproduce"):
        use_fused_loss(model)


class _Rows(torch.utils.data.Dataset):
    def __init__(self):
        batch = _batch()
        self.rows = [{k: v[i] for k, v in batch.items()} for i in range(3)] * 4

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_hf_trainer_trains_the_same_with_the_fused_loss(tmp_path, monkeypatch):
    """The HF Trainer (its default column filtering, token-weighted gradient accumulation): same losses, and
    every micro-batch's loss came from the fused kernel."""
    import fusedrl.hf

    calls = []
    fused_loss = fusedrl.hf.linear_cross_entropy
    monkeypatch.setattr(fusedrl.hf, "linear_cross_entropy", lambda *a, **k: calls.append(k) or fused_loss(*a, **k))
    losses = []
    for patch in (False, True):
        model = _model(tied=True)
        args = TrainingArguments(output_dir=str(tmp_path / str(patch)), max_steps=3, per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=1, report_to=[],
                                 save_strategy="no", use_cpu=True, seed=0, data_seed=0)
        trainer = Trainer(model=use_fused_loss(model, backend="torch") if patch else model, args=args,
                          train_dataset=_Rows())
        trainer.train()
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert len(losses[0]) == 3
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert len(calls) == 3 * 2 and all(k["reduction"] == "sum" for k in calls)  # num_items_in_batch given


def test_peft_model_is_patched_inside():
    """A LoRA-wrapped model: the patch goes on the inner transformers model; LoRA gradients match."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    reference = get_peft_model(_model(tied=True), lora)
    fused = use_fused_loss(copy.deepcopy(reference), backend="torch")
    expected, got = reference(**_batch()), fused(**_batch())
    assert got.logits is None
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    expected.loss.backward()
    got.loss.backward()
    trained = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    assert trained
    for (name, p), q in zip(trained, [q for q in fused.parameters() if q.requires_grad]):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
