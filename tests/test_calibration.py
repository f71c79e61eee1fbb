import itertools
import math

import pytest
import torch
from reference import reference_term

from catto.core.calibration import (
    best_wrong_log_prob,
    binned_calibration_counts,
    calibration_margin,
    calibration_term,
    confidence_log_prob,
    ece_from_binned_counts,
    masked_mean,
    per_token_calibration_loss,
)

SWITCHES = list(itertools.product(["max", "label"], ["prob", "logit"], [True, False], ["l1", "bce", "l2"]))


def _stats(logits, labels):
    logp = logits.log_softmax(-1)
    top = logp.topk(2, dim=-1)
    return logp.gather(-1, labels[:, None])[:, 0], top.values, top.indices


def test_hand_computed_values():
    # logits (2, 1, 0), label 1: p = (e^2, e, 1) / (e^2 + e + 1); top-1 is token 0, the best wrong token.
    logits = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1])
    total = math.e**2 + math.e + 1
    p0, p1 = math.e**2 / total, math.e / total
    label_logp, top_logp, top_ids = _stats(logits, labels)
    mask = torch.tensor([True])

    term = calibration_term(labels, label_logp, top_logp, top_ids, mask, confidence="max", margin="logit")
    z = 1 / (1 + math.exp(1.0))  # sigmoid(log p1 - log p0) = sigmoid(-1)
    assert term.confidence.item() == pytest.approx(p0)
    assert term.target.item() == pytest.approx(z)
    assert term.loss.item() == pytest.approx(abs(p0 - z))

    term = calibration_term(labels, label_logp, top_logp, top_ids, mask, confidence="label", margin="prob")
    z = 1 / (1 + math.exp(-(p1 - p0)))
    assert term.confidence.item() == pytest.approx(p1)
    assert term.loss.item() == pytest.approx(abs(p1 - z))

    term = calibration_term(labels, label_logp, top_logp, top_ids, mask, loss_form="bce", target_scale=2.0)
    z = 1 / (1 + math.exp(2.0))
    assert term.loss.item() == pytest.approx(-(z * math.log(p0) + (1 - z) * math.log(1 - p0)))


def test_best_wrong_is_top2_when_label_is_top1():
    logits = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 1])
    label_logp, top_logp, top_ids = _stats(logits, labels)
    wrong = best_wrong_log_prob(labels, top_ids, top_logp)
    logp = logits.log_softmax(-1)
    assert torch.allclose(wrong, torch.stack([logp[0, 2], logp[1, 0]]))


@pytest.mark.parametrize("confidence,margin,detach,loss_form", SWITCHES)
def test_matches_full_logits_reference(confidence, margin, detach, loss_form):
    torch.manual_seed(0)
    logits = (3 * torch.randn(50, 17, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 17, (50,))
    labels[:10] = logits[:10].argmax(-1)  # make sure some labels are the top-1 token
    mask = torch.rand(50) > 0.3
    kw = dict(confidence=confidence, margin=margin, target_scale=1.7, detach_target=detach, loss_form=loss_form)
    term = calibration_term(labels, *_stats(logits, labels), mask, **kw)
    ref_loss, ref_tok, ref_c, ref_z = reference_term(logits, labels, mask, confidence, margin, 1.7, detach, loss_form)
    assert torch.allclose(term.per_token_loss, ref_tok, atol=1e-10)
    assert torch.allclose(term.confidence, ref_c) and torch.allclose(term.target, ref_z)
    assert torch.allclose(term.loss, ref_loss, atol=1e-12)
    (g,) = torch.autograd.grad(term.loss, logits)
    (g_ref,) = torch.autograd.grad(ref_loss, logits)
    assert torch.allclose(g, g_ref, atol=1e-10)


@pytest.mark.parametrize("confidence,margin,loss_form", [(c, m, f) for c, m, d, f in SWITCHES if not d])
def test_gradcheck(confidence, margin, loss_form):
    # With `detach_target=False` the analytic gradient is the true derivative of the term, so finite differences
    # must agree; the detached variant is checked against the reference above and with a fixed target below.
    detach = False
    torch.manual_seed(1)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (6,))
    mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    # Top-k ids are piecewise constant; gradcheck perturbs by 1e-6, far from any tie of these random logits.
    kw = dict(confidence=confidence, margin=margin, detach_target=detach, loss_form=loss_form)

    def fn(x):
        return calibration_term(labels, *_stats(x, labels), mask, **kw).loss

    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("loss_form", ["l1", "bce", "l2"])
@pytest.mark.parametrize("confidence", ["max", "label"])
def test_gradcheck_fixed_target(confidence, loss_form):
    torch.manual_seed(3)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (6,))
    target = torch.rand(6, dtype=torch.float64)

    def fn(x):
        label_logp, top_logp, _ = _stats(x, labels)
        return per_token_calibration_loss(confidence_log_prob(label_logp, top_logp, confidence), target, loss_form)

    assert torch.autograd.gradcheck(fn, (logits,))


def test_detach_controls_gradient_through_target():
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    label_logp, top_logp, top_ids = _stats(logits, labels)
    z_attached = calibration_term(labels, label_logp, top_logp, top_ids, torch.ones(4, dtype=torch.bool),
                                  detach_target=False).target
    assert z_attached.requires_grad
    z_detached = calibration_term(labels, label_logp, top_logp, top_ids, torch.ones(4, dtype=torch.bool)).target
    assert not z_detached.requires_grad


@pytest.mark.parametrize("loss_form", ["l1", "bce", "l2"])
def test_saturated_confidence_is_finite(loss_form):
    # c = 1 exactly (log c = 0) and c ~ 0: the BCE logs are floored like torch.nn.BCELoss, gradients stay finite.
    log_c = torch.tensor([0.0, -1e-9, -200.0], requires_grad=True)
    target = torch.tensor([0.3, 0.5, 0.9])
    loss = per_token_calibration_loss(log_c, target, loss_form).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(log_c.grad).all()


@pytest.mark.parametrize("log_c", [0.0, -1e-9, -5e-7, -1e-3])
def test_bce_gradient_keeps_its_sign_when_confidence_saturates(log_c):
    # Target below the confidence: descent must lower log c (dL/dlog c > 0), also where c rounds to 1.
    x = torch.tensor([log_c], requires_grad=True)
    per_token_calibration_loss(x, torch.tensor([0.01]), "bce").sum().backward()
    assert x.grad.item() > 0


def test_unknown_switch_values_name_the_allowed_ones():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"confidence.*\['max', 'label'\]"):
        confidence_log_prob(x, torch.zeros(3, 2), "mean")
    with pytest.raises(ValueError, match=r"margin.*\['prob', 'logit'\]"):
        calibration_margin(x, x, "ratio")
    with pytest.raises(ValueError, match=r"loss_form.*\['l1', 'bce', 'l2'\]"):
        per_token_calibration_loss(x, x, "l3")


def test_empty_mask_gives_differentiable_zero():
    values = torch.randn(5, requires_grad=True)
    out = masked_mean(values, torch.zeros(5, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0 and values.grad is not None and torch.all(values.grad == 0)


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_binned_ece_matches_torchmetrics(n_bins):
    torchmetrics = pytest.importorskip("torchmetrics")
    torch.manual_seed(2)
    probs = torch.softmax(3 * torch.randn(400, 6), -1)
    target = torch.randint(0, 6, (400,))
    conf, pred = probs.max(-1)
    counts = binned_calibration_counts(conf, (pred == target).float(), torch.ones(400, dtype=torch.bool), n_bins)
    expected = torchmetrics.functional.classification.multiclass_calibration_error(
        probs, target, num_classes=6, n_bins=n_bins, norm="l1"
    )
    assert ece_from_binned_counts(counts) == pytest.approx(expected.item(), abs=1e-6)
    # Counts from two halves add up to the counts of the whole (what the trainer gathers across ranks).
    mask = torch.arange(400) < 150
    halves = binned_calibration_counts(conf, (pred == target).float(), mask, n_bins) + binned_calibration_counts(
        conf, (pred == target).float(), ~mask, n_bins
    )
    assert torch.allclose(halves, counts)


@pytest.mark.parametrize("loss_form", ["l1", "bce", "l2"])
def test_the_loss_form_analysis_push_is_the_terms_gradient(loss_form):
    # benchmarks/loss_form_gradients.py explains the forms by |dL/dlog c|; it must be the library term's own gradient
    from posthoc_common import load_benchmark

    push = load_benchmark("loss_form_gradients").push
    c = torch.tensor([0.05, 0.3, 0.6, 0.95, 0.999], dtype=torch.float64)
    z = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.4], dtype=torch.float64)
    log_c = c.log().requires_grad_(True)
    per_token_calibration_loss(log_c, z, loss_form).sum().backward()
    assert torch.allclose(log_c.grad.abs(), torch.from_numpy(push(loss_form, c.numpy(), z.numpy())), rtol=1e-6)
