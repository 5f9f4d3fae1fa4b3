"""The reference of every ``fusedrl train`` config key, generated from ``TrainConfig`` so it cannot drift.

``python -m fusedrl.engine.config_reference > docs/config.md`` regenerates docs/config.md; the tests check
that every field has a description and that the file is current.
"""
from __future__ import annotations

import dataclasses

from ..kernels.losses import DPO_LOSS_TYPES
from ..kernels.losses.dpo import SMOOTHED_LOSS_TYPES
from .config import ALIASES, TrainConfig, yaml_text


def _codes(values) -> str:
    """``values`` as Markdown code spans, joined by commas."""
    return ", ".join(f"`{value}`" for value in values)


DESCRIPTIONS: dict[str, str] = {
    # Model and algorithm
    "base_model": "The model to train: a local folder or a Hugging Face hub id (the folder or repo holding "
                  "`gguf_file` when that is set). Its tokenizer is used unless `tokenizer` is set.",
    "rl": "The algorithm: offline `sft`, `dpo`, `ipo` (DPO with loss_type `ipo`), `cpo`, `simpo`, `orpo`, `kto`, "
          "`rm` (reward model), `prm` (process reward model) and `kd` (top-k distillation); online `grpo`, `rloo`, "
          "`ppo` and `online_dpo`. "
          "It picks the dataset row kind, the loss and the defaults of `beta`, `loss_type`, `num_generations` and "
          "`disable_dropout`.",
    "gguf_file": "A GGUF file inside `base_model` to load the policy from (dequantised to `model_dtype`), and its "
                 "tokenizer unless `tokenizer` is set; not used for `ref_model` or `reward_model`.",
    "tokenizer": "Tokenizer folder or hub id; null uses `base_model`'s. A tokenizer without a pad token pads with "
                 "its EOS token.",
    "trust_remote_code": "Passed to every Hugging Face `from_pretrained` (tokenizer, policy, `ref_model`, "
                         "`reward_model`): allows custom modelling code from the model's repository.",
    "model_dtype": "The dtype weights load in: the policy, `ref_model` and `reward_model` (PPO's value model too); "
                   "frozen reference copies share it. Mixed-precision compute is `bf16`'s job.",
    "attn_implementation": "Attention kernel passed to transformers for every model loaded (policy, `ref_model`, "
                           "`reward_model` and PPO's value model); null: transformers' default. "
                           "`sample_packing` needs `flash_attention_2` or `flash_attention_3`.",
    "chat_template": "How message-list rows are rendered: `chatml` or a Jinja string; null uses the dataset "
                     "type's template (`chatml.*` types), else the tokenizer's own, else chatml. Plain-text "
                     "prompts use no template.",
    # Data and output
    "datasets": "Training data, at least one entry: mappings with `path` (local file or folder, a builder name "
                "with `data_files`, or a hub id) and optional `type` (row format; null detects it from the "
                "columns), `split`, `name`, `revision`, `ds_type`, `data_files` and `columns` (renames). A relative "
                "path is looked up from the working directory, then from the config file's folder.",
    "test_datasets": "Held-out data, entries as in `datasets`, evaluated before training (unless resumed), every "
                     "`eval_steps` and at the end (metrics with split `eval`). When set, `val_set_size` must stay 0.",
    "val_set_size": "Fraction of the tokenised training rows split off (shuffled with `seed`) as the held-out set "
                    "when `test_datasets` is empty; 0 holds out nothing.",
    "max_length": "Most tokens per tokenised sequence (prompt + completion): the prompt keeps its last "
                  "`max_prompt_length` tokens, then the completion loses its tail; a prompt that leaves no room for "
                  "one completion token is a bad row. For `grpo`, `ppo` and `online_dpo` it bounds the prompt alone "
                  "(which must be shorter); with `sample_packing` it is also the length of a packed row.",
    "max_prompt_length": "Prompts keep only their last this many tokens; null keeps whole prompts. Must be less "
                         "than `max_length`; applies to every algorithm's prompts, GRPO and PPO generation "
                         "prompts included.",
    "on_bad_row": "`error`: the first unusable row (missing field, prompt too long, template failure, bad teacher "
                  "targets) stops loading, naming its file and row; `skip`: such rows are dropped, with one "
                  "warning per reason.",
    "dataset_num_proc": "Worker processes for tokenising (`datasets.map(num_proc=...)`); null tokenises in the "
                        "main process. Tokenised data is cached by a fingerprint of the data, tokenizer and "
                        "settings.",
    "sample_packing": "`sft` and `kd` only: the sequences of each micro-batch are concatenated into rows of at most "
                      "`max_length` tokens with `position_ids` restarting per sequence. Needs `attn_implementation` "
                      "`flash_attention_2` or `flash_attention_3`; other algorithms fail when the data loads.",
    "kd_top_k": "`kd` only: cut every teacher position to its k most likely ids (needed when positions carry "
                "different numbers of ids; a position with fewer than k is a bad row); null keeps them as stored. "
                "Must be >= 1, checked when the data loads. With `kd_teacher`: the ids per position the live "
                "teacher gives, or null for its whole distribution (every vocabulary id, as TRL's GKD).",
    "output_dir": "Where a run writes `metrics.jsonl`, `samples.jsonl`, `tensorboard/`, `checkpoint-<step>/`, "
                  "`final/` (the trained model) and `training_curves.png`, relative to the working directory. A "
                  "fresh (not resumed) run empties the metric logs it finds there.",
    # Adapter and reference
    "adapter": "`lora` trains peft LoRA adapters on the frozen base model (`final/` then holds `adapter/` and the "
               "merged model); null trains every weight. PPO's value model is always trained in full.",
    "lora_r": "LoRA rank (`adapter: lora`).",
    "lora_alpha": "LoRA scale numerator: adapter updates are scaled by `lora_alpha / lora_r` (`adapter: lora`).",
    "lora_dropout": "Dropout on the LoRA input path (`adapter: lora`); set to 0, with a warning, wherever "
                    "`disable_dropout` is in effect, which is every algorithm but `sft` by default.",
    "lora_target_modules": "Modules to wrap with LoRA, passed to peft's `target_modules`: a list of module names, "
                           "or `all-linear` (every linear layer but the output head).",
    "rl_adapter_ref_model": "With `adapter: lora` and no `ref_model`: true makes the reference a separate frozen "
                            "copy of the base model; false uses the policy with its adapters disabled (no extra "
                            "memory). Read by the algorithms with a reference: `dpo`, `ipo`, `kto`, `ppo`, "
                            "`online_dpo`, and `grpo` and `rloo` with beta > 0.",
    "ref_model": "A separate reference model (folder or hub id, same vocabulary) for `dpo`, `ipo`, `kto`, `ppo`, "
                 "`online_dpo`, and `grpo` and `rloo` with beta > 0, loaded in `model_dtype` with "
                 "`attn_implementation`. Null uses a frozen copy of the starting policy (with LoRA: see "
                 "`rl_adapter_ref_model`).",
    "precompute_ref_log_probs": "`dpo` and `ipo` only: compute the reference's summed logprobs of every training "
                                "and held-out pair once before training (in batches of `eval_batch_size`) instead "
                                "of a reference forward pass in every step; the reference model is then released "
                                "(as TRL), so it costs no memory during training (under `fsdp` the reference is "
                                "sharded under a root of its own for the pass, and that root is dropped after "
                                "it). Split across data-parallel ranks.",
    "sync_ref_model": "`dpo`, `ipo`, `kto`, `grpo` and `rloo` (beta > 0), `ppo` and `online_dpo`: TR-DPO's "
                      "trust-region reference (Gorbatovski et al. 2024; TRL's keys): every `ref_model_sync_steps` "
                      "optimizer steps the reference becomes `α·policy + (1 − α)·reference` (α = "
                      "`ref_model_mixup_alpha`), parameter by parameter (each rank its shards under `fsdp`). "
                      "Checkpoints then keep the reference too (`reference/`, or each rank's "
                      "`reference_shard.safetensors`), so a resumed run continues from the synced one. Not with LoRA "
                      "or `precompute_ref_log_probs`; a `ref_model` must have the policy's parameter names and shapes. "
                      "The online algorithms take the reference logprobs when a rollout is scored, so a sync reaches "
                      "the next rollout.",
    "ref_model_mixup_alpha": "`sync_ref_model`: α, the policy's weight in each sync (1 copies the policy; TR-DPO "
                             "and TRL default 0.6).",
    "ref_model_sync_steps": "`sync_ref_model`: τ, optimizer steps between syncs (after steps τ, 2τ, ...; TRL's "
                            "default 512).",
    # Losses
    "beta": "The algorithm's main coefficient; null takes its default (`effective_beta`): 2.0 for `simpo`, 0.04 for "
            "`grpo`, 0.05 for `rloo` (TRL's), 0.1 elsewhere. `dpo`, `ipo`, `cpo`, `simpo`, `kto`, `online_dpo`: the β "
            "of the loss; `orpo`: λ, the weight of the odds-ratio term (alias `orpo_alpha`); `grpo`: the weight of the "
            "k3 KL penalty in the loss; `rloo`: the weight of each completion's summed KL (`Σ_t L_old − L_ref`) "
            "subtracted from its reward. 0 loads no reference model for `grpo` and `rloo`. Must be > 0 (>= 0 for "
            "`grpo` and `rloo`); `sft`, `rm`, `prm`, `kd` and `ppo` (see `kl_coef`) do not read it.",
    "loss_type": "The loss variant; null takes the algorithm's default (`effective_loss_type`). `dpo`: "
                 f"{_codes(DPO_LOSS_TYPES)} (default `sigmoid`; formulas in fusedrl/kernels/losses/dpo.py; `aot` and "
                 "`aot_unpaired` sort the micro-batch's log ratios, so their loss depends on its size), or a list "
                 "of distinct ones summed with `loss_weights` (MPO, TRL's multi-loss form; `sft` in the list is the "
                 "chosen NLL, then `rpo_alpha` must be null), e.g. `[sigmoid, bco_pair, sft]`; `ipo`: `ipo` only; "
                 "`online_dpo`: `sigmoid` (default) or `ipo` (length-normalised, as `dpo`'s and TRL's offline DPO; "
                 "TRL's OnlineDPOTrainer puts summed log ratios into its ipo); `grpo`: how token losses are "
                 "aggregated: `grpo` (mean over completions of their token mean, default), `bnpo` (mean over the "
                 "batch's tokens), `dr_grpo` "
                 "(sum / (completions × `max_completion_length`)), `dapo` (sum / completion tokens of the global "
                 "batch), or `cispo` (MiniMax-M1: the token loss becomes `−sg(min(ρ, 1 + ε_high))·A·log π`, every "
                 "token keeps its gradient, aggregated as `dapo`; its cap is 1 + `epsilon_high` where TRL's is "
                 "`epsilon_high` itself, so TRL's `epsilon_high: 5` is `4` here), or `sapo` (Soft Adaptive Policy "
                 "Optimization, as TRL: the clip becomes a soft gate, token loss `−σ(τ(ρ − 1))·4/τ·A` with τ = "
                 "`sapo_temperature_pos` where A > 0 and `sapo_temperature_neg` elsewhere, aggregated as `grpo`; no "
                 "`epsilon`, `epsilon_high` or `delta`), or `luspo` (LUSPO, TRL's key: GSPO's clipped loss of each "
                 "completion weighted by its length, i.e. summed over its tokens, then averaged over completions; "
                 "needs `importance_sampling_level: sequence`), or `vespo` (VESPO, TRL's key: the token loss "
                 "`−sg(φ(w))·A·log π` with w the completion's ratio `e^(Σ_t L_t − L_old,t)` and the Gamma-shaped "
                 "weight `φ(w) = e^λ·w^k·e^(−λw)`, φ(1) = 1, k and λ from the `vespo_*` keys by the sign of A; "
                 "aggregated as `dapo`; token level, no `epsilon`, `epsilon_high` or `delta`); `kto`: `kto` "
                 "(default, against the mismatched-pair KL "
                 "baseline) or `apo_zero_unpaired` (APO's zero anchor on unpaired data, as TRL: `λD·(1 − σ(βΔ))` / "
                 "`λU·σ(βΔ)`, no KL pass) or `bco` (TRL's BCOTrainer on the same unpaired rows, without its "
                 "density-ratio weights: the running mean δ of every training reward βΔ so far shifts them, "
                 "`−λD·logσ(βΔ − δ)` / "
                 "`−λU·logσ(δ − βΔ)`, no KL pass; logs `delta`; δ is checkpointed and held-out rows do not move "
                 "it); `cpo`: `sigmoid` (default), `hinge` `relu(1 − β(Lc − Lr))` or `ipo` "
                 "`(avg_c − avg_r − 1/(2β))²` on per-token average logprobs (TRL's CPO; `alpha` reshapes each "
                 "of these). Any other `rl` (`rloo` included: one loss) rejects it.",
    "loss_weights": "`dpo`: one weight ≥ 0 per `loss_type` entry (MPO's `[0.8, 0.2, 1.0]` for `[sigmoid, bco_pair, "
                    "sft]`); null weighs each 1.",
    "ld_alpha": "`dpo` and `ipo`: LD-DPO (Liu et al. 2024; TRL's key), α in [0, 1]: in each pair's sequence logps "
                "(policy and reference, precomputed ones too) the tokens past the shorter reply's length count α "
                "times, so a longer reply gains no likelihood mass from its length alone. Null: plain sums.",
    "label_smoothing": "`sft`: ε in [0, 1], per token `(1 − ε)·nll + ε·mean_v(−log p_v)` (torch's semantics). "
                       f"`dpo` (loss_type {_codes(SMOOTHED_LOSS_TYPES)}), `cpo` (sigmoid) and `simpo`: the "
                       "label-noise ε in [0, 0.5), e.g. sigmoid `−(1 − ε)·logσ(βh) − ε·logσ(−βh)`; every other "
                       "algorithm and loss type requires 0. Alias `sft_label_smoothing`.",
    "f_divergence_type": "`dpo` and `ipo`: f-DPO (Wang et al. 2023; TRL's key): the loss reads f′(π/π_ref) of each "
                         "reply where DPO reads the log ratio: `reverse_kl` (the log ratio: DPO), `forward_kl` "
                         "(−π_ref/π), `js_divergence` (log(u/(1 + u))) or `alpha_divergence` (u^(α−1)/(α−1) with "
                         "α = `f_alpha_divergence_coef`; TRL's convention, the paper's α is 1 − α). Rewards and "
                         "their metrics stay β·log ratio. `aot`, `aot_unpaired` and `apo_zero` compare log ratios "
                         "only and take `reverse_kl`.",
    "f_alpha_divergence_coef": "`alpha_divergence`'s α (TRL's key and default; 1 is `reverse_kl`).",
    "use_weighting": "`dpo` and `ipo`: WPO (Zhou et al. 2024; TRL's `use_weighting`): each pair's preference loss is "
                     "multiplied by min(1, exp(a_chosen + a_rejected)), where a is the reply's mean over its tokens of "
                     "log π(token) − log Σ_v π(v)², computed by the fused kernels from the policy's logits without "
                     "gradient; the `rpo_alpha` term is not weighted. Logs `policy_weights`, the mean pair weight.",
    "rpo_alpha": "`dpo` and `ipo`: weight of the token-mean NLL of the chosen completions added to the preference "
                 "loss (RPO); 0 or null gives the pure DPO / IPO loss.",
    "cpo_alpha": "`cpo` and `simpo`: weight of the token-mean NLL of the chosen completions added to the preference "
                 "loss; 0 gives the bare CPO term and the original SimPO.",
    "simpo_gamma": "`simpo`: the target reward margin γ in `−logσ(β·(avg_c − avg_r) − γ)`, where avg are "
                   "per-token average logprobs; any real number.",
    "alpha": "`cpo` and `simpo`: AlphaPO's reward shape (Gupta et al. 2025; TRL's CPO `alpha`). Each reply's "
             "logprob L (the per-token average for `simpo` and `cpo`'s `ipo`, the sum otherwise) becomes the reward "
             "r = (1 − e^(−αL))/α = (1 − p^(−α))/α with p = e^L before the loss compares chosen and rejected, "
             "and `rewards/*` log β·r. 0 keeps r = L (CPO, SimPO); −1 gives r = p − 1, linear in p. TRL's "
             "`loss_type: alphapo` is `rl: simpo` with `cpo_alpha: 0` (and `alpha` set). e^(−αL) grows fast with "
             "|L| when α > 0: keep α·|L| well below 80 (fp32's range), which summed logprobs of long replies "
             "exceed.",
    "desirable_weight": "`kto`: λD, the weight of a desirable row's loss `λD·(1 − σ(β(Δ − KL)))` (and of the "
                        "`apo_zero_unpaired` and `bco` losses of `loss_type`); a warning is logged when λD·nD / "
                        "(λU·nU) over the training rows is outside [1, 4/3].",
    "undesirable_weight": "`kto`: λU, the weight of an undesirable row's loss `λU·(1 − σ(β(KL − Δ)))` (and of the "
                          "other loss types'; see `desirable_weight` for the balance warning).",
    "center_rewards_coefficient": "`rm`: c in `−logσ(rc − rr − margin) + c·(rc + rr)²`, pulling the reward "
                                  "model's scores towards 0 (margin: the data's optional `margin` column, else 0).",
    "step_separator": "`prm`: the text tokenised after each step of a stepwise row (TRL's PRMConfig default, a "
                      "newline; write it `\"\\n\"` in YAML: an unquoted `\\n`, two characters, is refused); the "
                      "step's score is read at its last token.",
    "train_on_last_step_only": "`prm`: train on each row's final step only (outcome supervision; a row whose final "
                               "step truncation cut off trains on none); evaluation still scores every step, as "
                               "TRL's PRMTrainer.",
    "kd_temperature": "`kd`: the distillation temperature T: the student is `log_softmax(z / T)`, the teacher's "
                      "top-k distribution is moved from `kd_generation_temperature` to T (`p ← p^(T_gen / T)`, "
                      "renormalised; a full-vocabulary live teacher is taken at T directly), and the KD term is "
                      "scaled by T².",
    "kd_generation_temperature": "`kd`: the temperature the teacher targets were extracted at (`fusedrl "
                                 "kd-extract --temperature`); data written by kd-extract records it, and a "
                                 "mismatch is an error. With `kd_teacher`: the temperature of its live top-k.",
    "kd_teacher": "`kd` only: a live teacher (folder or hub id, same vocabulary as the student, loaded in "
                  "`model_dtype`, frozen; sharded under `fsdp`) instead of stored targets: `datasets` are then plain "
                  "SFT rows, and each step takes the teacher's top-`kd_top_k` of every completion position at "
                  "`kd_generation_temperature` through `linear_topk` (no teacher logits), as `kd-extract` would "
                  "have stored them; with `kd_top_k` null, the divergence runs over the whole vocabulary with both "
                  "models at `kd_temperature` (`linear_distill_divergence`: neither model's logits are "
                  "materialised; `kd_generation_temperature` and `kd_normalize_topk` then do not apply).",
    "kd_alpha": "`kd`: weight of the distillation term in `kd_alpha·T²·KD + kd_ce_alpha·CE`, KD averaged over the "
                "positions with teacher targets.",
    "kd_ce_alpha": "`kd`: weight of the token-mean cross-entropy of the data's own tokens (at temperature 1) in "
                   "that loss; 0 learns from the teacher alone.",
    "kd_divergence": "`kd`: the divergence over the K teacher ids (every vocabulary id with a live teacher and "
                     "`kd_top_k` null), p the teacher and q the student: `forward_kl` Σ p(log p − log q), "
                     "`reverse_kl` Σ q(log q − log p), or `jsd` (mixture weight `kd_beta`).",
    "kd_beta": "`kd` with `kd_divergence: jsd`: b in `b·KL(p‖m) + (1 − b)·KL(q‖m)`, `m = b·p + (1 − b)·q`; the "
               "value must lie in (0, 1) there.",
    "kd_normalize_topk": "`kd`: renormalise the student's probabilities over the K teacher ids instead of the full "
                         "vocabulary.",
    "kd_on_policy_ratio": "`kd` with `kd_teacher`: the share λ of optimizer steps that distil on the student's own "
                          "samples (on-policy distillation, GKD; TRL's `lmbda`). Each step is on-policy with "
                          "probability λ, drawn from `seed` and the step number (all ranks alike, the same on "
                          "resume): the last reply of every row is replaced by one the student samples from what "
                          "precedes it (`temperature`, `top_p`, `top_k`, `max_completion_length`), and the teacher's "
                          "top-`kd_top_k` (or whole distribution) is taken on those tokens; the `kd_ce_alpha` term is "
                          "off on such steps. "
                          "Logs `on_policy` (1 or 0), `completions/mean_length`, `completions/clipped_ratio` and "
                          "text samples. Evaluation always uses the data's replies. 0: never; 1: always. Needs "
                          "unpacked rows (`sample_packing: false`). Multi-turn rows keep their earlier turns as the "
                          "prompt; plain-text rows (no prompt) continue their first token.",
    "kd_teacher_replies": "`kd` with `kd_teacher`: sequence-level KD (TRL's `seq_kd`): every step that is not "
                          "on-policy replaces the last reply of each row by one the teacher samples (same sampling "
                          "keys) and trains on it, the teacher's top-k and the `kd_ce_alpha` term alike; logs "
                          "`teacher_completions/mean_length` and `.../clipped_ratio`. Evaluation uses the data's "
                          "replies.",
    "z_loss": "`sft`: coefficient of the z-loss `z_loss·lse²` added per completion token (lse: log-sum-exp of the "
              "logits), which keeps logits small.",
    # Online RL (GRPO, RLOO, PPO and online DPO)
    "num_generations": "`grpo` and `rloo`: completions sampled per prompt, the group whose rewards are compared "
                       "(GRPO normalises them, RLOO takes each one's baseline from the others); null: 8 for `grpo`, "
                       "2 for `rloo` (TRL's defaults). Each update micro-batch holds `micro_batch_size × "
                       "num_generations` completions. `ppo` samples one completion per prompt, `online_dpo` two.",
    "num_generations_eval": "`grpo` and `rloo`: completions per held-out prompt (TRL's key), to make evaluation "
                            "cheaper; null: `num_generations`.",
    "temperature": "`grpo`, `rloo`, `ppo` and `online_dpo`: the sampling temperature; the policy, old and reference "
                   "token logprobs of the losses are taken at it too (logits / T). `online_dpo` samples at it; its DPO "
                   "loss reads the models' own logprobs (T = 1), as offline DPO. `kd` samples replies at it "
                   "(`kd_on_policy_ratio`, `kd_teacher_replies`) and distils at `kd_temperature`.",
    "top_p": "`grpo`, `rloo`, `ppo`, `online_dpo` and `kd`'s sampled replies: nucleus-sampling threshold (1: off). It "
             "shapes sampling only; logprobs use the full vocabulary.",
    "top_k": "`grpo`, `rloo`, `ppo`, `online_dpo` and `kd`'s sampled replies: sample from the k most likely tokens "
             "only (null or 0: off). It shapes sampling only, like `top_p`.",
    "max_completion_length": "`grpo`, `rloo`, `ppo`, `online_dpo` and `kd`'s sampled replies: most new tokens per "
                             "completion; one with no EOS by then is truncated (`completions/clipped_ratio`, "
                             "`mask_truncated_completions`). GRPO's `dr_grpo` loss divides by it and the built-in "
                             "`length` reward scales by it.",
    "epsilon": "`grpo` and `rloo`: the lower clip range ε of the importance ratio, `clip(ρ, 1 − ε, 1 + ε_high)` "
               "(RLOO's ρ is one per completion, `e^(Σ_t L_t − L_old,t)`, as TRL). PPO's clip range is `cliprange`.",
    "epsilon_high": "`grpo` and `rloo`: the upper clip range ε_high (DAPO's clip-higher); null uses `epsilon`. With "
                    "`loss_type: cispo` the importance weight's cap is 1 + ε_high (the only clip; MiniMax-M1 tunes "
                    "it).",
    "delta": "`grpo`: optional cap on ρ in the unclipped term (two-sided clipping, `min(ρ, δ)·A`); must be greater "
             "than 1 + ε_high. Null: no cap.",
    "importance_sampling_level": "`grpo`: `token`: one ratio per token, `ρ_t = e^(L_t − L_old,t)`; `sequence` "
                                 "(GSPO): one ratio per completion, from the mean of its token log ratios "
                                 "(`loss_type: luspo` needs it, `vespo` refuses it).",
    "scale_rewards": "`grpo`: advantages are `(r − mean of the group)` divided by the group's std + 1e-4 "
                     "(`group`), by the std of the whole batch over all ranks + 1e-4 (`batch`), or not divided "
                     "(`none`). Read with `multi_objective_aggregation: sum_then_normalize` only.",
    "multi_objective_aggregation": "`grpo` (TRL's key): how several reward sources make one advantage. "
                                   "`sum_then_normalize`: the `reward_weights`-weighted sum r, then `scale_rewards`. "
                                   "`normalize_then_sum` (GDPO): each source's rewards are "
                                   "normalised within each group first (mean and std of the completions it scored), "
                                   "their weighted sum is then centred and divided by its std + 1e-4 over the whole "
                                   "batch (every rank's completions), so a source with a wide range cannot drown "
                                   "the others. `reward`, `reward_std` and `frac_reward_zero_std` still describe "
                                   "the weighted sum r.",
    "num_iterations": "`grpo` and `rloo`: optimizer updates per rollout, each over all the rollout's micro-batches. "
                      "Above 1 the sampling policy's logprobs are stored before the first update, so later updates see "
                      "ρ ≠ 1 (RLOO takes them anyway when beta > 0, for the KL in the reward, but with 1 iteration its "
                      "ρ is exactly 1).",
    "mask_truncated_completions": "`grpo` and `rloo`: completions that reach `max_completion_length` without EOS "
                                  "get no loss (their labels are masked, and RLOO's KL over their tokens is 0); they "
                                  "still count in their group's reward statistics.",
    "top_entropy_quantile": "`grpo`: ρ of \"Beyond the 80/20 Rule\" (TRL's key): the policy-gradient term is kept "
                            "only on tokens whose entropy (at `temperature`, a side output of the fused kernel) is "
                            "at least the 1 − ρ quantile of the micro-batch's completion tokens on every rank; the "
                            "KL term and the loss's token count keep all tokens. 1 keeps all (off); 0.2 trains on "
                            "the 20% most uncertain tokens.",
    "sapo_temperature_pos": "`grpo` with `loss_type: sapo`: the gate's temperature τ for tokens of positive "
                            "advantage (TRL's default); larger τ attenuates off-policy tokens (ρ far from 1) faster.",
    "sapo_temperature_neg": "`grpo` with `loss_type: sapo`: τ for tokens of zero or negative advantage (TRL's "
                            "default, slightly above the positive one as in the SAPO paper).",
    "vespo_k_pos": "`grpo` with `loss_type: vespo`: the shape k of the weight `φ(w) = e^λ·w^k·e^(−λw)` for "
                   "completions of zero or positive advantage (TRL's default).",
    "vespo_lambda_pos": "`grpo` with `loss_type: vespo`: the rate λ of that weight where A >= 0 (TRL's default).",
    "vespo_k_neg": "`grpo` with `loss_type: vespo`: k where A < 0 (TRL's default).",
    "vespo_lambda_neg": "`grpo` with `loss_type: vespo`: λ where A < 0 (TRL's default).",
    "off_policy_mask_threshold": "`grpo`: DeepSeek-V3.2's off-policy sequence masking (TRL's key): a completion with a "
                                 "negative advantage loses its policy-gradient term when the mean over its tokens of "
                                 "log π_old − log π (the drift since sampling) exceeds this. Needs `num_iterations` "
                                 "> 1 (with 1 the sampling policy is the trained one). Null: off.",
    "use_bias_correction_kl": "`grpo`: DeepSeek-V3.2's unbiased KL estimate (TRL's key): the k3 penalty of each token "
                              "is multiplied by its importance ratio ρ, since tokens were sampled from π_old. Needs "
                              "beta > 0.",
    "normalize_advantages": "`rloo`: divide the leave-one-out advantages, less their mean, by their std + 1e-4 over "
                            "the whole batch (every rank's completions), as TRL's RLOO key.",
    "reward_clip_range": "`rloo`: `[low, high]` bounds the weighted reward is clipped to before the KL penalty and "
                         "the baseline (TRL's RLOO key); the logged `reward` is the unclipped one. Null: no clipping.",
    "reward_funcs": "`grpo`, `rloo` and `online_dpo`: reward functions, summed with `reward_weights`: built-ins "
                    "`accuracy` (against a `solution` or `answer` column), `format` (`reward_format_pattern`), "
                    "`length` (−tokens / `max_completion_length`) and `soft_overlong` (DAPO's soft overlong "
                    "punishment, TRL's: 0 up to `max_completion_length − soft_punish_cache` tokens, then down to −1 "
                    "at the limit), or `package.module:function`, "
                    "`package.module.function`, `path/file.py:function`, called as `f(prompts, completions, **columns) "
                    "-> list[float | None]`. GRPO, RLOO and online DPO need these or `reward_model`; `ppo` rejects "
                    "them.",
    "reward_weights": "`grpo`, `rloo` and `online_dpo`: one weight per reward source, the `reward_funcs` in order and "
                      "then `reward_model` when set; null weighs each 1.0. A None reward leaves that source out of the "
                      "sample's sum.",
    "reward_model": "A folder written by `rl: rm` (backbone + `value_head.safetensors`) that scores prompt + "
                    "completion at its last token. `ppo`: required; the frozen scorer and the starting weights of the "
                    "trained value model. `grpo`, `rloo`, `online_dpo`: an optional reward source next to "
                    "`reward_funcs`.",
    "reward_format_pattern": "`grpo`, `rloo` and `online_dpo`: the regular expression the built-in `format` reward "
                             "searches each completion for (1.0 on a match, else 0.0); the default wants "
                             "`<think>...</think>` then `<answer>...</answer>`.",
    "soft_punish_cache": "`grpo`, `rloo` and `online_dpo` with `soft_overlong` in `reward_funcs` (and only then): "
                         "the last tokens before `max_completion_length` over which that reward falls linearly from "
                         "0 to −1 (DAPO used 4096 of 20480).",
    "kl_coef": "`ppo`: weight of the per-token KL penalty in the rewards: `r_t = −kl_coef·KL_t`, plus the reward "
               "model's score on the last completion token (GRPO's KL weight is `beta`).",
    "kl_estimator": "`ppo`: the per-token KL estimate of those rewards: `k1` = L − R, or `k3` = e^(R − L) − (R − L) "
                    "− 1 (GRPO always uses k3).",
    "cliprange": "`ppo`: the policy-ratio clip c in `max(−A·ρ, −A·clip(ρ, 1 − c, 1 + c))`.",
    "vf_coef": "`ppo`: weight of the value loss: `loss = pg + vf_coef·vf`.",
    "cliprange_value": "`ppo`: the value clip cv in `0.5·mean(max((v − ret)², (clip(v, v_old ± cv) − ret)²))`.",
    "gamma": "`ppo`: the GAE discount γ in `δ_t = r_t + γ·V_(t+1) − V_t`.",
    "lam": "`ppo`: the GAE λ in `A_t = δ_t + γλ·A_(t+1)`; returns are A + V, and A is then whitened.",
    "missing_eos_penalty": "`ppo` and `online_dpo`: subtracted from the score of every completion that reaches "
                           "`max_completion_length` without an EOS (TRL's key; null: none); `objective/scores` "
                           "includes it.",
    "whiten_rewards": "`ppo`: scale the per-token rewards to unit variance over the completion tokens (their mean "
                      "not shifted) before GAE.",
    "num_ppo_epochs": "`ppo`: passes over each rollout, each over a fresh permutation of its rows.",
    "num_mini_batches": "`ppo`: optimizer updates per pass; a rollout takes `micro_batch_size × "
                        "gradient_accumulation_steps × num_mini_batches` prompts per device, one completion each.",
    "num_sample_generations": "`grpo`, `rloo`, `ppo` and `online_dpo`: how many times, evenly spaced over the run, the "
                              "first 8 prompts and completions of the latest rollout (with what they scored) are "
                              "logged to `samples.jsonl` and TensorBoard; 0 logs none. `kd` logs its sampled replies "
                              "(the student's or the teacher's) the same way, on steps that sampled.",
    "local_rollout_forward_batch_size": "`grpo`, `rloo`, `ppo` and `online_dpo`: rows per chunk of the no-grad forward "
                                        "passes over a rollout (old and reference logprobs, values, reward-model "
                                        "scores); lower it to save memory. Generation runs one micro-batch of prompts "
                                        "at a time.",
    # Optimisation
    "micro_batch_size": "Rows per device per micro-batch: examples for `sft`, `kd`, `prm` and `kto` (`kto` with "
                        "`loss_type: kto` needs >= 2, and a pair row gives two), pairs for `dpo`, `ipo`, `cpo`, "
                        "`simpo`, `orpo` and `rm` (two sequences each), prompts for `grpo` and `rloo` "
                        "(`num_generations` completions each), `ppo` and `online_dpo`. Each epoch drops the tail of "
                        "the shuffled rows that does not fill `micro_batch_size × ranks`.",
    "eval_batch_size": "Rows per held-out batch, in `micro_batch_size`'s units (null: `micro_batch_size`); also the "
                       "batch of the `precompute_ref_log_probs` pass. Every held-out row is evaluated once; "
                       "`kto` with `loss_type: kto` needs >= 2.",
    "gradient_accumulation_steps": "Micro-batches whose gradients make one optimizer step; the step's loss is their "
                                   "mean weighted by label tokens (`sft`, `kd`) or rows. `grpo` and `rloo` sample one "
                                   "rollout from that many micro-batches of prompts; each `ppo` mini-batch update is "
                                   "that many micro-batches.",
    "num_epochs": "Passes over the training data (fractions allowed): ceil(micro-batches per epoch × num_epochs / "
                  "micro-batches per round) × updates per round optimizer steps. Ignored when `max_steps` is set.",
    "max_steps": "Total optimizer steps, overriding `num_epochs`; online, each rollout gives `num_iterations` (`grpo`, "
                 "`rloo`) or `num_ppo_epochs × num_mini_batches` (`ppo`) steps. The schedule and `warmup_ratio` are "
                 "computed from the total.",
    "learning_rate": "Peak AdamW learning rate, reached after warmup.",
    "weight_decay": "AdamW decoupled weight decay, on matrices (parameters with >= 2 dimensions) only; biases and "
                    "norms get none.",
    "adam_beta1": "AdamW β1, the decay of the first-moment estimate.",
    "adam_beta2": "AdamW β2, the decay of the second-moment estimate.",
    "adam_epsilon": "AdamW ε, added to the denominator.",
    "lr_scheduler": "The learning-rate schedule after warmup: `cosine` or `linear` decay to 0 at the last step, or "
                    "`constant`.",
    "cosine_min_lr_ratio": "With `lr_scheduler: cosine`, decay to this fraction of `learning_rate` instead of 0 "
                           "(axolotl's key).",
    "warmup_steps": "Steps of linear warmup, from `learning_rate / (warmup + 1)` up to `learning_rate`; when above "
                    "0 it overrides `warmup_ratio`.",
    "warmup_ratio": "Warmup as a fraction of the total steps (`int(warmup_ratio × steps)`), used when "
                    "`warmup_steps` is 0.",
    "max_grad_norm": "Clip the global gradient norm of the trainable parameters to this value; 0 or null: no "
                     "clipping. The norm before clipping is logged as `grad_norm` either way.",
    "bf16": "bfloat16 autocast of forward passes and losses: `auto` and `true` enable it on a CUDA GPU that "
            "supports bf16 and do nothing elsewhere; `false` disables it. Weights stay in `model_dtype`.",
    "gradient_checkpointing": "Recompute decoder-layer activations in the backward (non-reentrant) to save memory, "
                              "in PPO's value model and the reward model's backbone too.",
    "fsdp": "Under torchrun, shard parameters, gradients and AdamW state over the ranks (PyTorch FSDP2, one unit per "
            "decoder layer) instead of keeping a whole copy on each; the reference and reward models are sharded "
            "too; under bf16 autocast weights are gathered in bf16 and gradients reduced in fp32. Checkpoints "
            "then hold each rank's shards (resume with as many ranks; `fusedrl export` joins "
            "them); `final/` is gathered and written whole. "
            "Only rank 0 reads the weights (the others build the models on the meta device and receive their "
            "shards). Sampling (GRPO, PPO) gathers the "
            "policy whole for the rollout and steps all ranks in lockstep. Ignored by a single process.",
    "fsdp_gather_for_generation": "`grpo`/`rloo`/`ppo`/`online_dpo` (and `kd`'s sampled replies) under `fsdp`: gather "
                                  "the policy whole on every GPU for each rollout (fast; as TRL's "
                                  "`ds3_gather_for_generation`). `false` gathers each layer at each new token instead: "
                                  "slow, for a policy whose whole weights do not fit on one GPU.",
    "torch_compile": "`torch.compile` each decoder layer of the trained, reference and reward models (regional "
                     "compilation with dynamic shapes: one compile serves every layer and length; names and "
                     "checkpoints unchanged). The fused loss kernels stay as they are; sampling runs the layers "
                     "eagerly. The first steps compile a graph per grad mode and padding (a few, each once).",
    "disable_dropout": "Set every dropout rate of the trained model (LoRA's included) to 0; null takes the default "
                       "(`effective_disable_dropout`): false for `sft`, true for every other algorithm, so the loss's "
                       "logprobs are computed like the old and reference ones.",
    "seed": "Seeds Python and torch; epoch e's data order is shuffled with `seed + e`, `val_set_size` splits with "
            "it, and under torchrun each rank samples with `seed + rank`.",
    "kernel_backend": "The fused loss kernels: `auto` (Triton on CUDA when it imports, else `torch`), `triton`, "
                      "`torch` (chunked PyTorch, any device, no [tokens, vocab] tensor) or `eager` (full logits, a "
                      "reference for debugging). Every algorithm but `rm` and `prm`.",
    # Logging and checkpoints
    "logging_steps": "Write the training metrics to `metrics.jsonl` (and TensorBoard) every this many steps and at "
                     "the last step; other steps' metrics are not kept.",
    "eval_steps": "Evaluate on the held-out set every this many steps, besides before training (unless resumed) "
                  "and at the end; null or 0: only those.",
    "save_steps": "Write a resumable checkpoint `checkpoint-<step>` (weights, optimizer, schedule, data position, "
                  "RNG, a pending rollout) every this many steps; null or 0: none. The trained model goes to "
                  "`final/` either way.",
    "save_total_limit": "Keep only the newest this many checkpoints, deleting older ones after each save; null "
                        "keeps all.",
    "resume_from_checkpoint": "`latest` (the newest complete checkpoint in `output_dir`; a fresh start when there is "
                              "none) or a checkpoint folder: the run continues exactly where that checkpoint was "
                              "saved, on as many ranks as wrote it. Null starts fresh.",
    "overwrite_output_dir": "A run that does not resume from a checkpoint of `output_dir` refuses to start where "
                            "an earlier run left checkpoints (they would be pruned in place of the new ones, and "
                            "`latest` would resume the old run); true deletes them first.",
    "tensorboard": "Also log metrics and text samples to `output_dir/tensorboard` (skipped with a warning when "
                   "tensorboard is not installed).",
    "wandb_project": "Also log metrics, the config and text samples to this Weights & Biases project (needs "
                     "`pip install wandb`; rank 0 only). Metrics are `train/*` and `eval/*` against "
                     "`train/global_step`; a resumed run continues the same W&B run (its id is in each checkpoint).",
    "wandb_entity": "The W&B team or user of `wandb_project` (null: your default entity).",
    "wandb_name": "The W&B run's display name (null: W&B picks one).",
    "wandb_mode": "`online`, `offline` (written under `output_dir/wandb`, `wandb sync` later) or `disabled`; null: "
                  "W&B's own setting (`WANDB_MODE`).",
    "plot": "Write `training_curves.png` of the algorithm's main metrics at the end (needs matplotlib).",
    "progress_bar": "Show a tqdm progress bar with the algorithm's progress metrics (rank 0 only).",
}

SECTIONS: list[tuple[str, list[str]]] = [
    ("Model and algorithm", ["base_model", "rl", "gguf_file", "tokenizer", "trust_remote_code", "model_dtype",
                             "attn_implementation", "chat_template"]),
    ("Data and output", ["datasets", "test_datasets", "val_set_size", "max_length", "max_prompt_length", "on_bad_row",
                         "dataset_num_proc", "sample_packing", "kd_top_k", "output_dir"]),
    ("Adapter and reference", ["adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                               "rl_adapter_ref_model", "ref_model", "precompute_ref_log_probs", "sync_ref_model",
                               "ref_model_mixup_alpha", "ref_model_sync_steps"]),
    ("Losses", ["beta", "loss_type", "loss_weights", "f_divergence_type", "f_alpha_divergence_coef", "use_weighting",
                "ld_alpha", "label_smoothing", "rpo_alpha", "cpo_alpha", "simpo_gamma", "alpha", "desirable_weight",
                "undesirable_weight", "center_rewards_coefficient", "step_separator", "train_on_last_step_only",
                "kd_teacher", "kd_temperature",
                "kd_generation_temperature", "kd_alpha", "kd_ce_alpha", "kd_divergence", "kd_beta", "kd_normalize_topk",
                "kd_on_policy_ratio", "kd_teacher_replies", "z_loss"]),
    ("Online RL (GRPO, RLOO, PPO and online DPO; sampling also for KD's sampled replies)",
     ["num_generations", "num_generations_eval", "temperature", "top_p", "top_k", "max_completion_length", "epsilon", "epsilon_high", "delta",
      "importance_sampling_level", "scale_rewards", "multi_objective_aggregation", "num_iterations",
      "mask_truncated_completions", "top_entropy_quantile", "sapo_temperature_pos", "sapo_temperature_neg",
      "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg", "off_policy_mask_threshold",
      "use_bias_correction_kl", "normalize_advantages", "reward_clip_range", "reward_funcs", "reward_weights",
      "reward_model", "reward_format_pattern", "soft_punish_cache", "kl_coef",
      "kl_estimator", "cliprange", "vf_coef", "cliprange_value", "gamma", "lam", "whiten_rewards",
      "missing_eos_penalty", "num_ppo_epochs", "num_mini_batches", "num_sample_generations",
      "local_rollout_forward_batch_size"]),
    ("Optimisation", ["micro_batch_size", "eval_batch_size", "gradient_accumulation_steps", "num_epochs", "max_steps",
                      "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler",
                      "cosine_min_lr_ratio", "warmup_steps", "warmup_ratio", "max_grad_norm", "bf16",
                      "gradient_checkpointing", "fsdp", "fsdp_gather_for_generation", "torch_compile",
                      "disable_dropout", "seed", "kernel_backend"]),
    ("Logging and checkpoints", ["logging_steps", "eval_steps", "save_steps", "save_total_limit",
                                 "resume_from_checkpoint", "overwrite_output_dir", "tensorboard", "wandb_project",
                                 "wandb_entity", "wandb_name", "wandb_mode", "plot", "progress_bar"]),
]

_INTRO = (
    "`fusedrl train CONFIG.yaml [--key value ...]` reads the file with `yaml.safe_load`. Each `--key value` (or "
    "`--key=value`; dashes in the key read as underscores) overrides one key, its value parsed as YAML, and replaces "
    "the file's value of that key under any alias. Only `base_model` and `datasets` must be given. The whole config "
    "is checked before any model loads: an unknown key is an error naming the closest valid key, and a value of the "
    "wrong type or outside the allowed choices or range (`[`/`]` closed, `(` open) is an error naming its key; rules "
    "that involve several keys are in the descriptions. A key that only some algorithms read (the descriptions start "
    "with them), set away from its default under another `rl`, is an error rather than silently unused. Integers "
    "are accepted where a float is expected, and so is YAML 1.1's dot-less `3e-4`."
)

_ALIASES_NOTE = ("Other spellings accepted for a key (axolotl's and common short names); giving a key and its alias "
                 "different values is an error.")


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def default_text(f: dataclasses.Field) -> str:
    """The default of field ``f`` as a table cell: its value (or its factory's) in code, or ``required``."""
    if f.default is not dataclasses.MISSING:
        return f"`{yaml_text(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{yaml_text(f.default_factory())}`"
    return "required"


def allowed_text(f: dataclasses.Field) -> str:
    """The values field ``f``'s metadata allows: its choices, ``>= low``, ``> low`` or ``[low, high]`` (``(`` or
    ``)`` at an open end); empty when the metadata has neither."""
    meta = f.metadata
    if "choices" in meta:
        return ", ".join(f"`{yaml_text(choice)}`" for choice in meta["choices"])
    if meta.get("low") is None:
        return ""
    low, high, low_open = meta["low"], meta["high"], meta["low_open"]
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if meta['high_open'] else ']'}"


def markdown() -> str:
    """The config reference as Markdown: how configs are read, one table per section, then the aliases."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    lines = [
        "# `fusedrl train` config reference",
        "",
        "<!-- Generated from fusedrl/engine/config.py and config_reference.py by "
        "`python -m fusedrl.engine.config_reference > docs/config.md`; do not edit by hand. -->",
        "",
        _INTRO,
    ]
    for title, names in SECTIONS:
        lines += ["", f"## {title}", "", "| key | default | allowed | description |", "| --- | --- | --- | --- |"]
        for name in names:
            f = fields[name]
            cells = [f"`{name}`", default_text(f), allowed_text(f), DESCRIPTIONS[name]]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines += ["", "## Aliases", "", _ALIASES_NOTE, "", "| alias | key |", "| --- | --- |"]
    lines += [f"| `{alias}` | `{name}` |" for alias, name in ALIASES.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the Markdown reference (``python -m fusedrl.engine.config_reference > docs/config.md``)."""
    print(markdown(), end="")


if __name__ == "__main__":
    main()
