"""Models whose logits are transformed after the lm_head: the fused path reproduces them, or refuses the model."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from conftest import skip_unless_backend_runs
from engine_fixtures import DATA, LOGIT_TRANSFORM_FAMILIES, TRANSFORM_FAMILY_CONFIGS, save_tiny_model, train_config
from fusedrl.engine import logit_head as logit_head_module
from fusedrl.engine.algorithms import build_algorithm
from fusedrl.engine.batches import fixed_batches
from fusedrl.engine.config import config_from_dict
from fusedrl.engine.distributed import pick_device
from fusedrl.engine.logit_head import (LogitTransform, check_fused_logits, final_hidden, fused_logits, logit_head,
                                       logit_transform)
from fusedrl.engine.models import RewardModel, load_causal_lm
from fusedrl.engine.trainer import train
from fusedrl.engine.training_data import load_training_data
from fusedrl.kernels import linear_logprobs, linear_topk
from tokenizer_fixture import tiny_tokenizer

FAMILIES = ["llama", *TRANSFORM_FAMILY_CONFIGS]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Each family's tiny model saved with the tiny tokenizer (the gemma2 one untied, to cover both heads), and
    a reward model (``rm``) for PPO."""
    root = tmp_path_factory.mktemp("families")
    dirs = {f: save_tiny_model(root / f, family=f, tie_embeddings=f != "gemma2") for f in FAMILIES}
    RewardModel(load_causal_lm(str(dirs["llama"]))).save_pretrained(str(root / "rm"))
    tiny_tokenizer().save_pretrained(root / "rm")
    return {**dirs, "rm": root / "rm"}


@pytest.mark.parametrize("model_type, keys, expected", [
    ("llama", {}, LogitTransform()),
    ("gemma2", {}, LogitTransform(softcap=30.0)),
    ("gemma3_text", {}, LogitTransform()),
    ("cohere", {}, LogitTransform(scale=0.0625)),
    ("granite", {"logits_scaling": 8.0}, LogitTransform(scale=0.125)),
    ("falcon_h1", {"lm_head_multiplier": 0.5}, LogitTransform(scale=0.5)),
    ("llama", {"unpadded_vocab_size": 100, "final_logit_softcapping": 0.0}, LogitTransform(vocab=100)),
    ("gemma3", {"text_config": {"final_logit_softcapping": 20.0}}, LogitTransform(softcap=20.0)),
], ids=["llama", "gemma2", "gemma3", "cohere", "granite", "falcon_h1", "padded_vocab", "gemma3_multimodal"])
def test_transform_read_from_the_config(model_type, keys, expected):
    assert logit_transform(AutoConfig.for_model(model_type, **keys)) == expected


@pytest.mark.parametrize("family, backend", [(f, b) for f in FAMILIES for b in ("torch", "triton")
                                             if (f, b) != ("falcon_h1", "triton")])  # its Mamba layers are slow
def test_kernel_logprobs_are_the_model_own(family, backend, family_dirs):
    """Token logprobs and top-k at temperature 0.7 from the kernels equal log_softmax(model logits / 0.7)."""
    skip_unless_backend_runs(backend)
    model = load_causal_lm(str(family_dirs[family]))
    ids = torch.tensor([[5, 17, 3, 40, 9, 22, 11], [8, 1, 30, 2, 6, 13, 4]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        head = logit_head(model)
        hidden = head.inputs(final_hidden(model, ids, mask))
        plain = final_hidden(model, ids, mask) @ head.weight.T
        want = F.log_softmax(logits / 0.7, -1)
        labels = ids.roll(-1, dims=1)
        got = linear_logprobs(hidden, head.weight, labels, bias=head.bias, softcap=head.softcap, temperature=0.7,
                              backend=backend)
        top_lp, top_ids = linear_topk(hidden, head.weight, 5, bias=head.bias, softcap=head.softcap, temperature=0.7,
                                      backend=backend)
    torch.testing.assert_close(fused_logits(model, ids, mask), logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, want.gather(-1, labels[..., None]).squeeze(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(top_lp, want.topk(5, -1).values, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(top_lp, want.gather(-1, top_ids), atol=1e-5, rtol=1e-4)
    if family != "llama":  # the transform matters here: the untransformed logits are another distribution
        assert (F.log_softmax(plain / 0.7, -1) - want).abs().max() > 0.05


def test_unknown_transform_is_refused_at_load(family_dirs, monkeypatch):
    """A transform fusedrl does not know (here: Granite's, taken out of the table) stops loading with the key."""
    monkeypatch.delitem(logit_head_module.TRANSFORM_KEYS, "logits_scaling")
    with pytest.raises(ValueError, match=r"^ref_model: .*granite \(GraniteForCausalLM\) computes logits the fused "
                                         r"loss path cannot reproduce.*off by"):
        load_causal_lm(str(family_dirs["granite"]), key="ref_model")


def _llama(vocab=61, **config):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, **config))


def test_padded_vocabulary_rows_are_cut():
    """A model that drops padding rows of its lm_head (``unpadded_vocab_size``): the fused head drops them too;
    a config that names them while the forward keeps all rows is refused."""
    model = _llama(unpadded_vocab_size=50)
    with pytest.raises(ValueError, match=r"logits \[1, 3, 50\] off by inf .* own \[1, 3, 61\]"):
        check_fused_logits(model, "padded")
    forward = model.forward

    def cut(**kwargs):
        out = forward(**kwargs)
        out.logits = out.logits[..., :50]
        return out

    model.forward = cut
    check_fused_logits(model, "padded")
    assert logit_head(model).weight.shape == (50, 16)


def test_probe_runs_in_eval_mode_and_restores_the_mode():
    """Dropout would make the two forwards differ: the probe switches it off and leaves the mode as it was."""
    model = _llama(attention_dropout=0.9).train()
    check_fused_logits(model, "dropout")
    assert model.training


def test_probe_of_a_cuda_only_attention_on_the_cpu(family_dirs):
    """A model loaded with an attention kernel that needs CUDA tensors (as flash-attention does) is probed on
    the CPU with eager attention, and keeps its own attention afterwards."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def cuda_only(module, query, *args, **kwargs):
        if not query.is_cuda:
            raise RuntimeError("cuda_only attention needs CUDA tensors")
        return sdpa_attention_forward(module, query, *args, **kwargs)

    AttentionInterface.register("cuda_only", cuda_only)
    model = load_causal_lm(str(family_dirs["gemma2"]), attn_implementation="cuda_only")
    assert model.config._attn_implementation == "cuda_only"
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        model(input_ids=torch.arange(3)[None])


def test_scaled_bias_follows_the_logits(family_dirs):
    """A head with a bias under a logit scale: the bias is scaled with the hidden states."""
    model = load_causal_lm(str(family_dirs["cohere"]))
    model.lm_head = torch.nn.Linear(32, model.config.vocab_size, bias=True)
    torch.nn.init.normal_(model.lm_head.bias)
    check_fused_logits(model, "cohere+bias")
    assert torch.equal(logit_head(model).bias, model.lm_head.bias * 4.0)


def test_reference_with_another_softcap_is_refused(family_dirs, tmp_path):
    config = config_from_dict(train_config(family_dirs["gemma2"], tmp_path, "dpo",
                                           ref_model=str(family_dirs["llama"])))
    with pytest.raises(ValueError, match=r"^ref_model: .* softcaps its logits at None, base_model .* at 0.5"):
        build_algorithm(config, pick_device())


def model_token_logps(model, batch, prefix=""):
    """``[B, T]`` logprobs of ``batch``'s labels from the model's own forward (0 where ignored)."""
    with torch.no_grad():
        logits = model(input_ids=batch[prefix + "input_ids"], attention_mask=batch[prefix + "attention_mask"],
                       position_ids=batch.get(prefix + "position_ids")).logits.float()
    labels = batch[prefix + "labels"]
    logp = F.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(labels != -100, logp, 0.0)


def first_batch(config):
    algorithm = build_algorithm(config, pick_device())
    data = algorithm.prepare_data(load_training_data(config, algorithm.tokenizer, algorithm.data_kind))
    return algorithm, algorithm.to_device(fixed_batches(data.train, config.micro_batch_size, data.collate)[0])


@pytest.mark.parametrize("family", LOGIT_TRANSFORM_FAMILIES)
def test_sft_loss_is_the_model_own_cross_entropy(family, family_dirs, tmp_path):
    algorithm, batch = first_batch(config_from_dict(train_config(family_dirs[family], tmp_path, "sft")))
    loss, _ = algorithm.loss(batch)
    token = model_token_logps(algorithm.model, batch)
    expected = -token.sum() / (batch["labels"] != -100).sum()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", LOGIT_TRANSFORM_FAMILIES)
@pytest.mark.parametrize("precompute", [False, True], ids=["reference_model", "precomputed_reference"])
def test_dpo_logps_are_the_model_own(family, precompute, family_dirs, tmp_path):
    """Policy and reference sequence logps (the reference a frozen copy, or precomputed into the rows)."""
    config = config_from_dict(train_config(family_dirs[family], tmp_path, "dpo", precompute_ref_log_probs=precompute,
                                           micro_batch_size=3))
    algorithm, batch = first_batch(config)
    _, metrics = algorithm.loss(batch)
    sequence = model_token_logps(algorithm.model, batch).sum(-1)
    chosen, rejected = sequence.chunk(2)
    assert metrics["logps/chosen"] == pytest.approx(float(chosen.mean()), abs=1e-4, rel=1e-5)
    assert metrics["logps/rejected"] == pytest.approx(float(rejected.mean()), abs=1e-4, rel=1e-5)
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # the reference's logps are the same
    if precompute:
        torch.testing.assert_close(batch["ref_chosen_logps"], chosen, atol=1e-4, rtol=1e-5)


@pytest.fixture
def softcaps_seen(monkeypatch):
    """The ``softcap`` of every vocab-sized kernel call (logprobs, cross-entropy and top-k)."""
    from fusedrl.kernels import cross_entropy, logprobs, topk

    seen = []
    for module in (logprobs, cross_entropy):
        original = module.vocab_stats

        def spy(problem, *args, _original=original, **kwargs):
            seen.append(problem.softcap)
            return _original(problem, *args, **kwargs)

        monkeypatch.setattr(module, "vocab_stats", spy)
    original_topk = topk.linear_topk

    def topk_spy(*args, softcap=None, **kwargs):
        seen.append(softcap)
        return original_topk(*args, softcap=softcap, **kwargs)

    monkeypatch.setattr("fusedrl.engine.kd_extract.linear_topk", topk_spy)
    return seen


SFT_ROWS = [{"path": DATA["sft"]}]
ONLINE = {"max_completion_length": 4, "temperature": 0.9, "num_sample_generations": 0}


@pytest.mark.parametrize("rl, overrides", [
    ("sft", {}), ("dpo", {"precompute_ref_log_probs": True}), ("ipo", {}), ("cpo", {}), ("simpo", {}), ("orpo", {}),
    ("kto", {}), ("kd", {}),
    ("kd", {"kd_teacher": "gemma2", "kd_top_k": 4, "datasets": SFT_ROWS, "test_datasets": SFT_ROWS}),
    ("grpo", {**ONLINE, "reward_funcs": ["length"], "num_generations": 2}),
    ("ppo", {**ONLINE, "reward_model": "rm"}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_every_loss_gets_the_softcap(rl, overrides, family_dirs, tmp_path, softcaps_seen):
    """One step (with evaluation) of each algorithm on a softcapped model: every kernel call is softcapped."""
    if "reward_model" in overrides:
        overrides = {**overrides, "reward_model": str(family_dirs["rm"])}
    if "kd_teacher" in overrides:
        overrides = {**overrides, "kd_teacher": str(family_dirs["gemma2"])}
    train(config_from_dict(train_config(family_dirs["gemma2"], tmp_path, rl, max_steps=1, **overrides)))
    assert softcaps_seen and set(softcaps_seen) == {0.5}
