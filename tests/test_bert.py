"""The plain-torch BERT encoder (trainables.bert) against transformers' BertModel on the real all-MiniLM-L6-v2:
the same hidden states and gradients bit for bit, the fallback to transformers for anything else, and a fresh
process that builds the default classifier without importing transformers' modelling stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from trainables.bert import BertEncoder, load_bert, plain_bert_config
from trainables.text_prompt import SoftPromptClassifier, load_backbone, resolve_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(None)
    ours = load_bert(path)
    assert isinstance(ours, BertEncoder)
    theirs = AutoModel.from_pretrained(path)
    assert theirs.config._attn_implementation == "sdpa"  # what BertEncoder mirrors
    return path, AutoTokenizer.from_pretrained(path), ours.eval().requires_grad_(False), theirs.eval().requires_grad_(False)


def test_the_same_hidden_states_and_gradients_as_transformers(minilm):
    _, tok, ours, theirs = minilm
    # sentence pairs with padding (a boolean mask) and one unpadded input (no mask)
    padded = tok(["a short one", "a much longer sentence about sport and politics in the news"], ["x", "y z w"],
                 padding=True, return_tensors="pt")
    single = tok(["the topic of this article is"], return_tensors="pt")
    assert not bool(padded["attention_mask"].all()) and bool(padded["token_type_ids"].any())
    for enc in (padded, single):
        assert torch.equal(ours(**enc).last_hidden_state, theirs(**enc).last_hidden_state)
    grads = []
    for model in (ours, theirs):
        embeds = model.get_input_embeddings()(padded["input_ids"]).detach().clone().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=padded["attention_mask"],
                    token_type_ids=padded["token_type_ids"]).last_hidden_state
        out.sin().sum().backward()
        grads.append(embeds.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_a_soft_prompt_classifier_computes_the_same_on_either(minilm, monkeypatch):
    from trainables import text_prompt
    from trainables.data import Example

    path, tok, ours, theirs = minilm
    batch = [Example("rain and snow all week", 0), Example("the team scored a late goal", 1)]
    results = []
    for backbone in (ours, theirs):
        monkeypatch.setattr(text_prompt, "_BACKBONES", {(None, "cpu"): (tok, backbone, False)})
        clf = SoftPromptClassifier(None, ["weather", "sport"], prompt_length=4, max_length=32, device="cpu")
        vectors = clf.init_vectors("the topic is").requires_grad_(True)
        loss = clf.loss(vectors, batch)
        loss.backward()
        results.append((clf.label_features, loss.detach(), vectors.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_the_default_backbone_is_the_plain_encoder():
    tokenizer, model, is_causal = load_backbone(None, torch.device("cpu"))
    assert isinstance(model, BertEncoder) and not is_causal
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.cls_token_id is not None


def _copy(src: str, dst, **config_changes) -> str:
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(config_changes)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return str(dst)


@pytest.mark.parametrize("change", [{"is_decoder": True}, {"model_type": "roberta"}, {"hidden_act": "gelu_new"},
                                    {"position_embedding_type": "relative_key"}, {"num_hidden_layers": 7},
                                    {"hidden_size": 385}])
def test_anything_but_a_plain_bert_encoder_goes_to_transformers(minilm, tmp_path, change):
    path = _copy(minilm[0], tmp_path / "m", **change)
    assert load_bert(path) is None  # a config it does not mirror, or weights that do not fit it


def test_a_folder_without_safetensors_goes_to_transformers(minilm, tmp_path):
    path = _copy(minilm[0], tmp_path / "m")
    assert plain_bert_config(path) is not None
    os.remove(os.path.join(path, "model.safetensors"))
    assert plain_bert_config(path) is None and load_bert(path) is None


def test_weights_in_another_precision_go_to_transformers(minilm, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy(minilm[0], tmp_path / "m")
    weights = load_file(os.path.join(path, "model.safetensors"))
    save_file({k: v.half() for k, v in weights.items()}, os.path.join(path, "model.safetensors"))
    assert plain_bert_config(path) is not None and load_bert(path) is None


def test_loading_leaves_the_callers_random_state(minilm):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_bert(minilm[0])
    assert torch.equal(torch.rand(3), expected)


def test_a_fresh_process_builds_the_default_classifier_without_transformers_modelling():
    code = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "from trainables.text_prompt import SoftPromptClassifier\n"
            "clf = SoftPromptClassifier(None, ['sport', 'weather'], prompt_length=4, max_length=32, device='cpu')\n"
            "print(sorted(m for m in ('transformers.modeling_utils', 'torch._dynamo', 'scipy') if m in sys.modules))\n"
            )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
