"""
The seed training script: a compact modern GPT, trained for the profile's fixed budget, then
handed to the evaluator with submit(model). This is the one file the agent edits.

Rotary embeddings, RMSNorm, QK-norm, ReLU^2 MLP, logit soft-capping; Muon for the matrices of the
transformer blocks and AdamW for embeddings, the output head and scalars; the learning rate
follows the fraction of the time to the deadline used. CUDA: bf16 autocast, torch.compile, SDPA.
CPU: fp32.

The budget is wall clock from the container's start, measured by the host: start-up and
compilation count. train.py is told its deadline (context.deadline) and must call submit() by
then; the host kills the run shortly after, and a killed run gets no score.
"""

import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluator import run_context, submit, train_batches

# ---------------------------------------------------------------------------------------------
# Hyperparameters (edit freely; the sequence length, vocabulary and budget come from the profile)

DEPTH = 8  # transformer layers
ASPECT_RATIO = 64  # model width = DEPTH * ASPECT_RATIO
HEAD_DIM = 128  # width of one attention head
MLP_RATIO = 4  # hidden width of the MLP over the model width
TOTAL_BATCH_TOKENS = 2**19  # tokens per optimizer step (gradient accumulation fills it)
DEVICE_BATCH_SIZE = 32  # rows per forward pass on the GPU

# On a machine without CUDA the model shrinks so a step takes about a second on 2 cores.
CPU_DEPTH = 2  # transformer layers on CPU
CPU_ASPECT_RATIO = 64  # model width = CPU_DEPTH * CPU_ASPECT_RATIO
CPU_HEAD_DIM = 32  # width of one attention head on CPU
CPU_TOTAL_BATCH_TOKENS = 2**12  # tokens per optimizer step on CPU
CPU_DEVICE_BATCH_SIZE = 16  # rows per forward pass on CPU

MATRIX_LR = 0.02  # Muon learning rate for the block matrices
EMBED_LR = 0.3  # AdamW learning rate for the token embedding
HEAD_LR = 0.004  # AdamW learning rate for the output head
SCALAR_LR = 0.02  # AdamW learning rate for the residual mixing scalars
MUON_MOMENTUM = 0.95  # Nesterov momentum of Muon
ADAM_BETA1 = 0.8  # AdamW beta1
ADAM_BETA2 = 0.95  # AdamW beta2
WEIGHT_DECAY = 0.0  # decoupled weight decay on the block matrices
WARMUP_FRAC = 0.0  # fraction of the budget spent warming the learning rate up
WARMDOWN_FRAC = 0.4  # fraction of the budget at the end spent decaying it
FINAL_LR_FRAC = 0.05  # learning rate at the end, as a fraction of the peak
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap); keeps early training stable
ROPE_BASE = 10000.0  # rotary embedding base frequency
MAX_LOSS = 20.0  # fail fast when the loss passes this (or is NaN)

# ---------------------------------------------------------------------------------------------
# Setup: profile, device, seed

context = run_context()
PROFILE = context.profile
SEQ_LEN = PROFILE.seq_len
VOCAB_SIZE = PROFILE.vocab_size
DEADLINE = context.deadline  # unix time by which submit() must be called (fixed by the host)
MAX_STEPS = PROFILE.max_steps  # tests only: stop after this many steps (the deadline still rules)
STEP_MARGIN = 1.5  # stop when fewer than this many step-times are left before the deadline

t_start = time.time()
CUDA = torch.cuda.is_available()
device = "cuda" if CUDA else "cpu"
torch.manual_seed(context.seed)
if CUDA:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
else:
    DEPTH, ASPECT_RATIO, HEAD_DIM = CPU_DEPTH, CPU_ASPECT_RATIO, CPU_HEAD_DIM
    TOTAL_BATCH_TOKENS, DEVICE_BATCH_SIZE = CPU_TOTAL_BATCH_TOKENS, CPU_DEVICE_BATCH_SIZE
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else torch.autocast("cpu", enabled=False)

MODEL_DIM = DEPTH * ASPECT_RATIO
N_HEAD = max(1, MODEL_DIM // HEAD_DIM)
ACCUM_STEPS = max(1, TOTAL_BATCH_TOKENS // (DEVICE_BATCH_SIZE * SEQ_LEN))

# ---------------------------------------------------------------------------------------------
# Model


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base):
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, None], angles.sin()[None, None]  # (1, 1, T, head_dim / 2)


def apply_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(MODEL_DIM, 3 * N_HEAD * HEAD_DIM, bias=False)
        self.proj = nn.Linear(N_HEAD * HEAD_DIM, MODEL_DIM, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, N_HEAD, HEAD_DIM).permute(2, 0, 3, 1, 4)
        q, k = norm(q), norm(k)  # QK-norm: attention logits stay bounded
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, N_HEAD * HEAD_DIM))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(MODEL_DIM, MLP_RATIO * MODEL_DIM, bias=False)
        self.proj = nn.Linear(MLP_RATIO * MODEL_DIM, MODEL_DIM, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.mlp = MLP()

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB_SIZE, MODEL_DIM)
        self.blocks = nn.ModuleList([Block() for _ in range(DEPTH)])
        self.lm_head = nn.Linear(MODEL_DIM, VOCAB_SIZE, bias=False)
        # Each block's input mixes the residual stream with the embedding (x0) it started from.
        self.resid_scale = nn.Parameter(torch.ones(DEPTH))
        self.x0_scale = nn.Parameter(torch.zeros(DEPTH))
        cos, sin = rotary_tables(SEQ_LEN, HEAD_DIM, ROPE_BASE)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        for block in self.blocks:
            bound = 3**0.5 * MODEL_DIM**-0.5
            nn.init.uniform_(block.attn.qkv.weight, -bound, bound)
            nn.init.uniform_(block.mlp.fc.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
        nn.init.normal_(self.lm_head.weight, std=0.001)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = block(self.resid_scale[i] * x + self.x0_scale[i] * x0, cos, sin)
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# ---------------------------------------------------------------------------------------------
# Optimizer: Muon for the block matrices, AdamW for everything else


def orthogonalize(g, steps=5):
    """Approximate the nearest semi-orthogonal matrix with a quintic Newton-Schulz iteration
    (coefficients from Keller Jordan's Muon, tuned to converge fast from a normalized start)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]))  # Nesterov
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def make_optimizers(model):
    matrices = [p for block in model.blocks for p in block.parameters()]
    adam = torch.optim.AdamW(
        [
            dict(params=[model.wte.weight], lr=EMBED_LR),
            dict(params=[model.lm_head.weight], lr=HEAD_LR),
            dict(params=[model.resid_scale, model.x0_scale], lr=SCALAR_LR),
        ],
        betas=(ADAM_BETA1, ADAM_BETA2),
        eps=1e-10,
        weight_decay=0.0,
    )
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    if progress < WARMUP_FRAC:
        return (progress + 1e-8) / WARMUP_FRAC
    if progress < 1.0 - WARMDOWN_FRAC:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_FRAC
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------------------------
# Training

model = GPT().to(device)
num_params = sum(p.numel() for p in model.parameters())
optimizers = make_optimizers(model)
step_model = torch.compile(model) if CUDA else model
batches = train_batches(context.data_dir, DEVICE_BATCH_SIZE, SEQ_LEN, device=device, seed=context.seed)
budget = f"{DEADLINE - time.time():.0f}s left" + (f", at most {MAX_STEPS} steps" if MAX_STEPS else "")
print(
    f"profile {PROFILE.name} | {device} | {num_params / 1e6:.2f}M params | depth {DEPTH} | width "
    f"{MODEL_DIM} | {ACCUM_STEPS} x {DEVICE_BATCH_SIZE} x {SEQ_LEN} tokens/step | budget {budget}",
    flush=True,
)

tty = sys.stdout.isatty()
step = 0
training_time = 0.0
tokens_seen = 0
smooth_loss = 0.0
step_time = 0.0
epoch = 0
t_schedule = time.time()  # the LR schedule runs from here to the deadline (reset after step 1 compiles)
while True:
    t0 = time.time()
    for _ in range(ACCUM_STEPS):
        x, y, epoch = next(batches)
        with autocast:
            loss = step_model(x, y)
        (loss / ACCUM_STEPS).backward()
    if MAX_STEPS:
        progress = step / MAX_STEPS
    else:
        progress = (t0 - t_schedule) / max(DEADLINE - t_schedule, 1e-6)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(min(progress, 1.0))
        opt.step()
    model.zero_grad(set_to_none=True)
    loss_value = loss.item()  # also waits for the GPU, so the step time below is honest
    if not math.isfinite(loss_value) or loss_value > MAX_LOSS:
        print(f"\nFAIL: loss {loss_value} at step {step}: training diverged", flush=True)
        sys.exit(1)
    dt = time.time() - t0
    training_time += dt
    step += 1
    if step == 1:
        t_schedule = time.time()  # the first step compiles; the schedule starts after it
    else:
        step_time = dt if step == 2 else 0.9 * step_time + 0.1 * dt
    tokens_seen += ACCUM_STEPS * DEVICE_BATCH_SIZE * SEQ_LEN
    smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
    shown_loss = smooth_loss / (1 - 0.9**step)
    out_of_time = time.time() + STEP_MARGIN * max(step_time, dt if step > 1 else 0.0) >= DEADLINE
    done = out_of_time or (MAX_STEPS is not None and step >= MAX_STEPS)
    if tty or done or step % 10 == 0:
        pct = 100 * min(progress, 1.0)
        line = (
            f"step {step:05d} ({pct:5.1f}%) | loss {shown_loss:.4f} | lr x{lr_multiplier(min(progress, 1.0)):.2f} "
            f"| {ACCUM_STEPS * DEVICE_BATCH_SIZE * SEQ_LEN / dt:,.0f} tok/s | epoch {epoch}"
        )
        print(f"\r{line}" if tty else line, end="" if tty and not done else "\n", flush=True)
    if done:
        break

# ---------------------------------------------------------------------------------------------
# Summary, then hand the model to the evaluator

peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20 if CUDA else 0.0
print("---")
print(f"train_loss:       {shown_loss:.6f}")
print(f"training_seconds: {training_time:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"seconds_left:     {DEADLINE - time.time():.1f}")
print(f"peak_vram_mb:     {peak_memory_mb:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.2f}")
print(f"tokens_M:         {tokens_seen / 1e6:.2f}")
print(f"depth:            {DEPTH}")
submit(model)
