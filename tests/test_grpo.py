"""Tests for grpo.py: group advantages, the clipped policy loss (value, gradient, clipping) and the
Gaussian KL, including the on-policy gradient through a real sde.sde_step recompute.

Run: python -m pytest tests/test_grpo.py -q
"""

import numpy as np
import pytest
import torch

import grpo
import sde

# -----------------------------------------------------------------------------
# advantages


def test_advantages_per_group_zero_mean_and_reference_formula():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5 * 8, generator=g)
    adv, zero_std = grpo.group_advantages(rewards, 8)
    assert adv.shape == (40,) and adv.dtype == torch.float32 and not zero_std.any()
    per_group = adv.view(5, 8)
    assert per_group.mean(dim=1).abs().max() < 1e-6
    r = (
        rewards.double().numpy().reshape(5, 8)
    )  # flow_grpo's numpy form: np.std is the population std
    ref = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(adv.numpy(), ref.reshape(-1), rtol=1e-6, atol=1e-6)
    adv_g, _ = grpo.group_advantages(rewards, 8, global_std=True)
    np.testing.assert_allclose(
        adv_g.numpy(),
        ((r - r.mean(1, keepdims=True)) / (r.std() + 1e-4)).reshape(-1),
        rtol=1e-6,
        atol=1e-6,
    )


def test_zero_std_groups_get_zero_and_are_flagged():
    # float64 0.1 and 0.7: the group mean is off by one ulp, so without the explicit zeroing the
    # advantage would be ~1e-13 (global std) or ~1e-13 / 1e-4 (per-group std), not 0
    rewards = torch.tensor(
        [0.7] * 6 + [0.0, 1.0, 0.0, 0.0, 0.0, 0.0] + [0.1] * 6, dtype=torch.float64
    )
    for global_std in (False, True):
        adv, zero_std = grpo.group_advantages(rewards, 6, global_std=global_std)
        assert zero_std.tolist() == [True] * 6 + [False] * 6 + [True] * 6
        assert torch.equal(adv[:6], torch.zeros(6)) and torch.equal(adv[12:], torch.zeros(6))
        assert adv[7] > 0 and (adv[[6, 8, 9, 10, 11]] < 0).all()
        assert zero_std.float().mean().item() == pytest.approx(2 / 3)  # the zero-std ratio to log


def test_advantages_are_clipped():
    rewards = torch.zeros(32)
    # one success in 32: z = sqrt(31) = 5.57 before the clip
    rewards[3] = 1.0
    adv, _ = grpo.group_advantages(rewards, 32)
    std = 31**0.5 / 32  # population std of one 1 among 32
    assert adv[3].item() == 5.0 and adv[0].item() == pytest.approx(
        -(1 / 32) / (std + 1e-4), rel=1e-6
    )
    assert grpo.group_advantages(rewards, 32, adv_clip_max=10.0)[0][3].item() == pytest.approx(
        (31 / 32) / (std + 1e-4), rel=1e-6
    )
    with pytest.raises(ValueError, match="multiple of group_size=5"):
        grpo.group_advantages(rewards, 5)


# -----------------------------------------------------------------------------
# policy loss


def test_loss_at_ratio_one_is_minus_mean_advantage_and_stats():
    lp = torch.tensor([-1.0, -2.0, 0.5], requires_grad=True)
    adv = torch.tensor([1.0, -0.5, 2.0])
    loss, stats = grpo.policy_loss(lp, lp.detach().clone(), adv, clip_range=1e-3)
    assert loss.item() == pytest.approx(-adv.mean().item())
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv / 3)  # d ratio / d logp = ratio = 1
    assert (
        stats["ratio_mean"].item() == 1
        and stats["clipfrac"].item() == 0
        and stats["approx_kl"].item() == 0
    )
    # stats on known ratios: log ratios 0, 0.01, -0.002 with clip 5e-3 -> 1 of 3 clipped
    old = torch.tensor([0.0, -0.01, 0.002])
    _, stats = grpo.policy_loss(torch.zeros(3), old, adv, clip_range=5e-3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (0.01**2 + 0.002**2) / 3)
    assert stats["ratio_mean"].item() == pytest.approx((1 + np.exp(0.01) + np.exp(-0.002)) / 3)


def test_clipping_zeroes_gradient_beyond_range_in_advantage_direction():
    eps = 0.1
    # log ratios: far above, far below, inside the range, for A > 0 and A < 0
    log_ratio = torch.tensor([0.5, -0.5, 0.02, 0.5, -0.5, 0.02])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    lp = log_ratio.clone().requires_grad_(True)
    loss, stats = grpo.policy_loss(lp, torch.zeros(6), adv, clip_range=eps)
    loss.backward()
    g = lp.grad
    # A>0 above 1+eps; A<0 below 1-eps: clipped
    assert g[0] == 0 and g[4] == 0
    # elsewhere the unclipped gradient
    expected = -adv * torch.exp(log_ratio) / 6
    torch.testing.assert_close(g[[1, 2, 3, 5]], expected[[1, 2, 3, 5]])
    assert stats["clipfrac"].item() == pytest.approx(4 / 6)


def test_on_policy_gradient_through_sde_step():
    """Rollout with the sampler, recompute one stored step with grad: ratio exactly 1, and the loss
    gradient w.r.t. the model parameters equals -mean_b A_b grad log_prob_b."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(3, 3, 3, padding=1)
    model = lambda x, t, c: net(x) * (1 + t.mean(dim=1).view(-1, 1, 1, 1, 1) / 1000)
    noise, image = torch.randn(3, 3, 3, 4, 4), torch.randn(3, 3, 1, 4, 4)
    _, traj = sde.sample(
        model,
        noise,
        None,
        image_latent=image,
        num_steps=6,
        sde_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    adv = torch.tensor([1.5, -0.3, 0.7])

    def replay(k):
        v = sde.velocity(model, traj.latents[:, k], traj.timesteps[k], None)
        return sde.sde_step(
            traj.latents[:, k],
            v,
            traj.sigmas[k],
            traj.sigmas_next[k],
            0.7,
            x_next=traj.next_latents[:, k],
            mask=sde.frame_mask(3),
        )[1]

    for k in range(2):
        net.zero_grad()
        log_prob = replay(k)
        loss, stats = grpo.policy_loss(log_prob, traj.log_probs[:, k], adv, clip_range=1e-4)
        assert stats["ratio_mean"].item() == 1.0 and stats["clipfrac"].item() == 0
        loss.backward()
        g_loss = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        (-(adv * replay(k)).mean()).backward()
        for a, b in zip(g_loss, [p.grad for p in net.parameters()]):
            assert b.abs().max() > 0
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# -----------------------------------------------------------------------------
# KL


def test_gaussian_kl_closed_form_and_frame0():
    g = torch.Generator().manual_seed(0)
    mean, mean_ref = torch.randn(2, 3, 3, 2, 2, generator=g), torch.randn(
        2, 3, 3, 2, 2, generator=g
    )
    std = torch.tensor([0.3, 0.7]).view(2, 1, 1, 1, 1)
    mask = sde.frame_mask(3)
    assert torch.equal(grpo.gaussian_kl(mean, mean.clone(), std, mask), torch.zeros(2))
    kl = grpo.gaussian_kl(mean, mean_ref, std, mask)
    N = torch.distributions.Normal
    ref = torch.distributions.kl_divergence(N(mean, std), N(mean_ref, std))[:, :, 1:].mean(
        dim=(1, 2, 3, 4)
    )
    torch.testing.assert_close(kl, ref)
    moved = mean.clone()
    # frame 0 is not part of the policy
    moved[:, :, 0] += 3.0
    assert torch.equal(grpo.gaussian_kl(moved, mean_ref, std, mask), kl)


def test_kl_enters_loss_with_beta_and_needs_its_inputs():
    mean = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    mean_ref = mean.detach() + 0.1
    std = torch.full((1, 1, 1, 1, 1), 0.5)
    lp = torch.zeros(2)
    loss0, stats = grpo.policy_loss(lp, lp, torch.ones(2), mean=mean, mean_ref=mean_ref, std=std)
    # logged even with beta 0
    assert stats["kl"].item() == pytest.approx(0.01 / (2 * 0.25), rel=1e-5)
    loss, _ = grpo.policy_loss(
        lp, lp, torch.ones(2), beta=0.004, mean=mean, mean_ref=mean_ref, std=std
    )
    assert (loss - loss0).item() == pytest.approx(0.004 * 0.02, abs=2e-7)  # float32 loss near -1
    loss.backward()
    # d/dmu of beta mean_b mean_24 2 (mu - mu_ref)^2
    torch.testing.assert_close(mean.grad, torch.full_like(mean, 0.004 * -0.1 / 12))
    with pytest.raises(ValueError, match="beta > 0 needs mean"):
        grpo.policy_loss(lp, lp, torch.ones(2), beta=0.1)
    with pytest.raises(ValueError, match=r"must all be \(B,\)"):
        grpo.policy_loss(lp, lp, torch.ones(3))
