"""GRPO for a flow model: group-relative advantages and the clipped policy loss per denoising step.

One rollout group = G videos of the same puzzle (prompt + conditioning image). The reward is
terminal, so every trained SDE step of a video shares that video's advantage. Per trained step k,
with the log-probabilities from sde.sde_step (Gaussian, mean-reduced over latent elements, frame 0
excluded):
    A        = clip((r - mean_group(r)) / (std(r) + 1e-4), -5, 5)
    ratio    = exp(log_prob_theta - log_prob_old)
    L_pg     = mean_batch max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))
    KL       = mean_batch masked-mean (mu_theta - mu_ref)^2 / (2 std^2)          (if beta > 0)
    loss     = L_pg + beta KL
The caller divides by (K * grad_acc) because every backward() sums gradients and we want their mean.

Kept, with sources:
    group-normalised advantages (GRPO, DeepSeekMath arXiv:2402.03300), std + 1e-4, population std,
        optionally one std for the whole batch (flow_grpo flow_grpo/stat_tracking.py @94e23ee,
        PerPromptStatTracker, `global_std`), clipped to +-adv_clip_max = 5 (flow_grpo
        config/base.py, DanceGRPO --adv_clip_max 5.0);
    groups with all-equal rewards get advantage exactly 0 and are reported: the zero-std ratio
        (flow_grpo scripts/train_wan2_1.py logs it and drops those samples) is what stalls a sparse
        success reward when success is rare (VideoRLVR, arXiv 2605.15458, abstract: dense rewards
        matter most in low-success-rate settings);
    the per-step PPO ratio clip and the stats clipfrac / approx_kl (flow_grpo scripts/train_sd3.py,
        train_wan2_1.py @74db691);
    the exact KL between the two Gaussian transitions, which share x and std, in mean space
        (flow_grpo scripts/train_wan2_1.py divides by 2 (sigma_t sqrt|dt|)^2, the full std; the
        closed form in the Flow-GRPO paper, Liu et al. 2025, arXiv 2505.05470).
Deleted: value functions, entropy bonus, the rwr/sft/dpo branches of flow_grpo's tracker, reward
history across epochs (each call normalises only the rewards it is given).

Run the tests: python -m pytest tests/test_grpo.py -q
"""
import torch

from sde import masked_mean


def group_advantages(rewards, group_size, eps=1e-4, global_std=False, adv_clip_max=5.0):
    """Group-relative advantages for rewards (P*G,) ordered puzzle-major.

    Group g is rewards[g*G:(g+1)*G].
        A = (r - mean_g) / (std + eps),  std = population std of the group (or of the whole batch
        if global_std, flow_grpo's option), then clipped to [-adv_clip_max, adv_clip_max].
    A group whose rewards are all equal carries no learning signal: its advantages are set to
    exactly 0 (not left to floating-point luck) and it is flagged.

    Returns (advantages (P*G,) float32, zero_std (P*G,) bool). zero_std.float().mean() is the
    zero-std ratio to log; the caller may drop those samples (flow_grpo does).
    Computed in float64: rewards are few and reward differences can be small.
    """
    if rewards.ndim != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_advantages: rewards must be 1-D with length a multiple of "
                         f"group_size={group_size}, got shape {tuple(rewards.shape)}")
    r = rewards.detach().double().view(-1, group_size)               # (P, G)
    mean = r.mean(dim=1, keepdim=True)                               # (P, 1)
    if global_std:
        std = r.std(unbiased=False)                                  # ()
    else:
        std = r.std(dim=1, keepdim=True, unbiased=False)             # (P, 1)
    adv = ((r - mean) / (std + eps)).clamp(-adv_clip_max, adv_clip_max)  # (P, G)
    zero_std = (r == r[:, :1]).all(dim=1, keepdim=True).expand_as(r)    # (P, G) all rewards equal
    adv = adv.masked_fill(zero_std, 0.0)
    return adv.reshape(-1).float(), zero_std.reshape(-1)


def gaussian_kl(mean, mean_ref, std, mask=None):
    """KL(N(mean, std^2 I) || N(mean_ref, std^2 I)) per element, averaged like the log-probability:

        KL = masked-mean over non-batch dims of (mean - mean_ref)^2 / (2 std^2)          -> (B,)
    Exact for two Gaussian transitions from the same x with the same std (the policy and the
    reference differ only in v, so only in mean):
        = (|dt|/2) (1/sigma_t + sigma_t (1 - sigma)/(2 sigma))^2 (v - v_ref)^2
    for the Flow-GRPO step (derived from its mean; Flow-GRPO, arXiv 2505.05470, gives this form).
    mean, mean_ref (B, C, F, H, W), std (B or 1, 1, 1, 1, 1) as returned by sde.sde_step; mask
    e.g. sde.frame_mask(F) drops frame 0.
    """
    if mean.shape != mean_ref.shape:
        raise ValueError(f"gaussian_kl: mean shape {tuple(mean.shape)} != mean_ref shape "
                         f"{tuple(mean_ref.shape)}")
    diff = mean.float() - mean_ref.detach().float()
    return masked_mean(diff ** 2 / (2 * std.float() ** 2), mask)


def policy_loss(log_prob, old_log_prob, advantages, clip_range=1e-3, *, beta=0.0, mean=None,
                mean_ref=None, std=None, mask=None):
    """Clipped PPO/GRPO loss for one trained denoising step of a batch of B trajectories.

        ratio = exp(log_prob - old_log_prob)
        loss  = mean_b max(-A ratio, -A clip(ratio, 1 - clip_range, 1 + clip_range))
                + beta * mean_b KL
    (flow_grpo scripts/train_sd3.py / train_wan2_1.py). Beyond the clip range in the direction the
    advantage pushes (ratio > 1 + eps for A > 0, ratio < 1 - eps for A < 0) the gradient is 0; at
    ratio = 1 the gradient is -mean_b A_b grad log_prob_b (both tested). clip_range default 1e-3 =
    flow_grpo's Wan LoRA config (config/grpo.py); log-probs are per-element means
    (flow_grpo/diffusers_patch/sd3_sde_with_logprob.py), hence the small value.
    KL: needs mean (with grad), mean_ref (reference policy, no grad) and std from sde.sde_step; it
    is computed whenever mean_ref is given (for logging) and added to the loss when beta > 0.

    log_prob (B,) with grad, old_log_prob (B,) from the rollout, advantages (B,).
    Returns (loss scalar, stats): stats are detached 0-dim tensors (no GPU sync here): policy_loss,
    kl, ratio_mean, ratio_max_dev = max |ratio - 1| (on-policy parity), clipfrac (fraction with
    |ratio - 1| > clip_range), approx_kl = 0.5 mean (log ratio)^2.
    """
    if not (log_prob.shape == old_log_prob.shape == advantages.shape) or log_prob.ndim != 1:
        raise ValueError(f"policy_loss: log_prob, old_log_prob, advantages must all be (B,), got "
                         f"{tuple(log_prob.shape)}, {tuple(old_log_prob.shape)}, "
                         f"{tuple(advantages.shape)}")
    if beta > 0 and (mean is None or mean_ref is None or std is None):
        raise ValueError("policy_loss: beta > 0 needs mean, mean_ref and std (from sde.sde_step) "
                         "for the KL")
    advantages = advantages.to(log_prob.dtype)
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    pg = torch.maximum(unclipped, clipped).mean()
    if mean_ref is not None:
        kl = gaussian_kl(mean, mean_ref, std, mask).mean()
    else:
        kl = torch.zeros((), device=pg.device)
    loss = pg
    if beta > 0:
        loss = pg + beta * kl
    stats = {
        "policy_loss": pg.detach(),
        "kl": kl.detach(),
        "ratio_mean": ratio.detach().mean(),
        "ratio_max_dev": (ratio.detach() - 1.0).abs().max(),
        "clipfrac": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
        "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean(),
    }
    return loss, stats
