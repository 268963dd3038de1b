"""Flow matching for Wan2.2 as a sampler and as a policy.

The sigma grid, SFT noising, the Euler ODE step, the Flow-GRPO SDE step with its Gaussian
log-probability, the flow UniPC solver, and ONE sampler used for RL rollouts (SDE on an early
window of steps, Early-Step Focus) and evaluation (ODE).

Conventions (Wan / DiffSynth rectified flow: DiffSynth-Studio diffsynth/diffusion/flow_match.py):
    sigma = 1 is pure noise, sigma = 0 is data, and
        x_sigma = (1 - sigma) * x0 + sigma * eps,        eps ~ N(0, I)
    the model predicts the velocity v = eps - x0 = d x_sigma / d sigma, so
        x0_hat = x - sigma * v        eps_hat = x + (1 - sigma) * v
    the model is fed timestep t = 1000 * sigma (`to_timestep`, the only place this conversion
    happens); sampling walks sigma from 1 down to 0, so every step has dt = sigma_next - sigma < 0.
    Math that touches log-probabilities runs in float32 (flow_grpo: "bf16 can overflow here").

TI2V image conditioning (Wan-Video/Wan2.2 wan/textimage2video.py @42bf4cfa): latent frame 0 is
the VAE latent of the input image. It is set before the first step and re-imposed after every
step, and its tokens get timestep 0. Consequently that frame is excluded from SDE noise, from
the log-probability and from the KL: otherwise the overwrite would make the stored next latent
differ from the predicted mean by a policy-dependent amount. `frame_mask` is that exclusion.

Shapes: B batch, C latent channels (48 for Wan2.2), F latent frames, H, W latent height and
width, L = (F/pt)(H/ph)(W/pw) DiT tokens in (f, h, w) row-major order for patch (pt, ph, pw) =
(1, 2, 2), N sampling steps, K SDE (trained) steps.

The model is any callable `model(x, t, context) -> v` with x (B, C, F, H, W), t (B, L) per-token
timesteps on the 0..1000 scale, and `context` passed through untouched (model.py's
WanModel.forward); this file does not import model.py.

References
    VideoRLVR: arXiv 2605.15458 (Early-Step Focus: SDE and gradients on the first K of N steps).
    Flow-GRPO: Liu et al. 2025, arXiv:2505.05470; code yifan123/flow_grpo
        flow_grpo/diffusers_patch/sd3_sde_with_logprob.py @54809b5 (SDE and CPS steps),
        flow_grpo/diffusers_patch/wan_pipeline_with_logprob.py (the Wan step, sde_type="wan").
    CPS: Coefficients-Preserving Sampling, arXiv:2509.05952 (same flow_grpo file, sde_type='cps').
    DanceGRPO: XueZeyue/DanceGRPO fastvideo/train_grpo_wan_2_1.py::flux_step (constant-eta SDE).
    Wan2.2: Wan-Video/Wan2.2 wan/utils/fm_solvers_unipc.py @00b69de (flow UniPC),
        wan/textimage2video.py, wan/utils/fm_solvers.py.
    DiffSynth-Studio: diffsynth/diffusion/flow_match.py @038bad0, loss.py @0e6976a (SFT noising,
        loss weight).

Run the tests: python -m pytest tests/test_sde.py -q
"""
import hashlib
import math
from typing import NamedTuple

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000  # the DiT's time scale: t = 1000 * sigma


# -------------------------------------------------------------------------------------------------
# sigma grids and timesteps

def shift_sigma(sigma, shift):
    """Timestep shift sigma' = s * sigma / (1 + (s - 1) * sigma).

    It fixes 0 and 1 and, for s > 1, spends more steps at high noise (Wan2.2
    wan/utils/fm_solvers.py get_sampling_sigmas; DiffSynth set_timesteps_wan).
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def to_timestep(sigma):
    """Model timestep t = 1000 * sigma (a float, as DiffSynth feeds it; DanceGRPO truncates)."""
    return sigma * NUM_TRAIN_TIMESTEPS


def sigma_grid(num_steps, shift=5.0):
    """The flow sampling grid, (N+1,) float32: sigma_i = shift(1 - i/N) for i < N, then sigma_N = 0.

    N uniform steps from exactly 1 to 0 before the shift (DiffSynth set_timesteps_wan, Wan2.2
    get_sampling_sigmas, Flow-GRPO/DanceGRPO rollouts). The model timesteps are
    `to_timestep(sigmas[:-1])`, floats.
    How this differs from `unipc_grid`, the official Wan UniPC grid used only by the optional
    UniPC path: there sigma starts from sigma_max = 0.999 (float32 0.99900001...) instead of 1,
    so the first shifted sigma is 0.9998 rather than 1, and the model is fed int64 timesteps
    truncated from 1000 * sigma while the update uses the exact float sigma. With sigma_0 = 1
    here, the SDE step's sigma = 1 special case (see `sde_step`) applies at step 0.
    """
    if num_steps < 1:
        raise ValueError(f"sigma_grid: num_steps must be >= 1, got {num_steps}")
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)   # (N+1,) ends exactly at 0
    return shift_sigma(u, shift).to(torch.float32)                    # (N+1,) shift(0) = 0, shift(1) = 1


def unipc_grid(num_steps, shift=5.0):
    """The official FlowUniPCMultistepScheduler grid: (sigmas (N+1,) float32, timesteps (N,) int64).

    Wan2.2 wan/utils/fm_solvers_unipc.py: the scheduler is built with shift 1, so sigma_max =
    float32(0.999); set_timesteps(N, shift) takes numpy linspace(sigma_max, 0, N+1)[:N] in
    float64, shifts it, truncates 1000 * sigma to int64 for the model, and stores the float32
    sigmas with a final 0. numpy is used on purpose: it reproduces the official grid and its
    integer timesteps exactly.
    """
    sigma_max = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))       # 0.9990000128746033
    s = shift_sigma(np.linspace(sigma_max, 0.0, num_steps + 1)[:-1], shift)   # (N,) float64
    # truncation to int64, as officially
    timesteps = torch.from_numpy((s * NUM_TRAIN_TIMESTEPS).astype(np.int64))  # (N,)
    sigmas = torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))  # (N+1,)
    return sigmas, timesteps


def token_timesteps(t, latent_shape, patch_size=(1, 2, 2), clean_first_frame=True):
    """Per-token timesteps (B, L) float32 for a latent of shape (B, C, F, H, W).

    Wan2.2 "expand timesteps" (wan/textimage2video.py): every token gets t, except that with
    image conditioning the tokens of latent frame 0 get 0 (that frame is the clean image).
    Tokens are in (f, h, w) row-major order, so frame 0 is the first (H/ph)(W/pw) tokens.
    t: a number, a 0-dim tensor or (B,).
    """
    if len(latent_shape) != 5:
        raise ValueError(f"token_timesteps: latent_shape must be (B, C, F, H, W), got "
                         f"{tuple(latent_shape)}")
    B, _, F, H, W = latent_shape
    pt, ph, pw = patch_size
    if F % pt or H % ph or W % pw:
        raise ValueError(f"token_timesteps: latent (F, H, W) = {(F, H, W)} not divisible by "
                         f"patch {patch_size}")
    if clean_first_frame and pt != 1:
        raise ValueError(f"token_timesteps: a clean first frame needs temporal patch 1, got "
                         f"patch {patch_size}")
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.ndim == 0:
        t = t.expand(B)                                           # (B,)
    if t.shape != (B,):
        raise ValueError(f"token_timesteps: t must be a number or shape ({B},), got "
                         f"{tuple(t.shape)}")
    per_frame = (H // ph) * (W // pw)
    tt = t[:, None].expand(B, (F // pt) * per_frame).clone()       # (B, L)
    if clean_first_frame:
        tt[:, :per_frame] = 0.0
    return tt


def frame_mask(num_frames, device=None):
    """(1, 1, F, 1, 1) float32: 0 on latent frame 0 (the conditioning image), 1 elsewhere.

    It multiplies the SDE noise and weights the log-probability, KL and SFT loss averages.
    """
    m = torch.ones(1, 1, num_frames, 1, 1, device=device)
    m[:, :, 0] = 0.0
    return m


def masked_mean(x, mask=None):
    """Mean over all non-batch dims of x (B, ...), counting only elements where mask is 1: (B,).

    mask is 0/1 and broadcastable to x. With mask None this is the plain mean flow_grpo takes
    (`mean(dim=1..)`).
    """
    dims = tuple(range(1, x.ndim))
    if mask is None:
        return x.mean(dim=dims)
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum(dim=dims) / mask.sum(dim=dims)


def _column(sigma, x, name):
    """sigma as float32 of shape (B or 1, 1, 1, 1, 1) to broadcast against x (B, ...)."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if s.ndim > 1 or (s.ndim == 1 and s.numel() not in (1, x.shape[0])):
        raise ValueError(f"{name} must be a number or shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s.reshape(-1, *([1] * (x.ndim - 1)))                   # (B or 1, 1, 1, 1, 1)


# -------------------------------------------------------------------------------------------------
# SFT: flow-matching noising of clean latents

class SFTBatch(NamedTuple):
    x_t: torch.Tensor      # (B, C, F, H, W) x_sigma, frame 0 kept clean
    target: torch.Tensor   # (B, C, F, H, W) velocity target eps - x0
    t: torch.Tensor        # (B, L) per-token timesteps, frame-0 tokens at 0
    mask: torch.Tensor     # (1, 1, F, 1, 1) loss mask, 0 on frame 0 (ones without an image)
    sigma: torch.Tensor    # (B,) the sampled noise level per video
    weight: torch.Tensor   # (B,) DiffSynth's timestep loss weight for that sigma


def _sft_grid(shift):
    """The 1000-step training grid (1000,) float64 and DiffSynth's loss weight on it (mean 1)."""
    u = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float64)[:-1]
    grid = shift_sigma(u, shift)                                     # (1000,)
    bump = torch.exp(-2 * ((to_timestep(grid) - 500) / 1000) ** 2)
    bump = bump - bump.min()
    return grid, bump * (NUM_TRAIN_TIMESTEPS / bump.sum())           # (1000,) mean 1


def sft_noising(x0, generator=None, shift=5.0, patch_size=(1, 2, 2), clean_first_frame=True):
    """Noise clean latents x0 (B, C, F, H, W) for the flow-matching SFT loss; one sigma per video.

    Sampling (DiffSynth FlowMatchSFTLoss with the Wan scheduler in training mode,
    diffsynth/diffusion/loss.py): k ~ Uniform{0, ..., 999}, sigma = shift(1 - k/1000), i.e.
    uniform over the 1000-step training grid (min/max timestep boundary 0 and 1) after the
    timestep shift (default 5 as DiffSynth's Wan template). DiffSynth draws one k per batch; we
    draw one per video (lower-variance gradient, same expectation).
        x_sigma = (1 - sigma) x0 + sigma eps,   target v* = eps - x0
    With clean_first_frame, frame 0 of x_sigma is x0's frame 0 (the conditioning image, DiffSynth
    `latents[:, :, 0:1] = first_frame_latents`), its tokens get t = 0 and the mask drops it from
    the loss (DiffSynth loss.py `noise_pred[:, :, 1:]`).
    weight: DiffSynth set_training_weight, a bump w(t) = exp(-2 ((t - 500)/1000)^2) over the
    grid's timesteps, minus its minimum, rescaled to average 1 over the grid; `sft_loss` applies
    it.
    """
    if x0.ndim != 5:
        raise ValueError(f"sft_noising: x0 must be (B, C, F, H, W), got {tuple(x0.shape)}")
    x0 = x0.float()
    B, _, F, _, _ = x0.shape
    grid, grid_weight = _sft_grid(shift)                             # (1000,), (1000,)
    k = torch.randint(0, NUM_TRAIN_TIMESTEPS, (B,), generator=generator, device=x0.device)
    sigma = grid.to(x0.device)[k].float()                            # (B,)
    weight = grid_weight.to(x0.device)[k].float()                    # (B,)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
    s = sigma.view(B, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    if clean_first_frame:
        x_t = torch.cat([x0[:, :, :1], x_t[:, :, 1:]], dim=2)       # (B, C, F, H, W) frame 0 clean
        mask = frame_mask(F, device=x0.device)
    else:
        mask = torch.ones(1, 1, F, 1, 1, device=x0.device)
    t = token_timesteps(to_timestep(sigma), x0.shape, patch_size, clean_first_frame)
    return SFTBatch(x_t, eps - x0, t, mask, sigma, weight)


def sft_loss(v, batch, weighted=True):
    """Flow-matching SFT loss: mean over videos of weight * masked-mean (v - target)^2.

    Frame 0 is left out by the batch's mask.
    """
    if v.shape != batch.target.shape:
        raise ValueError(f"sft_loss: prediction shape {tuple(v.shape)} != target shape "
                         f"{tuple(batch.target.shape)}")
    per_video = masked_mean((v.float() - batch.target) ** 2, batch.mask)   # (B,)
    if weighted:
        return (per_video * batch.weight).mean()
    return per_video.mean()


# -------------------------------------------------------------------------------------------------
# one denoising step: ODE (Euler) and SDE (Euler-Maruyama) with its Gaussian log-probability

def ode_step(x, v, sigma, sigma_next):
    """Euler step of the probability-flow ODE dx = v dsigma: x_next = x + (sigma_next - sigma) v.

    In float32 (DiffSynth FlowMatchScheduler.step). The last step (sigma_next = 0) returns
    x0_hat.
    """
    x = x.float()
    v = v.float()
    dt = _column(sigma_next, x, "sigma_next") - _column(sigma, x, "sigma")
    return x + dt * v


SDE_TYPES = ("sde", "cps", "dance", "wan")


def wan_sigma_max(num_steps, shift=5.0):
    """Flow-GRPO's Wan noise amplitude for a grid: sigma_max = sigmas[1], the grid's second value.

    This is the `noise_level` that makes sde_type="wan" reproduce Flow-GRPO's Wan step exactly
    (yifan123/flow_grpo flow_grpo/diffusers_patch/wan_pipeline_with_logprob.py,
    sde_step_with_logprob: sigma_max = self.sigmas[1]): 0.990 for N = 20 at shift 5.
    """
    return float(sigma_grid(num_steps, shift)[1])


def _sde_mean_std(x, v, s, s_next, noise_level, sde_type):
    """The mean and std of one SDE step (see sde_step for the formulas), float32."""
    dt = s_next - s
    if sde_type == "cps":
        std = s_next * math.sin(noise_level * math.pi / 2)
        x0_hat = x - s * v
        eps_hat = x + (1 - s) * v
        mean = x0_hat * (1 - s_next) + eps_hat * torch.sqrt(s_next ** 2 - std ** 2)
        return mean, std
    if sde_type == "sde":
        s_den = torch.where(s == 1, s_next, s)        # flow_grpo's sigma_max guard at sigma = 1
        sigma_t = noise_level * torch.sqrt(s / (1 - s_den))
    elif sde_type == "wan":
        sigma_t = noise_level * s                     # sigma_min + (sigma_max - sigma_min) sigma
    else:
        sigma_t = torch.full_like(s, noise_level)
    mean = x + dt * (v + sigma_t ** 2 / (2 * s) * (x + (1 - s) * v))
    std = sigma_t * torch.sqrt(-dt)
    return mean, std


def _check_step_inputs(x, v, sigma, sigma_next, noise_level, sde_type, x_next):
    """Raise a ValueError naming the problem with the inputs of sde_step."""
    if sde_type not in SDE_TYPES:
        raise ValueError(f"sde_step: sde_type must be one of {SDE_TYPES}, got {sde_type!r}")
    if v.shape != x.shape:
        raise ValueError(f"sde_step: v shape {tuple(v.shape)} != x shape {tuple(x.shape)}")
    if x_next is not None and x_next.shape != x.shape:
        raise ValueError(f"sde_step: x_next shape {tuple(x_next.shape)} != x shape "
                         f"{tuple(x.shape)}")
    if noise_level < 0:
        raise ValueError(f"sde_step: noise_level must be >= 0, got {noise_level}")


def sde_step(x, v, sigma, sigma_next, noise_level=0.7, *, sde_type="sde", x_next=None,
             generator=None, mask=None):
    """One stochastic denoising step x -> x_next ~ N(mean, std^2 I) and its log-probability.

    dt = sigma_next - sigma < 0. Four noise schedules, chosen by sde_type:

    "sde" (Flow-GRPO; sd3_sde_with_logprob.py sde_type='sde', arXiv:2505.05470). The reverse SDE
        dx = [v + sigma_t^2 / (2 sigma) * (x + (1 - sigma) v)] dsigma + sigma_t dw
    has the same marginals as the ODE dx = v dsigma (x + (1 - sigma) v = -sigma * score).
    Euler-Maruyama:
        mean = x + dt * [v + sigma_t^2 / (2 sigma) * (x + (1 - sigma) v)]
             (= x (1 + sigma_t^2 dt / (2 sigma)) + v (1 + sigma_t^2 (1 - sigma) / (2 sigma)) dt,
              flow_grpo's form)
        std  = sigma_t * sqrt(-dt),   sigma_t = a * sqrt(sigma / (1 - sigma)),   a = noise_level
        At sigma = 1 the reference replaces the sigma in the denominator by sigmas[1], the next
        grid value; at step 0 that is sigma_next, so here: sigma_t = a sqrt(1 / (1 - sigma_next))
        and std = a.
    "dance" (DanceGRPO flux_step with sde_solver=True; MixGRPO dance_grpo_step): the same drift
        with a constant sigma_t = eta = noise_level (typ. 0.3): std = eta * sqrt(-dt).
    "wan" (Flow-GRPO's Wan pipeline: yifan123/flow_grpo
        flow_grpo/diffusers_patch/wan_pipeline_with_logprob.py::sde_step_with_logprob, imported by
        scripts/train_wan2_1.py; read at the fork zhtmike/flow_grpo @def7b840, as the fetched
        upstream snapshot @ac4c86e predates the Wan files): the same drift and Euler-Maruyama step
        as "sde", with a noise scale linear in sigma,
            sigma_t = sigma_min + (sigma_max - sigma_min) * sigma,
        sigma_max = sigmas[1] and sigma_min = sigmas[-1] of the sampling grid. Our grids end at
        sigma_N = 0 (as diffusers' UniPC scheduler with final_sigmas_type="zero" there), so
        sigma_t = a * sigma with a = noise_level = sigma_max: `wan_sigma_max(N, shift)` (0.990
        at N = 20, shift 5) reproduces Flow-GRPO, which has no other knob. Per step
        std = a sigma sqrt(-dt): 0.10-0.14 on the first ten of 20 steps at shift 5, where "sde"
        with a = 0.7 gives 0.28-0.73. No sigma = 1 guard is needed (sigma only divides).
    "cps" (Coefficients-Preserving Sampling, arXiv:2509.05952; flow_grpo sde_type='cps'):
        std  = sigma_next * sin(a pi / 2)       (a = noise_level, typ. 0.8)
        mean = x0_hat (1 - sigma_next) + eps_hat sqrt(sigma_next^2 - std^2)
        with x0_hat = x - sigma v, eps_hat = x + (1 - sigma) v: the coefficients of x0 and of
        noise stay (1 - sigma_next, sigma_next). Note flow_grpo's CPS "log-prob" is
        -(x_next - mean)^2 with every constant AND the 1/(2 std^2) dropped; we return the true
        Gaussian log-density for every type, so a PPO clip range tuned on flow_grpo's CPS numbers
        does not carry over. std = 0 at sigma_next = 0: keep a CPS window off the last step.

    Log-probability (all types): the Gaussian log-density
        log N(x_next; mean, std^2) = -(x_next - mean)^2 / (2 std^2) - log std - log sqrt(2 pi)
    per element, AVERAGED (not summed) over the non-batch dims as flow_grpo does (mean vs sum
    sets the scale the PPO clip acts on), in float32. x_next is detached: gradients flow through
    `mean` (i.e. through v) only. mask (broadcastable, e.g. `frame_mask(F)` (1, 1, F, 1, 1))
    zeroes the noise and drops elements from the average: latent frame 0 in TI2V.

    Either draw x_next = mean + std * eps with eps ~ N(0, I) from `generator` (rollout), or pass
    the stored x_next to score it under the current v (policy update: ratio =
    exp(log_prob - stored)). noise_level = 0: every type reduces to the Euler step x + dt v
    (tested against `ode_step`); the step is then deterministic, draws no noise, and log_prob is
    returned as 0 (a point mass has no density; scoring a given x_next with noise_level 0
    raises).

    Shapes: x, v, x_next (B, C, F, H, W); sigma, sigma_next numbers or (B,).
    Returns x_next (float32), log_prob (B,) float32, mean (float32, differentiable in v),
    std (B or 1, 1, 1, 1, 1).
    """
    _check_step_inputs(x, v, sigma, sigma_next, noise_level, sde_type, x_next)
    # bf16 can overflow in the mean (flow_grpo): all step math in float32
    x = x.float()
    v = v.float()
    s = _column(sigma, x, "sigma")
    s_next = _column(sigma_next, x, "sigma_next")
    if (s_next - s >= 0).any():
        raise ValueError(f"sde_step: sigma_next must be < sigma (dt < 0), got sigma {sigma}, "
                         f"sigma_next {sigma_next}")
    mean, std = _sde_mean_std(x, v, s, s_next, noise_level, sde_type)

    batch = x.shape[0]
    if noise_level == 0:
        if x_next is not None:
            raise ValueError("sde_step: noise_level 0 is deterministic; there is no "
                             "log-probability to score x_next with")
        return mean.detach(), torch.zeros(batch, device=x.device), mean, std
    if x_next is None:
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        if mask is not None:
            eps = eps * mask
        x_next = mean.detach() + std * eps
    x_next = x_next.detach().float()
    if (std == 0).any():
        raise ValueError("sde_step: std is 0 on this step (CPS at sigma_next = 0?), the "
                         "log-probability is undefined")
    log_prob = (-((x_next - mean) ** 2) / (2 * std ** 2)
                - torch.log(std)
                - 0.5 * math.log(2 * math.pi))
    return x_next, masked_mean(log_prob, mask), mean, std


# -------------------------------------------------------------------------------------------------
# the flow UniPC multistep solver (official Wan sampler, for evaluation parity)

def _lam(sigma):
    """UniPC's log-SNR lambda = log(alpha) - log(sigma), alpha = 1 - sigma (+inf at sigma = 0)."""
    return torch.log(1 - sigma) - torch.log(sigma)


def _unic_corrector(x, m, s, i, state):
    """The UniC corrector of step i > 0 (see unipc_step): the corrected x_i."""
    x_prev, m_prev, m_prev2, p = state
    h = _lam(s[i]) - _lam(s[i - 1])
    phi = torch.expm1(-h)
    base = s[i] / s[i - 1] * x_prev - (1 - s[i]) * phi * m_prev
    if p == 1:
        return base - (1 - s[i]) * phi * (0.5 * (m - m_prev))
    r = (_lam(s[i - 2]) - _lam(s[i - 1])) / h
    b1 = (phi / -h - 1) / phi
    b2 = 2 * ((phi / -h - 1) / -h - 0.5) / phi
    one = torch.ones_like(r)
    R = torch.stack([torch.stack([one, one]), torch.stack([r, one])])       # (2, 2)
    rho = torch.linalg.solve(R, torch.stack([b1, b2]))                      # (2,)
    correction = rho[0] * ((m_prev2 - m_prev) / r) + rho[1] * (m - m_prev)
    return base - (1 - s[i]) * phi * correction


def unipc_step(x, v, sigmas, i, state=None):
    """Step i of the flow UniPC solver.

    Wan2.2 FlowUniPCMultistepScheduler (wan/utils/fm_solvers_unipc.py) with solver_order 2, bh2,
    predict_x0, lower_order_final, corrector on every step but the first.

    With alpha = 1 - sigma, lambda = log alpha - log sigma and the data prediction
    m_i = x_i - sigma_i v_i (from the uncorrected x_i), at step i:
      corrector (UniC, i > 0, order p = previous step's order), h = lambda_i - lambda_{i-1},
        phi = expm1(-h) (= B(h) for bh2),
        base = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i phi m_{i-1}:
        p = 1: x_i = base - alpha_i phi * 0.5 (m_i - m_{i-1})
        p = 2: r = (lambda_{i-2} - lambda_{i-1}) / h, D = (m_{i-2} - m_{i-1}) / r, solve
               [[1, 1], [r, 1]] rho = [b1, b2],  b1 = (phi/(-h) - 1) / phi,
               b2 = 2 ((phi/(-h) - 1)/(-h) - 1/2) / phi;
               x_i = base - alpha_i phi (rho1 D + rho2 (m_i - m_{i-1}))
        (x_{i-1} is the previous *corrected* sample)
      predictor (UniP), order p = min(2, N - i, i + 1), h = lambda_{i+1} - lambda_i,
        phi = expm1(-h):
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} phi m_i
                  [p = 2: - alpha_{i+1} phi * 0.5 (m_{i-1} - m_i) / r,
                   r = (lambda_{i-1} - lambda_i) / h]
      The last step (sigma_N = 0, lambda = inf, phi = -1, p = 1) returns m_{N-1} = x0_hat.
    Scalars are float32 0-dim tensors as in the official code, which this matches to ~1e-7
    (tests/test_sde.py against tests/fixtures/unipc_reference.safetensors).

    sigmas: the (N+1,) grid from `unipc_grid`; state: None at i = 0, then what the previous call
    returned. Returns (x_next, state), state = (x_i corrected, m_i, m_{i-1}, order of step i).
    """
    s = sigmas.to(device=x.device, dtype=torch.float32)
    n = s.numel() - 1
    m = x - s[i] * v                                       # data prediction, uncorrected sample
    m_prev = None
    if state is not None:                                  # UniC corrector, using this step's m
        m_prev = state[1]
        x = _unic_corrector(x, m, s, i, state)
    p = min(2, n - i, i + 1)
    h = _lam(s[i + 1]) - _lam(s[i])
    phi = torch.expm1(-h)
    x_next = s[i + 1] / s[i] * x - (1 - s[i + 1]) * phi * m
    if p == 2:
        r = (_lam(s[i - 1]) - _lam(s[i])) / h
        x_next = x_next - (1 - s[i + 1]) * phi * (0.5 * ((m_prev - m) / r))
    return x_next, (x, m, m_prev, p)


# -------------------------------------------------------------------------------------------------
# the sampler: rollouts (SDE window) and evaluation (ODE or UniPC) in one loop

def velocity(model, x, t, context, *, cfg_scale=1.0, neg_context=None, clean_first_frame=True,
             patch_size=(1, 2, 2)):
    """The velocity used for a step, float32 (B, C, F, H, W): model(x, t_tokens, context).

    With classifier-free guidance v = v_neg + cfg_scale (v_pos - v_neg) when cfg_scale != 1
    (Wan2.2 wan/textimage2video.py; two calls, as the official sampler, since `context` is opaque
    here). t is the model timestep (number or (B,)); per-token timesteps come from
    `token_timesteps`. The rollout and the policy update both call this, so the recomputed v
    matches the stored one.
    """
    tt = token_timesteps(t, x.shape, patch_size, clean_first_frame).to(x.device)  # (B, L)
    v = model(x, tt, context)
    if v.shape != x.shape:
        raise ValueError(f"velocity: model output shape {tuple(v.shape)} != latent shape "
                         f"{tuple(x.shape)}")
    v = v.float()
    if cfg_scale != 1.0:
        if neg_context is None:
            raise ValueError(f"velocity: cfg_scale {cfg_scale} != 1 needs neg_context")
        v_neg = model(x, tt, neg_context).float()
        v = v_neg + cfg_scale * (v - v_neg)
    return v


class Trajectory(NamedTuple):
    """What the policy update needs from the SDE steps of a rollout, batch first (empty: K = 0)."""
    latents: torch.Tensor       # (B, K, C, F, H, W) x_i before each SDE step
    next_latents: torch.Tensor  # (B, K, C, F, H, W) x_{i+1} after it (frame 0 re-imposed)
    log_probs: torch.Tensor     # (B, K) float32 log N(x_{i+1}; mean_i, std_i^2), masked mean
    steps: torch.Tensor         # (K,) int64 step index i
    sigmas: torch.Tensor        # (K,) sigma_i
    sigmas_next: torch.Tensor   # (K,) sigma_{i+1}
    timesteps: torch.Tensor     # (K,) model timestep 1000 * sigma_i


def _check_sample_inputs(noise, image_latent, num_steps, sde_start, sde_steps, unipc):
    """Raise a ValueError naming the problem with the inputs of sample."""
    if noise.ndim != 5:
        raise ValueError(f"sample: noise must be (B, C, F, H, W), got {tuple(noise.shape)}")
    B, C, F, H, W = noise.shape
    if image_latent is not None and tuple(image_latent.shape) != (B, C, 1, H, W):
        raise ValueError(f"sample: image_latent must be {(B, C, 1, H, W)}, got "
                         f"{tuple(image_latent.shape)}")
    if sde_start < 0 or sde_steps < 0 or sde_start + sde_steps > num_steps:
        raise ValueError(f"sample: SDE window [{sde_start}, {sde_start + sde_steps}) not inside "
                         f"[0, {num_steps})")
    if unipc and sde_steps > 0:
        raise ValueError("sample: unipc=True is a deterministic solver; use sde_steps=0 with it")


def _trajectory(records, x, sigmas, timesteps):
    """The recorded SDE steps [(x_i, x_{i+1}, log_prob_i, i), ...] as a Trajectory."""
    B, C, F, H, W = x.shape
    steps = torch.tensor([r[3] for r in records], dtype=torch.long, device=x.device)   # (K,)
    if records:
        latents = torch.stack([r[0] for r in records], dim=1)           # (B, K, C, F, H, W)
        next_latents = torch.stack([r[1] for r in records], dim=1)      # (B, K, C, F, H, W)
        log_probs = torch.stack([r[2] for r in records], dim=1)         # (B, K)
    else:
        latents = x.new_zeros(B, 0, C, F, H, W)
        next_latents = x.new_zeros(B, 0, C, F, H, W)
        log_probs = x.new_zeros(B, 0)
    return Trajectory(latents, next_latents, log_probs, steps, sigmas[steps], sigmas[steps + 1],
                      timesteps[steps].float())


@torch.no_grad()
def sample(model, noise, context, *, image_latent=None, num_steps=20, shift=5.0, sde_start=0,
           sde_steps=0, noise_level=0.7, sde_type="sde", cfg_scale=1.0, neg_context=None,
           generator=None, unipc=False, patch_size=(1, 2, 2)):
    """Denoise `noise` (B, C, F, H, W) to a latent: (x0 (B, C, F, H, W) float32, Trajectory).

    From pure noise with frame 0 set to image_latent (B, C, 1, H, W) (None: no image
    conditioning, as T2V), for i = 0 .. N-1 on `sigma_grid(num_steps, shift)`:
        v = velocity(model, x, 1000 sigma_i, ...)  (frame-0 tokens at t = 0; CFG if cfg_scale != 1)
        i in [sde_start, sde_start + sde_steps):  x = sde_step(...) with noise from `generator`,
                                                  recorded
        otherwise:                                x = ode_step(...) (or unipc_step, unipc=True)
        x[:, :, 0] = image_latent                  (re-imposed after every step, Wan2.2 i2v)
    Early-Step Focus (arXiv 2605.15458) is sde_start = 0, sde_steps = K (K = N/2); sde_steps = 0
    is the deterministic evaluation sampler: the result depends on `noise` only. Noise is drawn
    only in the window, in step order, so equal generator seeds give bitwise-equal rollouts on
    the same device.

    The policy update recomputes, with grad, for each recorded step k (all (B, K) fields batch
    first):
        v = velocity(model, traj.latents[:, k], traj.timesteps[k], context, same cfg options)
        _, log_prob, mean, std = sde_step(traj.latents[:, k], v, traj.sigmas[k],
                                          traj.sigmas_next[k], noise_level, sde_type=...,
                                          x_next=traj.next_latents[:, k], mask=frame_mask(F))
    and with unchanged parameters exp(log_prob - traj.log_probs[:, k]) == 1 exactly (tested).
    unipc=True runs the official flow UniPC solver on `unipc_grid` (int timesteps); it is
    deterministic and cannot be combined with an SDE window. Runs under no_grad: rollouts are
    never differentiated.
    """
    _check_sample_inputs(noise, image_latent, num_steps, sde_start, sde_steps, unipc)
    F = noise.shape[2]
    if unipc:
        sigmas, timesteps = unipc_grid(num_steps, shift)
    else:
        sigmas = sigma_grid(num_steps, shift)
        timesteps = to_timestep(sigmas[:-1])
    sigmas = sigmas.to(noise.device)
    timesteps = timesteps.to(noise.device)
    cond = image_latent is not None
    mask = frame_mask(F, device=noise.device) if cond else None
    x = noise.float()
    if cond:
        x = torch.cat([image_latent.float(), x[:, :, 1:]], dim=2)   # (B, C, F, H, W) frame 0 = image
    records = []
    state = None
    for i in range(num_steps):
        v = velocity(model, x, timesteps[i], context, cfg_scale=cfg_scale,
                     neg_context=neg_context, clean_first_frame=cond, patch_size=patch_size)
        in_window = sde_start <= i < sde_start + sde_steps
        if in_window:
            x_next, log_prob, _, _ = sde_step(x, v, sigmas[i], sigmas[i + 1], noise_level,
                                              sde_type=sde_type, generator=generator, mask=mask)
        elif unipc:
            x_next, state = unipc_step(x, v, sigmas, i, state)
        else:
            x_next = ode_step(x, v, sigmas[i], sigmas[i + 1])
        if cond:
            x_next = torch.cat([image_latent.float(), x_next[:, :, 1:]], dim=2)  # frame 0 again
        if in_window:
            records.append((x, x_next, log_prob, i))
        x = x_next
    return x, _trajectory(records, x, sigmas, timesteps)


# -----------------------------------------------------------------------------
# seeded generators for the training and evaluation loops (added for train.py / eval.py)

def generator(device, *keys):
    """A torch.Generator seeded from a tuple of keys (seed, stage, step, rank, ...).

    Every random draw of a run is a function of where it happens, so a resumed run draws exactly
    what the uninterrupted one would, and evaluation noise does not depend on the batching.
    """
    digest = hashlib.sha256(repr(keys).encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return g
