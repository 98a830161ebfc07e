"""Real-shaped config.json dicts of the families the planner reads, written from the published
models' configs (the shapes in each model's paper or model card; nothing is downloaded), with the
parameter counts published for them. Shared by the unit tests (pure: the formula) and the torch
tests (transformers' meta-device count).

PUBLISHED: the count the family publishes (model card or paper, in billions, as rounded there), so
a formula or count far from it fails; the exact integers the tests pin are transformers' own
meta-device counts (tests/torch/test_hf_counts.py checks them)."""
from __future__ import annotations

_ROPE = {"rope_type": "default"}

CONFIGS = {
    # Radford et al. 2019; the HF gpt2 config (124M)
    "gpt2": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
             "n_positions": 1024, "n_ctx": 1024, "activation_function": "gelu_new",
             "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True},
    # Touvron et al. 2023, Table 1 (Llama 2 7B)
    "llama2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                  "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                  "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False},
    # Jiang et al. 2023 (Mistral 7B), Table 1: GQA 8 KV heads, sliding window 4096
    "mistral-7b-v0.1": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                        "num_hidden_layers": 32, "num_attention_heads": 32,
                        "num_key_value_heads": 8, "vocab_size": 32000,
                        "max_position_embeddings": 32768, "sliding_window": 4096,
                        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
                        "tie_word_embeddings": False},
    # Qwen Team 2024 (Qwen2 technical report), Table 1: 7B and 0.5B (tied embeddings)
    "qwen2-7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
                 "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                 "vocab_size": 152064, "max_position_embeddings": 131072, "rope_theta": 1e6,
                 "rms_norm_eps": 1e-6, "sliding_window": 131072, "use_sliding_window": False,
                 "max_window_layers": 28, "hidden_act": "silu", "tie_word_embeddings": False},
    "qwen2-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                   "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                   "vocab_size": 151936, "max_position_embeddings": 131072, "rope_theta": 1e6,
                   "rms_norm_eps": 1e-6, "sliding_window": 131072, "use_sliding_window": False,
                   "max_window_layers": 24, "hidden_act": "silu", "tie_word_embeddings": True},
    # Qwen Team 2024 (Qwen2.5 technical report), Table 1: 14B
    "qwen2.5-14b": {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 13824,
                    "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8,
                    "vocab_size": 152064, "max_position_embeddings": 32768, "rope_theta": 1e6,
                    "rms_norm_eps": 1e-5, "sliding_window": 131072, "use_sliding_window": False,
                    "max_window_layers": 48, "hidden_act": "silu", "tie_word_embeddings": False},
    # Qwen Team 2025 (Qwen3 technical report), Table 1: 8B and 0.6B; head_dim 128 (QK-norm)
    "qwen3-8b": {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288,
                 "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                 "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
                 "rope_theta": 1e6, "rms_norm_eps": 1e-6, "attention_bias": False,
                 "use_sliding_window": False, "sliding_window": None, "max_window_layers": 36,
                 "hidden_act": "silu", "tie_word_embeddings": False},
    "qwen3-0.6b": {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
                   "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                   "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
                   "rope_theta": 1e6, "rms_norm_eps": 1e-6, "attention_bias": False,
                   "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28,
                   "hidden_act": "silu", "tie_word_embeddings": True},
    # Abdin et al. 2024 (Phi-3), Section 2: phi-3-mini, 3.8B, 4k context
    "phi3-mini-4k": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                     "vocab_size": 32064, "max_position_embeddings": 4096, "sliding_window": 2047,
                     "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
                     "tie_word_embeddings": False},
    # Gemma Team 2024 (Gemma 2), Table 1: 9B; head_dim 256, every other layer a 4096 window
    "gemma2-9b": {"model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336,
                  "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8,
                  "head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192,
                  "sliding_window": 4096, "query_pre_attn_scalar": 256,
                  "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                  "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                  "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True},
    # Black et al. 2022 (GPT-NeoX-20B), Table 1: parallel residual, rotary on 25% of each head
    "gpt-neox-20b": {"model_type": "gpt_neox", "hidden_size": 6144, "intermediate_size": 24576,
                     "num_hidden_layers": 44, "num_attention_heads": 64, "vocab_size": 50432,
                     "max_position_embeddings": 2048, "rotary_pct": 0.25,
                     "rotary_emb_base": 10000, "use_parallel_residual": True,
                     "layer_norm_eps": 1e-5, "hidden_act": "gelu_fast",
                     "tie_word_embeddings": False},
    # Jiang et al. 2024 (Mixtral of Experts), Table 1: 8 experts, 2 per token
    "mixtral-8x7b": {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
                     "max_position_embeddings": 32768, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
                     "sliding_window": None, "hidden_act": "silu", "tie_word_embeddings": False},
    # deepseek-ai/DeepSeek-V3 config.json: multi-head latent attention (kv_lora_rank 512,
    # q_lora_rank 1536, 64-dim RoPE keys), 256 routed experts (8 per token) and a shared one, the
    # first 3 layers dense; transformers builds no multi-token-prediction layer (671B of 685B)
    "deepseek-v3": {"model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
                    "intermediate_size": 18432, "moe_intermediate_size": 2048,
                    "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
                    "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
                    "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
                    "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128,
                    "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 8,
                    "topk_group": 4, "num_experts_per_tok": 8, "moe_layer_freq": 1,
                    "first_k_dense_replace": 3, "norm_topk_prob": True, "scoring_func": "sigmoid",
                    "hidden_act": "silu", "max_position_embeddings": 163840, "rms_norm_eps": 1e-06,
                    "rope_theta": 10000,
                    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                                     "mscale_all_dim": 1.0,
                                     "original_max_position_embeddings": 4096, "type": "yarn"},
                    "tie_word_embeddings": False, "attention_bias": False},
}

# DeepSeek-V3's family scaled down (every feature kept: the query and KV latents, a first dense layer,
# the shared expert, grouped routing), small enough for transformers to build on the CPU
DEEPSEEK_V3_SMALL = dict(CONFIGS["deepseek-v3"], vocab_size=1000, hidden_size=1024,
                         intermediate_size=2048, moe_intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, n_routed_experts=16,
                         kv_lora_rank=64, q_lora_rank=96, qk_rope_head_dim=16, v_head_dim=32,
                         qk_nope_head_dim=32, n_group=4, topk_group=2, num_experts_per_tok=4,
                         first_k_dense_replace=1)

# billions, as published (model card / paper); the exact counts are transformers' (EXACT)
PUBLISHED = {"gpt2": 0.124, "llama2-7b": 6.7, "mistral-7b-v0.1": 7.24, "qwen2-7b": 7.6,
             "qwen2-0.5b": 0.49, "qwen2.5-14b": 14.7, "qwen3-8b": 8.2, "qwen3-0.6b": 0.6,
             "phi3-mini-4k": 3.8, "gemma2-9b": 9.24, "gpt-neox-20b": 20.6, "mixtral-8x7b": 46.7,
             "deepseek-v3": 671}

# transformers' meta-device counts of CONFIGS (tests/torch/test_hf_counts.py measures them)
EXACT = {"gpt2": 124_439_808, "llama2-7b": 6_738_415_616, "mistral-7b-v0.1": 7_241_732_096,
         "qwen2-7b": 7_615_616_512, "qwen2-0.5b": 494_032_768, "qwen2.5-14b": 14_770_033_664,
         "qwen3-8b": 8_190_735_360, "qwen3-0.6b": 596_049_920, "phi3-mini-4k": 3_821_079_552,
         "gemma2-9b": 9_241_705_984, "gpt-neox-20b": 20_554_567_680,
         "mixtral-8x7b": 46_702_792_704, "deepseek-v3": 671_026_404_352}

# One small config of every family with a shape reader (topology/hf_families.py READERS), each
# keeping what its family differs in (GQA, a head_dim other than h/a, tied or untied tables,
# windows, QK-norm, parallel residual, partial rotary, experts, shared experts, dense-only layers,
# MLA with and without the query latent), for transformers to build on the meta device in
# milliseconds: tests/torch/test_hf_shape_counts.py pins the shape formula's count to it.
_TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)
SMALL = {
    "gpt2": dict(CONFIGS["gpt2"], n_layer=2, n_embd=64, n_head=4, vocab_size=1000,
                 n_positions=128, n_ctx=128),
    "llama": dict(CONFIGS["llama2-7b"], **_TINY),
    "mistral": dict(CONFIGS["mistral-7b-v0.1"], **_TINY, sliding_window=64),
    "qwen2": dict(CONFIGS["qwen2-0.5b"], **_TINY),
    "qwen3": dict(CONFIGS["qwen3-0.6b"], **_TINY, head_dim=32),
    "gpt_neox": dict(CONFIGS["gpt-neox-20b"], **{k: v for k, v in _TINY.items()
                                                 if k != "num_key_value_heads"}),
    "phi3": dict(CONFIGS["phi3-mini-4k"], **_TINY, sliding_window=63, pad_token_id=None,
                 eos_token_id=None),
    "gemma": {"model_type": "gemma", **_TINY, "num_key_value_heads": 1, "head_dim": 32,
              "hidden_act": "gelu_pytorch_tanh"},
    "gemma2": dict(CONFIGS["gemma2-9b"], **_TINY, head_dim=32, sliding_window=64,
                   query_pre_attn_scalar=32),
    "mixtral": dict(CONFIGS["mixtral-8x7b"], **_TINY, num_local_experts=4),
    "qwen2_moe": {"model_type": "qwen2_moe", **_TINY, "num_hidden_layers": 4, "num_experts": 8,
                  "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 48, "decoder_sparse_step": 1,
                  "mlp_only_layers": [0], "tie_word_embeddings": False},
    "qwen3_moe": {"model_type": "qwen3_moe", **_TINY, "head_dim": 32, "num_experts": 8,
                  "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1,
                  "mlp_only_layers": [], "norm_topk_prob": True, "tie_word_embeddings": False},
    # DeepSeek-V2-Lite's form: no query latent (q_lora_rank null), two shared experts
    "deepseek_v2": {"model_type": "deepseek_v2", **_TINY, "num_hidden_layers": 3,
                    "num_key_value_heads": 4, "moe_intermediate_size": 32, "n_routed_experts": 8,
                    "n_shared_experts": 2, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
                    "kv_lora_rank": 32, "q_lora_rank": None, "qk_rope_head_dim": 8,
                    "qk_nope_head_dim": 16, "v_head_dim": 16, "n_group": 2, "topk_group": 1},
    "deepseek_v3": DEEPSEEK_V3_SMALL,
}
