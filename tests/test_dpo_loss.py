"""The Diffusion-DPO loss and its shared-noise inputs, against computations written out here."""
from __future__ import annotations

import math

import pytest
import torch

from video_reward_lora.training.methods.dpo import (
    DEFAULT_BETA, alpha_bar, dpo_inside, dpo_loss, noised, noised_pair, prediction_type_of,
)

SHAPE = (4, 2, 2, 2, 4)  # [B, C, T, H, W]; 32 values per sample, so every mean of these dyadic values is exact


def _grid(generator: torch.Generator, low: int, high: int, scale: float) -> torch.Tensor:
    """Dyadic values (integers times a power of two), exact in float32 and float64 alike."""
    return torch.randint(low, high, SHAPE, generator=generator).float() * scale


def _fixed_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    target_w, target_l = _grid(generator, -8, 9, 1 / 16), _grid(generator, -8, 9, 1 / 16)
    return {
        "policy_winner": target_w + _grid(generator, -3, 4, 1 / 256),
        "policy_loser": target_l + _grid(generator, -3, 4, 1 / 256),
        "reference_winner": target_w + _grid(generator, -3, 4, 1 / 256),
        "reference_loser": target_l + _grid(generator, -3, 4, 1 / 256),
        "target_winner": target_w,
        "target_loser": target_l,
    }


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    values = [(p - t) ** 2 for p, t in zip(prediction.flatten().tolist(), target.flatten().tolist())]
    return sum(values) / len(values)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_loss_equals_the_formula_with_alpha_weights():
    tensors = _fixed_tensors()
    weights = [0.5, 1.0, 2.0, 1.25]
    result = dpo_loss(**tensors, weights=torch.tensor(weights))
    insides, terms = [], []
    for i in range(SHAPE[0]):
        m_w = _mse(tensors["policy_winner"][i], tensors["target_winner"][i])
        m_l = _mse(tensors["policy_loser"][i], tensors["target_loser"][i])
        r_w = _mse(tensors["reference_winner"][i], tensors["target_winner"][i])
        r_l = _mse(tensors["reference_loser"][i], tensors["target_loser"][i])
        inside = -0.5 * DEFAULT_BETA * ((m_w - m_l) - (r_w - r_l))
        insides.append(inside)
        terms.append(-weights[i] * _log_sigmoid(inside))
    assert result.loss.dtype == torch.float32
    assert any(x > 0 for x in insides) and any(x < 0 for x in insides)  # the case exercises both sides
    assert result.loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-6)
    assert result.reward_margin.item() == pytest.approx(sum(insides) / len(insides), abs=1e-6)
    assert result.implicit_accuracy.item() == sum(x > 0 for x in insides) / len(insides)
    unweighted = dpo_loss(**tensors).loss.item()
    assert unweighted == pytest.approx(sum(-_log_sigmoid(x) for x in insides) / len(insides), abs=1e-6)


def _swapped(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.replace("winner", "#").replace("loser", "winner").replace("#", "loser"): t for name, t in tensors.items()}


def test_swapping_winner_and_loser_flips_the_gradient():
    tensors = _fixed_tensors()
    policy = {k: tensors[k].clone().requires_grad_() for k in ("policy_winner", "policy_loser")}
    inputs = {**tensors, **policy}
    # the inside term: its gradient w.r.t. the policy predictions changes sign, whatever the reference
    grads = torch.autograd.grad(dpo_inside(**inputs).sum(), [policy["policy_winner"], policy["policy_loser"]])
    swapped = torch.autograd.grad(dpo_inside(**_swapped(inputs)).sum(), [policy["policy_winner"], policy["policy_loser"]])
    for grad, grad_swapped in zip(grads, swapped):
        assert grad.count_nonzero() > 0
        assert torch.allclose(grad_swapped, -grad, rtol=0, atol=1e-9)
    # the loss: with the reference equal to the policy, the gradient reverses componentwise
    inputs.update(reference_winner=tensors["policy_winner"], reference_loser=tensors["policy_loser"])
    weights = torch.tensor([0.5, 1.0, 2.0, 1.25])
    grad = torch.autograd.grad(dpo_loss(**inputs, weights=weights).loss, policy["policy_winner"])[0]
    grad_swapped = torch.autograd.grad(dpo_loss(**_swapped(inputs), weights=weights).loss, policy["policy_winner"])[0]
    nonzero = grad != 0
    assert nonzero.sum() > grad.numel() // 2
    assert torch.equal(torch.sign(grad_swapped[nonzero]), -torch.sign(grad[nonzero]))
    assert torch.allclose(grad_swapped, -grad, rtol=0, atol=1e-9)


def test_accuracy_margin_and_drift_on_a_hand_made_case():
    zero = torch.zeros(2, 2)
    # pair 0: policy errors (0.01, 0.04), reference (0.04, 0.04): inside = -0.5·100·(-0.03 - 0) = 1.5
    # pair 1: policy errors (0.05, 0.04), reference (0.04, 0.04): inside = -0.5·100·(0.01 - 0) = -0.5
    policy_winner = torch.tensor([[0.1, 0.1], [0.1, 0.3]])
    policy_loser = torch.tensor([[0.2, 0.2], [0.2, 0.2]])
    reference = torch.tensor([[0.2, 0.2], [0.2, 0.2]])
    result = dpo_loss(policy_winner, policy_loser, reference, reference, zero, zero, beta=100.0)
    assert result.implicit_accuracy.item() == 0.5
    assert result.reward_margin.item() == pytest.approx((1.5 - 0.5) / 2, abs=1e-5)
    assert result.loss.item() == pytest.approx((-_log_sigmoid(1.5) - _log_sigmoid(-0.5)) / 2, abs=1e-6)
    # drift: winner rows differ by (0.1, 0.1) and (0.1, 0.1): mean square 0.01; loser rows equal: 0
    assert result.drift.item() == pytest.approx(0.005, abs=1e-7)
    assert set(result.metrics()) == {"loss", "implicit_accuracy", "reward_margin", "drift"}


def test_bad_inputs_are_named():
    tensors = _fixed_tensors()
    with pytest.raises(ValueError, match="reference_loser has shape"):
        dpo_loss(**{**tensors, "reference_loser": tensors["reference_loser"][:2]})
    with pytest.raises(ValueError, match=r"weights must have shape \(4,\)"):
        dpo_loss(**tensors, weights=torch.ones(3))
    with pytest.raises(ValueError, match="beta must be positive"):
        dpo_loss(**tensors, beta=0.0)
    with pytest.raises(ValueError, match="unknown prediction_type 'sample'"):
        noised(tensors["target_winner"], tensors["target_loser"], 0.5, "sample")


def test_noised_inputs_by_hand_for_each_parameterisation():
    x0_w = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    x0_l = torch.tensor([[3.0, 0.0], [-1.0, 2.0]])
    noise = torch.tensor([[0.5, 1.0], [-2.0, 0.25]])
    levels = torch.tensor([0.64, 0.36])  # per sample: sqrt 0.8 / 0.6 and 0.6 / 0.8
    s, n = [0.8, 0.6], [0.6, 0.8]
    for kind in ("epsilon", "v_prediction"):
        pair = noised_pair(x0_w, x0_l, noise, levels, kind)
        for x0, x_t, target in ((x0_w, pair.winner, pair.target_winner), (x0_l, pair.loser, pair.target_loser)):
            for i in range(2):
                for j in range(2):
                    eps, clean = noise[i, j].item(), x0[i, j].item()
                    assert x_t[i, j].item() == pytest.approx(s[i] * clean + n[i] * eps, abs=1e-6)
                    expected = eps if kind == "epsilon" else s[i] * eps - n[i] * clean
                    assert target[i, j].item() == pytest.approx(expected, abs=1e-6)
    pair = noised_pair(x0_w, x0_l, noise, 0.25, "flow")
    for x0, x_t, target in ((x0_w, pair.winner, pair.target_winner), (x0_l, pair.loser, pair.target_loser)):
        for i in range(2):
            for j in range(2):
                eps, clean = noise[i, j].item(), x0[i, j].item()
                assert x_t[i, j].item() == pytest.approx(0.75 * clean + 0.25 * eps, abs=1e-6)
                assert target[i, j].item() == pytest.approx(eps - clean, abs=1e-6)


def test_targets_agree_with_the_schedulers_the_families_sample_with():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    generator = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 4, 3, 4, 4, generator=generator), torch.randn(2, 4, 3, 4, 4, generator=generator)
    # CogVideoX-Fun's tiny scheduler (v-prediction, zero-terminal SNR) and EasyAnimate V5's (epsilon)
    for scheduler in (DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                    clip_sample=False),
                      DDIMScheduler(beta_start=0.0001, beta_end=0.02, steps_offset=1, clip_sample=False)):
        kind = prediction_type_of(scheduler)
        timesteps = torch.tensor([600, 200])
        x_t, target = noised(x0, noise, alpha_bar(scheduler.alphas_cumprod, timesteps), kind)
        assert torch.allclose(x_t, scheduler.add_noise(x0, noise, timesteps), atol=1e-6)
        if kind == "v_prediction":
            assert torch.allclose(target, scheduler.get_velocity(x0, noise, timesteps), atol=1e-6)
        # a DDIM step (eta 0) from the exact target lands on the same clean latents noised at the previous timestep
        scheduler.set_timesteps(5)
        t, t_prev = int(scheduler.timesteps[1]), int(scheduler.timesteps[2])
        x_t, target = noised(x0, noise, alpha_bar(scheduler.alphas_cumprod, torch.tensor(t)), kind)
        stepped = scheduler.step(target, t, x_t).prev_sample
        expected, _ = noised(x0, noise, alpha_bar(scheduler.alphas_cumprod, torch.tensor(t_prev)), kind)
        assert torch.allclose(stepped, expected, atol=1e-5)
    # Wan2.2 / EasyAnimate V5.1: an Euler step with the velocity target moves exactly along the flow
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    assert prediction_type_of(scheduler) == "flow"
    scheduler.set_timesteps(5)
    sigma, sigma_next = scheduler.sigmas[1].item(), scheduler.sigmas[2].item()
    x_t, target = noised(x0, noise, sigma, "flow")
    assert torch.allclose(x_t, scheduler.scale_noise(x0, scheduler.timesteps[1:2], noise), atol=1e-6)
    stepped = scheduler.step(target, scheduler.timesteps[1], x_t).prev_sample
    assert torch.allclose(stepped, noised(x0, noise, sigma_next, "flow")[0], atol=1e-5)


def test_alpha_bar_refuses_timesteps_outside_the_schedule():
    with pytest.raises(ValueError, match=r"timesteps must lie in 0\.\.9"):
        alpha_bar(torch.linspace(1, 0.1, 10), torch.tensor([3, 10]))
