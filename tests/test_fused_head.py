import copy

import pytest
import torch
from reference import reference_term
from tiny import VOCAB, make_model
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
)
from trl.trainer.utils import add_fused_lm_head

from catto.core.calibration import calibration_term
from catto.core.fused_head import chunked_calibration_stats, logit_transform_from_config
from catto.train.fused_forward import CATTOFusedCausalLMOutput, add_catto_head

ALL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _full_logits(h, w, b, scale, softcap):
    z = h @ w.T + (b if b is not None else 0)
    z = z * scale
    return softcap * torch.tanh(z / softcap) if softcap else z


@pytest.mark.parametrize("token_chunk", [1, 7, 1000])
@pytest.mark.parametrize("vocab_chunk", [1, 5, 1000])
@pytest.mark.parametrize("bias,scale,softcap", [(False, 1.0, None), (True, 0.5, 3.0)])
def test_chunked_stats_equal_full_logits(token_chunk, vocab_chunk, bias, scale, softcap):
    torch.manual_seed(0)
    n, hdim, vocab = 23, 8, 13
    h = torch.randn(n, hdim, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hdim, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, dtype=torch.float64, requires_grad=True) if bias else None
    t = torch.randint(0, vocab, (n,))
    t[:5] = _full_logits(h, w, b, scale, softcap)[:5].argmax(-1)  # some labels are the top-1 token
    logp, ent, sq, mean, top1, top_logp, top_ids = chunked_calibration_stats(
        h, w, b, t, token_chunk_size=token_chunk, vocab_chunk_size=vocab_chunk, logit_scale=scale, softcap=softcap,
        outputs=ALL_OUTPUTS,
    )
    z = _full_logits(h, w, b, scale, softcap)
    ls = z.log_softmax(-1)
    ref_top = ls.topk(2, -1)
    assert torch.allclose(logp, ls.gather(1, t[:, None])[:, 0], atol=1e-12)
    assert torch.allclose(ent, -(ls.exp() * ls).sum(-1), atol=1e-12)
    assert torch.allclose(sq, (2 * ls).logsumexp(-1), atol=1e-12)
    assert torch.allclose(mean, z.mean(-1), atol=1e-12)
    assert torch.equal(top1, ls.argmax(-1) == t)
    assert torch.allclose(top_logp, ref_top.values, atol=1e-12)
    assert torch.equal(top_ids, ref_top.indices)
    # Gradients of an arbitrary combination of every differentiable output, fused vs autograd through full logits.
    gl, ge, gt = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)
    inputs = [x for x in (h, w, b) if x is not None]
    fused = torch.autograd.grad((logp * gl).sum() + (ent * ge).sum() + (top_logp * gt).sum(), inputs)
    ref = (ls.gather(1, t[:, None])[:, 0] * gl).sum() - ((ls.exp() * ls).sum(-1) * ge).sum()
    ref = ref + (ls.gather(1, ref_top.indices) * gt).sum()
    for a, r in zip(fused, torch.autograd.grad(ref, inputs)):
        assert torch.allclose(a, r, atol=1e-10)


def test_chunked_stats_gradcheck():
    torch.manual_seed(1)
    h = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 7, (9,))

    def fn(h, w, b):
        out = chunked_calibration_stats(h, w, b, t, token_chunk_size=4, vocab_chunk_size=3, softcap=4.0,
                                        logit_scale=0.8, outputs=("entropy",))
        return out[0], out[1], out[5]

    assert torch.autograd.gradcheck(fn, (h, w, b))


def test_top2_ties_break_like_argmax():
    # Equal logits everywhere: top-1 is id 0 and top-2 is id 1, whatever the tiling.
    h, w = torch.ones(3, 2), torch.ones(6, 2)
    for vocab_chunk in (1, 2, 4, 6):
        *_, top_ids = chunked_calibration_stats(h, w, None, torch.zeros(3, dtype=torch.long), vocab_chunk_size=vocab_chunk)
        assert top_ids.tolist() == [[0, 1]] * 3


def _batch(seed=0, batch=4, seq=10):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, len(VOCAB), (batch, seq), generator=g)
    labels = input_ids.clone()
    labels[:, :4] = -100  # prompt
    labels[1, 7:] = -100  # a shorter completion
    return input_ids, labels


def _patched(model):
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_catto_head(model, token_chunk_size=3)
    return model


def _tiny_gemma2():
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0,
                       pad_token_id=0)
    return Gemma2ForCausalLM(cfg)


def _tiny_cohere():
    torch.manual_seed(0)
    cfg = CohereConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, logit_scale=0.25, pad_token_id=0)
    return CohereForCausalLM(cfg)


MODELS = {
    "llama": lambda: make_model("llama"),
    "qwen2": lambda: make_model("qwen2"),
    "gemma2-softcap": _tiny_gemma2,
    "cohere-logit-scale": _tiny_cohere,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_fused_path_matches_trl_and_full_logits(name):
    base = MODELS[name]()
    base.eval()
    input_ids, labels = _batch()
    # The model's own forward builds full logits (with its scale / soft-capping): the independent reference.
    with torch.no_grad():
        logits = base(input_ids=input_ids).logits[:, :-1].double()
    trl_model = copy.deepcopy(base)
    add_fused_lm_head(trl_model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    model = _patched(copy.deepcopy(base))

    trl_out = trl_model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    out = model(input_ids=input_ids, labels=labels, fused_lm_head=True, catto_stats="fused")
    assert isinstance(out, CATTOFusedCausalLMOutput)
    for field in ("log_probs", "entropy", "mean_logits", "is_top1", "label_mask"):
        a, b = getattr(out, field), getattr(trl_out, field)
        assert torch.allclose(a.float(), b.float(), atol=1e-5), field
    assert torch.allclose(out.loss, trl_out.loss, atol=1e-6)

    mask = labels[:, 1:] != -100
    flat_labels = labels[:, 1:].clamp(min=0)
    ls = logits.log_softmax(-1)
    top = ls.topk(2, -1)
    assert torch.equal(out.top_ids[mask], top.indices[mask])
    assert torch.allclose(out.top_log_probs[mask].double(), top.values[mask], atol=1e-5)
    assert torch.all(out.top_log_probs[~mask] == 0)

    # Gradient of the CATTO term through the fused head vs autograd through the model's full logits.
    kw = dict(confidence="max", margin="logit", target_scale=1.0, detach_target=False, loss_form="l1")
    term = calibration_term(flat_labels, out.log_probs, out.top_log_probs, out.top_ids, mask, **kw).loss
    grads = torch.autograd.grad(term, list(model.parameters()), allow_unused=True)
    ref_model = copy.deepcopy(base)
    full = ref_model(input_ids=input_ids).logits[:, :-1]
    ref, *_ = reference_term(full[mask], flat_labels[mask], torch.ones(int(mask.sum()), dtype=torch.bool),
                             "max", "logit", 1.0, False, "l1")
    assert term.item() == pytest.approx(ref.item(), abs=1e-5)
    ref_grads = torch.autograd.grad(ref, list(ref_model.parameters()), allow_unused=True)
    for (pname, _), g, rg in zip(model.named_parameters(), grads, ref_grads):
        if rg is None:
            assert g is None or torch.all(g == 0), pname
            continue
        assert torch.allclose(g, rg, atol=1e-5, rtol=1e-4), pname


def test_detached_mode_keeps_trl_outputs_bit_for_bit():
    base = make_model("llama")
    input_ids, labels = _batch(seed=3)
    trl_model = copy.deepcopy(base)
    add_fused_lm_head(trl_model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    model = _patched(copy.deepcopy(base))
    trl_out = trl_model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    out = model(input_ids=input_ids, labels=labels, fused_lm_head=True, catto_stats="detached")
    fused = model(input_ids=input_ids, labels=labels, fused_lm_head=True, catto_stats="fused")
    assert torch.equal(out.log_probs, trl_out.log_probs) and torch.equal(out.entropy, trl_out.entropy)
    assert out.log_probs.requires_grad and not out.top_log_probs.requires_grad
    assert torch.equal(out.top_ids, fused.top_ids)
    assert torch.allclose(out.top_log_probs, fused.top_log_probs, atol=1e-5)
    # Without `catto_stats` the call is TRL's own (reference passes, generation).
    plain = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    assert type(plain) is type(trl_out) and torch.equal(plain.log_probs, trl_out.log_probs)


def test_all_masked_micro_batch_is_a_differentiable_zero():
    model = _patched(make_model("llama"))
    input_ids, labels = _batch()
    labels[:] = -100
    out = model(input_ids=input_ids, labels=labels, fused_lm_head=True, catto_stats="fused")
    mask = labels[:, 1:] != -100
    term = calibration_term(labels[:, 1:].clamp(min=0), out.log_probs, out.top_log_probs, out.top_ids, mask)
    (term.loss + out.loss).backward()
    assert term.loss.item() == 0.0
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in model.parameters())


@pytest.mark.parametrize("loss_form", ["l1", "bce", "l2"])
@pytest.mark.parametrize("bf16", [False, True])
def test_extreme_logits_and_bf16_are_finite(loss_form, bf16):
    model = _patched(make_model("llama"))
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4 / model.lm_head.weight.abs().max())  # logits of order +-1e4
        model.lm_head.weight[5] *= -1
    input_ids, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=input_ids, labels=labels, fused_lm_head=True, catto_stats="fused")
        mask = labels[:, 1:] != -100
        term = calibration_term(labels[:, 1:].clamp(min=0), out.log_probs, out.top_log_probs, out.top_ids, mask,
                                loss_form=loss_form, detach_target=False)
        loss = term.loss - out.log_probs.sum()
    loss.backward()
    assert torch.isfinite(loss)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert "lm_head.weight" in grads and len(grads) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_logit_transform_reads_like_trl():
    assert logit_transform_from_config(_tiny_gemma2().config) == (1.0, 2.0)
    assert logit_transform_from_config(_tiny_cohere().config) == (0.25, None)
    assert logit_transform_from_config(make_model().config) == (1.0, None)


def test_bad_catto_stats_value():
    model = _patched(make_model("llama"))
    input_ids, labels = _batch()
    with pytest.raises(ValueError, match="catto_stats must be one of"):
        model(input_ids=input_ids, labels=labels, fused_lm_head=True, catto_stats="full")
    with pytest.raises(ValueError, match="fused_lm_head=True"):
        model(input_ids=input_ids, catto_stats="fused")
