#!/usr/bin/env python3
"""Trains Duet's standalone block-diffusion drafter with PyTorch, on CUDA where there is one.

This is the accelerator path of `duet train-drafter --standalone` (the CPU recipe, in candle). It
reads the same token streams (`duet train-drafter --standalone --stage data` writes them to
models/drafter-data/standalone; `.xz`-compressed copies are read too), trains the same model — Qwen2
blocks with per-head q/k norms used as a masked diffusion LM over blocks — and writes a Duet
checkpoint (config.json + model.safetensors, see drafter/CHECKPOINT.md) that `duet` loads and that
`duet train-drafter --standalone --out DIR` can keep training on CPU.

Training uses BD3-LM's two-copy formulation so that every block of a sequence is trained in one
pass: the clean sequence (causal) followed by its noised copy, where a noised block attends to the
clean tokens before it and bidirectionally to itself — exactly what drafting computes with the
context in the cache and the block after it.

At the start and the end it runs the fixed held-out evaluation that
`orchestrator/src/training/standalone_train.rs::evaluate` runs (same windows, same masking), so the
candle side can confirm the checkpoint number for number. `--check DIR` only evaluates a checkpoint.
"""

import argparse
import json
import lzma
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EVAL_WINDOWS, EVAL_CONTEXT, EVAL_BLOCK = 64, 128, 16
NO_TOKEN = 0xFFFFFFFF
# Verifier (Qwen2.5) ids of `def`, ` def`, `self`, ` self` and of `fn`, ` fn`, `let`, ` let`, `impl`,
# ` impl`, `pub`, ` pub`: a file of the stream is Python when the first group outnumbers the second.
PYTHON_WORDS = (750, 707, 721, 656)
RUST_WORDS = (8822, 5168, 1149, 1077, 6383, 11605, 9585, 6675)


def log(msg):
    print(msg, flush=True)


def load_stream(data_dir, name):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
        raw = open(path, "rb").read()
    else:
        raw = lzma.open(path + ".xz").read()
    return np.frombuffer(raw, dtype="<u2").astype(np.int64)


def python_files(stream, draft_to_verifier):
    """(start, end) of every Python file in a stream (files end with drafter id 0, end-of-text)."""
    to_draft = {v: d for d, v in enumerate(draft_to_verifier)}
    py = np.isin(stream, [to_draft[v] for v in PYTHON_WORDS if v in to_draft])
    rs = np.isin(stream, [to_draft[v] for v in RUST_WORDS if v in to_draft])
    cum_py, cum_rs = np.concatenate([[0], np.cumsum(py)]), np.concatenate([[0], np.cumsum(rs)])
    ends = np.nonzero(stream == 0)[0] + 1
    starts = np.concatenate([[0], ends[:-1]])
    keep = (cum_py[ends] - cum_py[starts]) > (cum_rs[ends] - cum_rs[starts])
    return list(zip(starts[keep].tolist(), ends[keep].tolist()))


class RmsNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rope_tables(positions, head_dim, theta, device):
    half = head_dim // 2
    inv = torch.tensor([theta ** (-(2 * i) / head_dim) for i in range(half)], dtype=torch.float64)
    ang = positions.to(torch.float64).cpu()[:, None] * inv[None, :]
    cos, sin = ang.cos().float().to(device), ang.sin().float().to(device)
    return torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)  # (n, head_dim)


def apply_rope(x, cos, sin):
    # x: (b, n, heads, d); rotate-half layout of Qwen2 / Llama.
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], -1)
    c, s = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return x * c + rotated * s


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, d = cfg["hidden_size"], cfg["head_dim"]
        self.heads, self.kv_heads, self.d = cfg["num_attention_heads"], cfg["num_key_value_heads"], d
        eps = cfg["rms_norm_eps"]
        self.q_proj = nn.Linear(h, self.heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.heads * d, h, bias=False)
        self.q_norm = RmsNorm(d, eps)
        self.k_norm = RmsNorm(d, eps)
        i = cfg["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)
        self.input_layernorm = RmsNorm(h, eps)
        self.post_attention_layernorm = RmsNorm(h, eps)

    def forward(self, x, cos, sin, mask):
        b, n, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_norm(self.q_proj(h).view(b, n, self.heads, self.d))
        k = self.k_norm(self.k_proj(h).view(b, n, self.kv_heads, self.d))
        v = self.v_proj(h).view(b, n, self.kv_heads, self.d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        groups = self.heads // self.kv_heads
        # Query head j shares key/value head j // groups (candle folds them the same way).
        k = k.repeat_interleave(groups, dim=2)
        v = v.repeat_interleave(groups, dim=2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        x = x + self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.d))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Drafter(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RmsNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    def forward(self, ids, positions, mask, logits_from=0):
        """Logits of the positions from `logits_from` on (the output layer is the widest matrix)."""
        cos, sin = rope_tables(positions, self.cfg["head_dim"], self.cfg["rope_theta"], ids.device)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x[:, logits_from:]))


# --- checkpoints in Duet's format -------------------------------------------------------------

def full_config(config):
    cfg = dict(config)
    cfg.setdefault("rms_norm_eps", 1e-6)
    cfg.setdefault("rope_theta", 1e6)
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    for flag in ("attention_bias", "tie_word_embeddings", "shift_logits"):
        if cfg.get(flag):
            sys.exit(f"config.json: `{flag}` is not supported by this trainer")
    if cfg.get("target") is not None:
        sys.exit("config.json: this trainer trains standalone drafters only (no `target`)")
    if not cfg.get("qk_norm"):
        sys.exit("config.json: this trainer expects `qk_norm: true`")
    return cfg


def tensor_names(model):
    out = {"model.embed_tokens.weight": model.embed_tokens.weight, "model.norm.weight": model.norm.weight,
           "lm_head.weight": model.lm_head.weight}
    for i, l in enumerate(model.layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[p + f"self_attn.{name}.weight"] = getattr(l, name).weight
        out[p + "self_attn.q_norm.weight"] = l.q_norm.weight
        out[p + "self_attn.k_norm.weight"] = l.k_norm.weight
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[p + f"mlp.{name}.weight"] = getattr(l, name).weight
        out[p + "input_layernorm.weight"] = l.input_layernorm.weight
        out[p + "post_attention_layernorm.weight"] = l.post_attention_layernorm.weight
    return out


def save_checkpoint(model, config, draft_to_verifier, out_dir, state, dtype, split_mb=None):
    from safetensors.numpy import save_file
    tmp = out_dir.rstrip("/") + ".saving"
    os.makedirs(tmp, exist_ok=True)
    tensors = {k: v.detach().float().cpu().numpy().astype(dtype) for k, v in tensor_names(model).items()}
    tensors["vocab.draft_to_verifier"] = np.array(draft_to_verifier, dtype=np.uint32)
    save_file(tensors, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(tmp, "train_state.json"), "w") as f:
        json.dump(state, f, indent=2)
    if split_mb:
        # For transports that cap file sizes: model.safetensors.00, .01, ... (`cat` them back).
        path = os.path.join(tmp, "model.safetensors")
        data = open(path, "rb").read()
        size = int(split_mb * 1024 * 1024)
        for i in range(0, len(data), size):
            with open(f"{path}.{i // size:02d}", "wb") as f:
                f.write(data[i:i + size])
        os.remove(path)
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            os.remove(os.path.join(out_dir, name))
        os.rmdir(out_dir)
    os.rename(tmp, out_dir)


def load_checkpoint(ckpt_dir, device):
    from safetensors.numpy import load_file
    config = json.load(open(os.path.join(ckpt_dir, "config.json")))
    model = Drafter(full_config(config)).to(device)
    tensors = load_file(os.path.join(ckpt_dir, "model.safetensors"))
    with torch.no_grad():
        for name, param in tensor_names(model).items():
            param.copy_(torch.from_numpy(tensors[name].astype(np.float32)))
    return model, config, [int(x) for x in tensors["vocab.draft_to_verifier"]]


# --- masks ------------------------------------------------------------------------------------

def eval_mask(context, block, device):
    """forward_train's block-diffusion mask: context causal and blind to the block; the block sees all."""
    n = context + block
    r = torch.arange(n, device=device)[:, None]
    c = torch.arange(n, device=device)[None, :]
    return (r >= context) | (c <= r)


def two_copy_mask(length, block, device):
    """Clean copy causal; a noised block sees the clean blocks before it and itself (BD3-LM)."""
    i = torch.arange(length, device=device)
    bi = i // block
    clean_clean = i[None, :] <= i[:, None]
    noisy_clean = bi[None, :] < bi[:, None]
    noisy_noisy = bi[None, :] == bi[:, None]
    never = torch.zeros(length, length, dtype=torch.bool, device=device)
    top = torch.cat([clean_clean, never], 1)
    bottom = torch.cat([noisy_clean, noisy_noisy], 1)
    return torch.cat([top, bottom], 0)


# --- evaluation (mirrors standalone_train.rs::evaluate) -------------------------------------

@torch.no_grad()
def evaluate(model, held, mask_id, unk_id, device):
    model.eval()
    span = EVAL_CONTEXT + EVAL_BLOCK
    stride = (len(held) - span) // EVAL_WINDOWS
    mask = eval_mask(EVAL_CONTEXT, EVAL_BLOCK, device)
    positions = torch.arange(span, device=device)
    loss_sum, counted, hits1, prefix_sum = 0.0, 0, 0, 0
    for w in range(EVAL_WINDOWS):
        start = w * stride
        ids = torch.tensor(np.concatenate([held[start:start + EVAL_CONTEXT], np.full(EVAL_BLOCK, mask_id)]), device=device)
        targets = torch.tensor(held[start + EVAL_CONTEXT:start + span], device=device)
        logits = model(ids[None], positions, mask, EVAL_CONTEXT)[0].float()
        log_p = torch.log_softmax(logits.double(), -1)
        keep = targets != unk_id
        loss_sum -= log_p[torch.arange(EVAL_BLOCK, device=device), targets][keep].sum().item()
        counted += int(keep.sum().item())
        guess = logits.argmax(-1)
        hits1 += int(guess[0].item() == targets[0].item())
        same = (guess == targets).int().tolist()
        prefix_sum += next((j for j, s in enumerate(same) if not s), EVAL_BLOCK)
    model.train()
    return {"loss": loss_sum / max(counted, 1), "acc1": hits1 / EVAL_WINDOWS, "prefix": prefix_sum / EVAL_WINDOWS}


# --- training -----------------------------------------------------------------------------------

def make_batch(train, batch, length, block, mask_id, unk_id, gen, device, focus=None, focus_share=0.0):
    starts = torch.randint(0, len(train) - length, (batch,), generator=gen).to(device)
    if focus is not None and focus_share > 0:
        # A share of the windows starts inside the focus files (Python: what HumanEval asks for).
        pick = torch.randint(0, len(focus), (batch,), generator=gen).to(device)
        take = torch.rand(batch, generator=gen).to(device) < focus_share
        starts = torch.where(take, focus[pick].clamp_max(len(train) - length - 1), starts)
    clean = train[starts[:, None] + torch.arange(length, device=device)[None, :]]
    blocks = length // block
    # Half the blocks fully masked (a one-step draft), the rest at a random ratio (masked diffusion).
    full = torch.rand(batch, blocks, 1, device=device) < 0.5
    ratio = torch.where(full, torch.ones_like(full, dtype=torch.float), torch.rand(batch, blocks, 1, device=device).clamp_min(1e-3))
    u = torch.rand(batch, blocks, block, device=device)
    masked = u < ratio
    # At least one masked position per block: the one with the smallest draw.
    masked |= u == u.min(-1, keepdim=True).values
    masked = masked.view(batch, length)
    noisy = torch.where(masked, torch.full_like(clean, mask_id), clean)
    j = torch.arange(length, device=device) % block
    weights = (0.9 ** j.float())[None, :] * (masked & (clean != unk_id)).float()
    return torch.cat([clean, noisy], 1), clean, weights


def duet_state(step, seen, train_s, ev, before=None):
    """train_state.json with the fields `duet train-drafter` resumes from, plus this run's detail.

    `before` is the train_state.json of the checkpoint this run started from: counts add up."""
    before = before or {}
    return {"step": before.get("step", 0) + step, "positions": before.get("positions", 0) + seen,
            "train_s": before.get("train_s", 0.0) + train_s, "held_out_loss": ev["loss"],
            "held_out_acc1": ev["acc1"], "held_out": ev}


def train(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    meta = json.load(open(os.path.join(args.data, "meta.json")))
    train_stream = load_stream(args.data, "train.u16")
    held = load_stream(args.data, "held_out.u16")
    mask_id, unk_id = meta["mask_id"], meta["unk_id"]
    n = len(meta["draft_to_verifier"]) - 2
    log(f"[gpu] {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}), "
        f"{len(train_stream)} training tokens, {len(held)} held-out, vocabulary {n} + MASK + UNK")

    if args.parity:
        ref = json.load(open(os.path.join(args.parity, "expected.json")))
        pmodel, _, _ = load_checkpoint(args.parity, device)
        got = evaluate(pmodel, held, mask_id, unk_id, device)
        ok = abs(got["loss"] - ref["loss"]) < 2e-3 and abs(got["prefix"] - ref["prefix"]) < 0.05
        log(f"[gpu] parity with candle: torch {got} vs candle {ref}: {'OK' if ok else 'MISMATCH'}")
        del pmodel

    held_python = None
    py_files = python_files(held, meta["draft_to_verifier"])
    if py_files:
        held_python = np.concatenate([held[a:b] for a, b in py_files])
    focus = None
    if args.python_share > 0:
        files = python_files(train_stream, meta["draft_to_verifier"])
        focus = torch.from_numpy(np.concatenate([np.arange(a, b) for a, b in files])).to(device)
        log(f"[gpu] {len(files)} Python files, {len(focus)} tokens ({len(focus) / len(train_stream):.1%} of the stream); "
            f"{args.python_share:.0%} of the windows start in them")

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    before = None
    if args.init:
        # Keep training a checkpoint (the shipped one, say): same shape, same vocabulary.
        model, config, init_vocab = load_checkpoint(args.init, device)
        with open(os.path.join(args.init, "train_state.json")) as f:
            before = json.load(f)
        before = {k: before[k] for k in ("step", "positions", "train_s") if k in before}
        if init_vocab != meta["draft_to_verifier"]:
            sys.exit(f"--init {args.init}: its vocabulary is not the data's ({args.data})")
        ev0 = evaluate(model, held, mask_id, unk_id, device)
        log(f"[gpu] start from {args.init}: held-out {ev0}"
            + (f", Python {evaluate(model, held_python, mask_id, unk_id, device)}" if held_python is not None else ""))
    else:
        config = {
            "vocab_size": n + 2, "hidden_size": args.hidden, "intermediate_size": args.hidden * 8 // 3 // 64 * 64,
            "num_hidden_layers": args.layers, "num_attention_heads": args.hidden // 64, "num_key_value_heads": 2,
            "mask_token_id": mask_id, "unk_token_id": unk_id, "qk_norm": True,
        }
        model = Drafter(full_config(config)).to(device)
        for name, p in model.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    params = sum(p.numel() for p in model.parameters())
    log(f"[gpu] model: {config['num_hidden_layers']} layers x {config['hidden_size']}, {params / 1e6:.1f} M parameters; "
        f"{args.minutes:.1f} min, batch {args.batch} x {args.length} tokens")
    train_gpu = torch.from_numpy(train_stream).to(device)
    masks = {b: two_copy_mask(args.length, b, device) for b in args.blocks}
    pos = torch.arange(args.length, device=device)
    positions = torch.cat([pos, pos])
    budget = args.minutes * 60
    started = time.time()
    last_save = started
    step, seen, recent = 0, 0, []
    state = {}
    while True:
        elapsed = time.time() - started
        if elapsed > budget:
            break
        progress = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        block = args.blocks[step % len(args.blocks)]
        ids, clean, weights = make_batch(train_gpu, args.batch, args.length, block, mask_id, unk_id, gen, device,
                                         focus, args.python_share)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(ids, positions, masks[block], args.length)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), clean.reshape(-1), reduction="none")
        loss = (ce * weights.reshape(-1)).sum() / weights.sum().clamp_min(1e-6)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += args.batch * args.length
        recent.append(loss.item() if step % 10 == 0 else None)
        if step % 50 == 0:
            vals = [x for x in recent if x is not None]
            recent = []
            el = time.time() - started
            log(f"[gpu] step {step} loss {sum(vals) / max(len(vals), 1):.3f} lr {lr:.2e} "
                f"{seen / el / 1e3:.0f}k tok/s, {seen / 1e6:.0f}M tokens, {max(budget - el, 0) / 60:.1f} min left")
        if time.time() - last_save > args.save_every and args.out:
            ev = evaluate(model, held, mask_id, unk_id, device)
            state = duet_state(step, seen, time.time() - started, ev, before)
            log(f"[gpu] step {step}: held-out {ev}")
            save_checkpoint(model, config, meta["draft_to_verifier"], args.out, state, np.float16, args.split_mb)
            last_save = time.time()
    ev = evaluate(model, held, mask_id, unk_id, device)
    state = duet_state(step, seen, time.time() - started, ev, before)
    state.update(recipe=vars(args), device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu")
    log(f"[gpu] done: step {step}, {seen / 1e6:.0f}M tokens, held-out {ev}")
    if held_python is not None:
        state["held_out_python"] = evaluate(model, held_python, mask_id, unk_id, device)
        log(f"[gpu] held-out, Python files only: {state['held_out_python']}")
    if args.out:
        # The saved (f16) weights are what ships: evaluate them as loaded.
        save_checkpoint(model, config, meta["draft_to_verifier"], args.out + ".f16", state, np.float16)
        reloaded, _, _ = load_checkpoint(args.out + ".f16", device)
        ev16 = evaluate(reloaded, held, mask_id, unk_id, device)
        save_checkpoint(model, config, meta["draft_to_verifier"], args.out, state, np.float16, args.split_mb)
        for name in os.listdir(args.out + ".f16"):
            os.remove(os.path.join(args.out + ".f16", name))
        os.rmdir(args.out + ".f16")
        state["held_out_f16"] = ev16
        with open(os.path.join(args.out, "train_state.json"), "w") as f:
            json.dump(state, f, indent=2)
        log(f"[gpu] checkpoint {args.out} (f16 weights): held-out {ev16}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="models/drafter-data/standalone", help="token-stream folder")
    ap.add_argument("--out", default="drafter/checkpoints/default", help="checkpoint folder to write")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384, help="a multiple of 64")
    ap.add_argument("--batch", type=int, default=64, help="sequences per step")
    ap.add_argument("--length", type=int, default=512, help="tokens per sequence (a multiple of every block size)")
    ap.add_argument("--blocks", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 16])
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", help="a checkpoint folder to keep training (its shape wins over --layers/--hidden)")
    ap.add_argument("--python-share", type=float, default=0.0,
                    help="share of training windows that start inside Python files (0: uniform over the stream)")
    ap.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoints")
    ap.add_argument("--split-mb", type=float, help="write model.safetensors in parts of this many MiB")
    ap.add_argument("--parity", help="a candle-written checkpoint folder with expected.json: check the evaluation matches first")
    ap.add_argument("--check", help="only evaluate this checkpoint folder and print the result")
    args = ap.parse_args()
    if not 0.0 <= args.python_share <= 1.0:
        sys.exit(f"--python-share must be between 0 and 1, got {args.python_share}")
    if args.hidden % 64 or args.hidden < 128:
        sys.exit(f"--hidden must be a multiple of 64, at least 128, got {args.hidden}")
    if any(args.length % b for b in args.blocks):
        sys.exit(f"--length ({args.length}) must be a multiple of every block size {args.blocks}")
    if args.check:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        meta = json.load(open(os.path.join(args.data, "meta.json")))
        model, _, _ = load_checkpoint(args.check, device)
        print(json.dumps(evaluate(model, load_stream(args.data, "held_out.u16"), meta["mask_id"], meta["unk_id"], device)))
        return
    train(args)


if __name__ == "__main__":
    main()
