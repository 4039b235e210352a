"""The CUDA paths on a tiny model built here: what a GPU machine can run in a few minutes with nothing fetched.

    python scripts/gpu_check.py --device cuda --out runs/gpu-check     # on a GPU (scripts/gpu_check.sh)
    python scripts/gpu_check.py --device cpu --out runs/gpu-check      # the same steps here (a test runs it)

No model, tokenizer or data is read from disk or the Hub: a byte-level BPE tokenizer with a chat template
and a 2-layer Llama are built in process (seeded), the problems are the arithmetic task's own. Steps, each
timed and checked, each recorded even when it fails:

1. ``generate``: seeded sampling (the same seeds give the same tokens), greedy against the same weights
   on the CPU (the share of equal tokens), tokens/s with the prefix cache on and off;
2. ``score``: the log-probs of the sampled tokens scored back (the prefix cache warm) against those the
   sampler reported;
3. ``learner``: GRPO + value steps of a LoRA student in float32 and bfloat16 weights, finite losses and
   changed adapters, seconds per step;
4. ``selfplay``: ``scripts/selfplay.py`` for one iteration with ``--device DEVICE`` on the tiny model;
5. ``search``: the numba PUCT kernels on the synthetic tree, simulations/s (the search runs on the CPU
   beside the model).

Writes ``OUT/gpu_check.json``; exits 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPTS = ["What is 12 + 30?", "Tom has 4 apples and buys 5 more. How many now?", "Add 7 and 8.", "#### "]


def tiny_tokenizer():
    """A byte-level BPE (vocabulary 512) trained here on a few lines, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"What is {a} + {b}? {a} + {b} = {a + b}\n#### {a + b}" for a in range(40) for b in range(0, 40, 7)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus + PROMPTS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def tiny_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def check_generate(model_dir: Path, device: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from azgym.lm import HFBackend
    from azgym.lm.hf import DEFAULT_PREFIX_CACHE_BYTES

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    load = lambda dev: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev).eval()  # noqa: E731
    lm = HFBackend(load(device), tokenizer, name="tiny")
    prompts = [lm.chat_prompt([{"role": "user", "content": p}]) for p in PROMPTS] * 2
    first = lm.generate(prompts, n=2, max_tokens=24, seed=list(range(len(prompts))))
    again = lm.generate(prompts, n=2, max_tokens=24, seed=list(range(len(prompts))))
    same = [a.token_ids for o in first for a in o] == [a.token_ids for o in again for a in o]
    greedy = [o[0].token_ids for o in lm.generate(prompts, max_tokens=24, temperature=0.0)]
    cpu = [o[0].token_ids for o in HFBackend(load("cpu"), tokenizer).generate(prompts, max_tokens=24, temperature=0.0)]
    equal = sum(a == b for g, c in zip(greedy, cpu, strict=True) for a, b in zip(g, c, strict=False))
    rates = {}
    for cache in (True, False):
        timed = HFBackend(lm.model, tokenizer, prefix_cache_bytes=DEFAULT_PREFIX_CACHE_BYTES if cache else 0)
        timed.generate(prompts[:2], max_tokens=4, seed=0)  # warm up
        start = time.perf_counter()
        out = timed.generate(prompts, n=4, max_tokens=48, seed=1)
        tokens = sum(len(s.token_ids) for o in out for s in o)
        rates["tokens_per_s_prefix_cache" if cache else "tokens_per_s_no_cache"] = tokens / (
            time.perf_counter() - start
        )
    samples = [(p, s) for p, o in zip(prompts, first, strict=True) for s in o if s.token_ids]
    scored = lm.score([p for p, _ in samples], [s.token_ids for _, s in samples])
    gap = max(float(np.max(np.abs(np.asarray(s.logprobs) - sc))) for (_, s), sc in zip(samples, scored, strict=True))
    ok = same and gap < 2e-3
    return {
        "ok": ok,
        "seeded_samples_repeat": same,
        "greedy_tokens_equal_to_cpu": equal / max(1, sum(map(len, cpu))),
        "score_vs_sample_logprob_max_abs": gap,
        **rates,
    }


def check_learner(model_dir: Path, device: str) -> dict:
    from agents.student import Student, StudentConfig
    from agents.training.learner import Learner, Sample

    samples = [
        Sample((5, 6, 7), (8, 9, 10, 11), 1.0, "a", value_positions=(0, 4), value_targets=(0.0, 1.0)),
        Sample((5, 6, 7), (12, 13), 0.0, "a", value_positions=(0, 2), value_targets=(0.0, -1.0)),
        Sample((20, 21), (22, 23, 24), 1.0, "b"),
        Sample((20, 21), (25,), 0.5, "b"),
    ]
    out, ok = {}, True
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        student = Student.from_config(StudentConfig(model=str(model_dir), device=device, dtype=dtype))
        learner = Learner(student)
        before = {k: v.clone() for k, v in student.trainable_state().items()}
        learner.step(samples)  # warm up
        start = time.perf_counter()
        metrics = [learner.step(samples) for _ in range(3)]
        seconds = (time.perf_counter() - start) / 3
        changed = any(not torch.equal(before[k], v) for k, v in student.trainable_state().items() if "lora_B" in k)
        finite = all(np.isfinite(m["loss"]) for m in metrics)
        ok = ok and changed and finite
        out[dtype] = {"seconds_per_step": seconds, "loss": metrics[-1]["loss"], "adapters_changed": changed}
    return {"ok": ok, **out}


def check_selfplay(model_dir: Path, device: str, runs: Path) -> dict:
    args = [
        "--model",
        str(model_dir),
        "--device",
        device,
        "--task",
        "arithmetic",
        "--data",
        "add2",
        "--selfplay",
        "moves",
        "--iterations",
        "1",
        "--num-examples",
        "2",
        "--group-size",
        "2",
        "--simulations",
        "2",
        "--train-steps",
        "1",
        "--eval-size",
        "2",
        "--eval-max-tokens",
        "8",
        "--chunk-tokens",
        "4",
        "--max-depth",
        "2",
        "--max-tokens",
        "8",
        "--no-progress",
        "--runs-dir",
        str(runs),
        "--run-name",
        "selfplay",
    ]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "selfplay.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    checkpoints = sorted((runs / "selfplay" / "checkpoints").glob("step-*"))
    ok = done.returncode == 0 and bool(checkpoints)
    return {
        "ok": ok,
        "seconds": time.perf_counter() - start,
        "exit_code": done.returncode,
        "stderr_tail": "" if ok else done.stderr[-1500:],
    }


def check_search() -> dict:
    from agents.mcts import MCTS
    from agents.mcts.synthetic import HashTreeModel

    model = HashTreeModel(num_actions=8, max_depth=12, seed=0)
    search = MCTS(num_simulations=200)
    search.search(model, model.roots(16), np.random.default_rng(0))  # compile
    start = time.perf_counter()
    out = search.search(model, model.roots(16), np.random.default_rng(1))
    rate = 16 * 200 / (time.perf_counter() - start)
    visits = out.visits.sum(-1)  # every simulation visits a root child, except at a root that is terminal (0)
    return {"ok": bool(np.isin(visits, (0, 200)).all() and visits.max() == 200), "simulations_per_s": rate}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    device_help = "cuda (the default where torch sees a GPU) or cpu: the same steps"
    parser.add_argument("--device", help=device_help, default=default_device)
    parser.add_argument("--out", default="runs/gpu-check", help="folder of gpu_check.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, "gpu_check.py: error: --device cuda but torch sees no CUDA GPU; pass --device cpu\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": args.device,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "bf16_supported": bool(torch.cuda.is_bf16_supported()) if args.device.startswith("cuda") else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        tokenizer = tiny_tokenizer()
        tiny_model(tokenizer).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        steps = {
            "generate": lambda: check_generate(model_dir, args.device),
            "learner": lambda: check_learner(model_dir, args.device),
            "selfplay": lambda: check_selfplay(model_dir, args.device, Path(tmp) / "runs"),
            "search": check_search,
        }
        for name, step in steps.items():
            start = time.perf_counter()
            try:
                report[name] = step()
            except Exception as err:  # noqa: BLE001 - record the failure, go on with the other steps
                report[name] = {
                    "ok": False,
                    "error": f"{type(err).__name__}: {err}",
                    "trace": traceback.format_exc()[-2000:],
                }
            report[name]["wall_s"] = time.perf_counter() - start
            print(f"{name:10s} {'ok' if report[name]['ok'] else 'FAILED'} ({report[name]['wall_s']:.1f} s)", flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    failed = [n for n in ("generate", "learner", "selfplay", "search") if not report[n]["ok"]]
    print(f"{out / 'gpu_check.json'}: " + (f"FAILED {', '.join(failed)}" if failed else "every step ok"))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
