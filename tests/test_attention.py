"""Attention temperature baked into query projections (an optional plan rule)."""

from __future__ import annotations

import math

import pytest
import torch

from kernelscale import AttentionRule, resize_state_dict

diffusers = pytest.importorskip("diffusers")


def test_patched_query_equals_scaled_logits():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, bias=True).eval()
    tokens, s = 64, 2  # an 8×8 latent level grows to 16×16: n' = n·s²
    sd = attn.state_dict()
    new_sd, manifest = resize_state_dict(sd, s, attention=[AttentionRule("to_q", tokens=tokens)])
    factor = math.sqrt(math.log(tokens * s * s) / math.log(tokens))
    assert manifest["tensors"]["to_q.weight"]["factor"] == pytest.approx(factor)
    assert set(manifest["tensors"]) == {"to_q.weight", "to_q.bias"}
    assert new_sd["to_k.weight"] is sd["to_k.weight"]

    patched = Attention(query_dim=32, heads=2, dim_head=16, bias=True).eval()
    patched.load_state_dict(new_sd)
    reference = Attention(query_dim=32, heads=2, dim_head=16, bias=True).eval()
    reference.load_state_dict(sd)
    reference.scale = reference.scale * factor  # the logit scale the rule stands in for
    for module in (patched, reference):
        module.set_processor(AttnProcessor())  # the processor that reads module.scale
    x = torch.randn(2, tokens * s * s, 32)
    with torch.no_grad():
        # Scaling q by f scales qᵀk by f: identical up to float32 rounding of the projections
        # (a few ulp of the logits, ≈ 1e-6 relative after softmax and the output projection).
        torch.testing.assert_close(patched(x), reference(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(patched(x), attn(x), rtol=1e-3, atol=1e-4)


def test_attention_rule_needs_sensible_token_counts():
    with pytest.raises(ValueError, match="tokens"):
        AttentionRule("to_q", tokens=1)
    with pytest.raises(ValueError, match="matches no tensor"):
        resize_state_dict({"a.weight": torch.ones(2, 2)}, 2, attention=[AttentionRule("to_q", tokens=64)])
