"""Why the diffusion profiles are what they are, and how the ``paper``
profile differs from the authors' guided-diffusion run (shown by
notebook 03, kept here next to the code that causes the differences)."""

from __future__ import annotations

#: How the ``paper`` profile differs from the authors' guided-diffusion run
#: (shown by notebook 03 and kept next to the code that causes it).
DIFFERENCES: tuple[str, ...] = (
    "Network: diffusers UNet2DModel instead of guided-diffusion's UNetModel. With widths "
    "64·(1,1,2,2,4,4), 3 res-blocks per level, scale-shift norm, conv down/up-sampling, "
    "attention at 16×16 and 8×8 (4 heads of 64 channels) and in the middle block it has the "
    "same layers; guided-diffusion's q/k/v are 1×1 convolutions where diffusers uses linear "
    "layers (the same maps).",
    "Initialisation: guided-diffusion zero-initialises the last conv of every res-block, the "
    "attention output projection and the output conv; `zero_init: true` does the same to the "
    "diffusers modules. Other layers keep PyTorch/diffusers' default init.",
    "Variance: the authors' flags (their README) set no --learn_sigma, so guided-diffusion's "
    "default applies: fixed variance β_t and the plain ε-MSE loss, which is exactly "
    "DDPMScheduler(variance_type='fixed_large') here. Had they used --learn_sigma True (hybrid "
    "L_simple + λ·L_vlb loss, 2C output channels), diffusers has no hybrid loss: its scheduler "
    "could sample with 'learned_range' but the VLB term would have to be hand-written.",
    "Noise schedule: guided-diffusion scales the linear schedule with T (β from 0.0001·1000/T "
    "to 0.02·1000/T: 2.5e-5..0.005 for T = 4000); `beta_start/beta_end: null` computes the "
    "same values (diffusers would otherwise use 1e-4..0.02 for every T). diffusers keeps "
    "ᾱ_t in float32 where guided-diffusion uses float64.",
    "EMA: diffusers' EMAModel with min_decay = decay = 0.9999 (`ema_warmup: false`) is "
    "guided-diffusion's constant rate, except that its first update copies the weights after "
    "step 1 where guided-diffusion starts from the initial weights.",
    "Precision: on a GPU the default is bf16 autocast (accelerate mixed_precision) with "
    "fp32 master weights; guided-diffusion's default (use_fp16 False) is fp32. Set "
    "`mixed_precision: 'no'` for fp32. On a CPU the default is fp32; `mixed_precision: 'bf16'` "
    "(the `reference` profile) uses bf16 autocast where the CPU has bf16 units (AMX or AVX-512 "
    "BF16: 1.2× a float32 step at 32², the fit at every checkpoint within 0.03 of float32's on 256 "
    "slices of the phantom) and falls back to fp32 elsewhere.",
    "Optimiser: AdamW(lr 1e-4, weight decay 0, betas 0.9/0.999), constant LR as in "
    "guided-diffusion; gradient clipping is available but off in `paper` (guided-diffusion "
    "does not clip).",
    "Data: batches are drawn as consecutive slices of per-epoch permutations seeded by "
    "(seed, epoch), like a shuffled DataLoader; no flips, as the authors (their loader takes a "
    "random_flip argument but never applies it).",
    "Length: guided-diffusion trains until stopped; the authors' sampling instructions load "
    "their 30 000-step checkpoint (model030000.pt), so `max_steps` is 30 000 (longer runs: "
    "--set train_diffusion.max_steps=N).",
)


#: Why each size profile is what it is (configs/profiles/*.yaml, section
#: train_diffusion); notebook 03 shows the one in use.
PROFILE_NOTES: dict[str, str] = {
    "smoke": "Seconds: a 0.19 M-parameter UNet (widths 16-32, attention at 16×16), T = 50, 20 steps of 8 "
             "images at 32², one CPU thread (for tensors this small a second thread only adds waiting). "
             "It checks that the step runs end to end; its samples are noise.",
    "cpu": "The size sweep on 2 cores: a 1.13 M-parameter UNet (widths 16-32-64-64, 32² down to 4², one "
           "res-block per level, attention at 8×8 and in the middle), T = 200 with guided-diffusion's 1000/T-scaled "
           "linear schedule, batch 16 × 900 steps = 14 400 images per training-set size, AdamW lr 1e-3 after 50 "
           "warm-up steps, clipping at 1, EMA ramping (1+s)/(10+s) up to 0.999. Two deviations from the authors, "
           "both measured on 16 phantom slices at this budget (16 samples each, seeds 100-115; background = pixels "
           "that are 0 in every training image, speckle = std of the Laplacian inside the brain, training images "
           "56): ε-prediction gives grey backgrounds (mean 99.8 grey levels, std 28.4): at high noise an "
           "ε-model's x̂₀ = (x_t - √(1-ᾱ)ε̂)/√ᾱ multiplies its error by 1/√ᾱ_t (about 150 at t = T) and clipping "
           "x̂₀ to [-1, 1] turns that into a bias (without clipping: mean 139.6, std 119); v-prediction trained "
           "alike gives a dark background (mean 4.9, std 5.3, speckle 67.9), so the profile uses it. fixed_small "
           "(σ² = the posterior variance) instead of fixed_large (σ² = β_t) lowers the last steps' noise: "
           "background std 4.1, speckle 62.1; DDIM (deterministic, 50 steps) was worse (mean 9.5, speckle 71.5). "
           "The speckle that remains we take for undertraining (not measured further; the former 64² default "
           "with 12 800 images, 36 passes per slice, looked noisier by eye).",
    "gpu": "One modern GPU, hours: the paper's UNet (base width 64, 3 res-blocks, attention at 16×16 and "
           "8×8) with guided-diffusion's 128² channel multipliers (1,1,2,3,4), 31 M parameters; T = 1000 "
           "(ε-prediction, fixed-large variance) so that sampling thousands of images with the full "
           "ancestral loop takes hours, not days; batch 32 × 100 000 steps, lr 1e-4, EMA 0.9999 with the "
           "(1+s)/(10+s) ramp, bf16 autocast.",
    "paper": "The authors' guided-diffusion setting (256², 5 channels, base width 64, 3 res-blocks, 4000 "
             "steps, linear β, lr 1e-4, batch 32, EMA 0.9999, ε-prediction): 41.1 M parameters. The "
             "differences that remain are listed below.",
}

