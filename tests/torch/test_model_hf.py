"""Hugging Face export and import in one process (tp=1). Multi-rank layouts, and export from a
DeepSpeed checkpoint, are covered by test_model_parallel.py's 3D run."""
from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForCausalLM

from llmlaunch.model import LocalLM, local_canonical_state, save_hf, spec_from_hf_config
from llmlaunch.model.hf_import import HFWeights
from llmlaunch.model.sharding import load_canonical
from hf_models import hf_logits, hf_state, make_random_hf_model  # tests/helpers
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.params import total_params

SPECS = {
    "gpt2": ModelSpec(arch="gpt2", layers=3, hidden=64, heads=4, vocab=200, seq_len=16),
    "llama": ModelSpec(arch="llama", layers=3, hidden=64, heads=4, kv_heads=2, vocab=200,
                       seq_len=16, rope_theta=500000.0, norm_eps=1e-6),
    # Llama 3.2 1B's tied head, a head dim other than h/a
    "llama_tied": ModelSpec(arch="llama", layers=2, hidden=64, heads=4, kv_heads=2, head_dim=32,
                            vocab=200, seq_len=16, tied_embeddings=True),
    # a window shorter than the sequence: transformers' sliding mask
    "mistral": ModelSpec(arch="mistral", layers=2, hidden=64, heads=4, kv_heads=2, vocab=200,
                         seq_len=16, sliding_window=5, norm_eps=1e-6),
    "qwen2": ModelSpec(arch="qwen2", layers=2, hidden=64, heads=4, kv_heads=2, vocab=200,
                       seq_len=16, rope_theta=1e6, norm_eps=1e-6, tied_embeddings=True),
    "qwen3": ModelSpec(arch="qwen3", layers=2, hidden=64, heads=4, kv_heads=2, head_dim=32,
                       vocab=200, seq_len=16, rope_theta=1e6, norm_eps=1e-6),
}
# fp32 logits of the same weights, ours against transformers' own implementation
EXACT = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", SPECS)
def test_export_gives_hf_our_logits_and_published_count(arch, tmp_path):
    spec = SPECS[arch]
    model = LocalLM(spec, seed=3)
    out = save_hf(spec, local_canonical_state(model), tmp_path / "hf")
    tokens = torch.randint(0, spec.vocab, (2, spec.seq_len),
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens)[..., :spec.vocab]
    torch.testing.assert_close(hf_logits(out, tokens), ours, **EXACT)

    exported = AutoModelForCausalLM.from_pretrained(str(out))
    assert sum(p.numel() for p in exported.parameters()) == total_params(spec)
    if spec.tied_embeddings:
        assert exported.lm_head.weight.data_ptr() == exported.get_input_embeddings().weight.data_ptr()
    assert spec_from_hf_config(out) == spec


@pytest.mark.parametrize("arch", SPECS)
def test_import_then_export_is_the_identity(arch, tmp_path):
    spec = SPECS[arch]
    source = make_random_hf_model(spec, tmp_path / "source")
    model = LocalLM(spec, hf_dir=source)
    tokens = torch.randint(0, spec.vocab, (2, spec.seq_len),
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)[..., :spec.vocab]
    torch.testing.assert_close(ours, hf_logits(source, tokens), **EXACT)

    back = save_hf(spec, local_canonical_state(model), tmp_path / "back")
    original, roundtrip = hf_state(source), hf_state(back)
    assert original.keys() == roundtrip.keys()
    for key in original:
        assert torch.equal(original[key], roundtrip[key]), key


def test_import_refuses_a_different_shape(tmp_path):
    source = make_random_hf_model(SPECS["llama"], tmp_path / "source")
    with pytest.raises(ValueError, match="kv_heads: run 4, HF 2"):
        LocalLM(SPECS["llama"].replace(kv_heads=4), hf_dir=source)
    with pytest.raises(ValueError, match="arch"):
        LocalLM(SPECS["gpt2"].replace(layers=3), hf_dir=source)


def test_the_sliding_window_is_what_makes_mistral_exact(tmp_path):
    """The window matters at this length: without it the logits of the same weights differ."""
    spec = SPECS["mistral"]
    source = make_random_hf_model(spec, tmp_path / "source")
    windowless = LocalLM(spec.replace(sliding_window=0))
    weights = HFWeights(source, spec)
    load_canonical(windowless, windowless.spec, windowless.tp_group, weights.canonical_tensor)
    tokens = torch.arange(spec.seq_len).unsqueeze(0) % spec.vocab
    with torch.no_grad():
        gap = (windowless(tokens)[..., :spec.vocab] - hf_logits(source, tokens)).abs().max()
    assert gap > 1e-3


def test_tokenizer_file_is_written_with_the_export(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(SPECS["gpt2"].vocab)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))

    spec = SPECS["gpt2"]
    out = save_hf(spec, local_canonical_state(LocalLM(spec)), tmp_path / "hf",
                  tokenizer=tmp_path / "tokenizer.json")
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode("w5 w7").ids == [5, 7]
