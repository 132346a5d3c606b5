"""The demo models' cards: README.md and the loss-curve PNG, rendered from the metrics that
training (training_metrics.json) and the decode benchmark (decode_speed.json) leave in each
model directory.

    python -m corral.demo.model_card corral/demo/models/corral-demo*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

METRICS_FILE = "training_metrics.json"
SPEED_FILE = "decode_speed.json"
LOSS_CURVE_FILE = "loss_curve.png"
TRAIN_COMMAND = "make demo-models   # = python -m corral.demo.train && benchmarks/demo_models.py"


def plot_loss_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Training loss (smoothed) and held-out loss against tokens seen, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=100)
    for color, (label, history) in zip(("tab:blue", "tab:orange", "tab:green"), histories.items()):
        tokens_m = [row["tokens"] / 1e6 for row in history]
        smoothed, value = [], history[0]["train_loss"]
        for row in history:
            value = 0.9 * value + 0.1 * row["train_loss"]
            smoothed.append(value)
        axes.plot(tokens_m, smoothed, color=color, label=f"{label} train (EMA 0.9)")
        evaluated = [row for row in history if "heldout_loss" in row]
        axes.plot(
            [row["tokens"] / 1e6 for row in evaluated],
            [row["heldout_loss"] for row in evaluated],
            color=color, linestyle="--", marker=".", label=f"{label} held-out (gsm8k test)",
        )  # fmt: skip
    axes.set_xlabel("training tokens (millions)")
    axes.set_ylabel("cross-entropy (nats / token)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title("Demo models: loss while training on GSM8K chat turns")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _speed_section(speed: dict[str, Any] | None) -> list[str]:
    if not speed:
        return [
            "Not measured yet: run `.venv/bin/python benchmarks/demo_models.py --update-cards`."
        ]
    lines = [
        f"Measured by `{speed['command']}` on {speed['hardware']} ({speed['date']}, "
        f"OMP_WAIT_POLICY={speed.get('omp_wait_policy')}, cores shared with other jobs), greedy, "
        f"{speed['max_tokens']} new tokens per request, EOS ignored, prefill subtracted; "
        "transformers `generate` on the same weights is the baseline of the same run:",
        "",
        "| engine | dtype | batch | decode tokens/s |",
        "|---|---|---|---|",
    ]
    for row in speed["rows"]:
        lines.append(
            f"| {row['engine']} | {row['dtype']} | {row['batch_size']} | "
            f"{row['output_tokens_per_s']:.0f} |"
        )
    return lines


_POSITION_BUCKETS = ((1, 1), (2, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, 200), (201, 400))


def agreement_by_position(agreement: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(positions label, agreement rate, tokens) per bucket of 1-based output positions."""
    rows = []
    rates, counts = agreement["per_position"], agreement["num_at_position"]
    for first, last in _POSITION_BUCKETS:
        span = range(first - 1, min(last, len(rates)))
        num_tokens = sum(counts[i] for i in span)
        if num_tokens:
            agreed = sum(rates[i] * counts[i] for i in span)
            last = min(last, len(rates))
            label = str(first) if first == last else f"{first}-{last}"
            rows.append((label, agreed / num_tokens, num_tokens))
    return rows


def _agreement_section(agreement: dict[str, Any]) -> list[str]:
    buckets = agreement_by_position(agreement)
    speedups = agreement["tokens_per_target_step"]
    return [
        f"Greedy agreement of corral-demo-draft with corral-demo on {agreement['num_prompts']} "
        f"held-out GSM8K test questions ({agreement['num_tokens']} target tokens, up to "
        f"{agreement['max_new_tokens']} per answer): **{agreement['rate']:.1%}** of the target's "
        "greedy tokens are also the draft's greedy choice given the same prefix. That is the "
        "per-token acceptance rate of greedy speculative decoding with this pair.",
        "",
        "| output positions | " + " | ".join(label for label, _, _ in buckets) + " |",
        "|---|" + "---|" * len(buckets),
        "| agreement | " + " | ".join(f"{rate:.0%}" for _, rate, _ in buckets) + " |",
        "| target tokens | " + " | ".join(str(n) for _, _, n in buckets) + " |",
        "",
        "Tokens per target forward pass in greedy speculative decoding with k draft tokens "
        "(replayed along the target's outputs; the ceiling of the speed-up before the draft's own "
        "cost):",
        "",
        "| k | " + " | ".join(str(k) for k in speedups) + " |",
        "|---|" + "---|" * len(speedups),
        "| tokens / step | " + " | ".join(f"{v:.2f}" for v in speedups.values()) + " |",
    ]


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def _reply_section(replies: dict[str, Any]) -> list[str]:
    lines = [
        "### Reply quality",
        "",
        f"Replies to the first {replies['num_questions']} held-out test questions (at most "
        f"{replies['max_new_tokens']} tokens). A reply loops when a block of tokens repeats more "
        "than 3 times back to back; the word share counts the reply's words that occur in the "
        "training corpus (correctness is not measured):",
        "",
        "| decoding | looping | ended with `<|end|>` | mean word share | lowest word share |",
        "|---|---|---|---|---|",
    ]
    for label in ("greedy", "recommended"):
        row = replies[label]
        lines.append(
            f"| greedy, {_settings(row['settings'])} | {row['num_looping']}/{row['num_replies']} "
            f"| {row['num_stopped']}/{row['num_replies']} | {row['mean_word_share']:.1%} "
            f"| {row['min_word_share']:.1%} |"
        )
    return lines


def _usage(name: str, is_draft: bool) -> list[str]:
    model_flag = f" --model {name}" if is_draft else ""
    serve = f'make serve ARGS="--model {name}"' if is_draft else "make serve"
    load = f"AutoModelForCausalLM.from_pretrained('corral/demo/models/{name}')"
    body = (
        '{"messages": [{"role": "user", "content": "A box holds 12 pencils. How many pencils '
        'are in 5 boxes?"}], "temperature": 0, "repetition_penalty": 1.2, "max_tokens": 200}'
    )
    return [
        f".venv/bin/corral generate --chat{model_flag} --max-tokens 200 \\",
        '    "A box holds 12 pencils. How many pencils are in 5 boxes?"',
        f"{serve}   # the OpenAI-compatible server, then:",
        "curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\",
        f"    -d '{body}'",
        f'.venv/bin/python -c "from transformers import AutoModelForCausalLM; {load}"',
    ]


def render_card(metrics: dict[str, Any], speed: dict[str, Any] | None = None) -> str:
    """The README.md of one demo model directory."""
    shape, train, heldout = metrics["shape"], metrics["train"], metrics["heldout"]
    name, is_draft = metrics["name"], metrics["role"] == "draft"
    purpose = (
        f"the draft model for speculative decoding with `{metrics['companion']}` (same tokenizer)"
        if is_draft
        else "the default model of corral (`corral serve`, `corral generate`, `corral.LLM()`)"
    )
    replies = metrics["replies"]
    samples = []
    for sample in metrics.get("samples", []):
        samples += [f"> **user:** {sample['question']}", ">", "> **assistant:**"]
        samples += [f"> {line}" for line in sample["answer"].splitlines()] + [""]
    lines = [
        "---",
        "license: apache-2.0",
        "language: en",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "datasets: [gsm8k]",
        "---",
        f"# {name}",
        "",
        f"A {metrics['num_parameters'] / 1e6:.2f}M-parameter Llama trained from scratch on a CPU "
        f"by corral, {purpose}. It exists so that a fresh checkout answers in readable English "
        "without downloading anything.",
        "",
        "## What it can and cannot do",
        "",
        "- It can: answer a grade-school math word problem in the style of GSM8K, with short "
        "English sentences, worked steps such as `48/2 = 24`, and a closing "
        "`The answer is N.`, then stop (it emits `<|end|>`).",
        "- It cannot: get the arithmetic or the reasoning right reliably (the numbers are often "
        "wrong), follow instructions, chat about other topics, write code, or know facts. Outside "
        "word problems it produces GSM8K-flavoured text. It has no safety tuning. Use it to "
        "exercise a serving system, never for answers.",
        f"- Context: {metrics['context_len']} tokens (prompt + output), the training window.",
        "- Decoding: plain greedy decoding often falls into a repeated line; "
        f"generation_config.json recommends `{_settings(replies['recommended']['settings'])}` "
        "(see Reply quality below).",
        "",
        f"Answers of {name} to held-out GSM8K test questions (never seen in training), greedy "
        f"with `{_settings(replies['recommended']['settings'])}`:",
        "",
        *samples,
        "## Use",
        "",
        "corral applies this model's generation_config.json defaults (`repetition_penalty=1.2`) "
        "to every request that leaves the field unset; the examples below pass it explicitly "
        "anyway.",
        "",
        "```bash",
        *_usage(name, is_draft),
        "```",
        "",
        "## Data",
        "",
        f"GSM8K (Cobbe et al., 2021, MIT license): the {train['num_train_examples']:,} problems of "
        "the train split, each as one chat: the question as the user turn, the solution as the "
        "assistant turn with the `<<expr=value>>` calculator annotations removed and the final "
        "`#### N` line rewritten as `The answer is N.`. The test split "
        f"({heldout['num_examples']:,} problems) is held out for evaluation only. No other text.",
        "",
        "## Architecture and size",
        "",
        "| | |",
        "|---|---|",
        "| architecture | LlamaForCausalLM (RMSNorm, RoPE θ=10000, SwiGLU, GQA, tied embeddings) |",
        f"| parameters | {metrics['num_parameters']:,} |",
        f"| layers / hidden / MLP | {shape['num_hidden_layers']} / {shape['hidden_size']} / "
        f"{shape['intermediate_size']} |",
        f"| attention heads / KV heads | {shape['num_attention_heads']} / "
        f"{shape['num_key_value_heads']} |",
        f"| vocabulary | {metrics['vocab_size']} (byte-level BPE trained on the same corpus; "
        "chat tokens `<|begin|>` `<|system|>` `<|user|>` `<|assistant|>` `<|end|>`) |",
        f"| context | {metrics['context_len']} tokens |",
        "| weights | bfloat16 safetensors |",
        "",
        "Chat format (the template in tokenizer_config.json): "
        "`<|begin|><|user|>question<|end|><|assistant|>answer<|end|>`; `<|end|>` is the EOS.",
        "",
        "## Training",
        "",
        f"- Recipe: AdamW (β=0.9/0.95, weight decay {train['weight_decay']}), peak LR "
        f"{train['peak_lr']:g} with {train['warmup_steps']} warm-up steps and cosine decay to "
        f"{train['min_lr_ratio']:g}×, {train['num_epochs']} epochs of the packed token stream in "
        f"windows of {train['seq_len']} tokens, "
        f"{train['micro_batch_size'] * train['grad_accum_steps']} windows per step, "
        f"{train['num_steps']} steps, {train['num_tokens'] / 1e6:.2f}M tokens, "
        f"seed {train['seed']}.",
        f"- Hardware: {metrics['hardware']['cpu']}, {metrics['hardware']['num_threads']} threads "
        f"(torch {metrics['hardware']['torch']}, transformers {metrics['hardware']['transformers']}"
        "), float32.",
        f"- Wall time: {train['wall_s'] / 60:.1f} min for this model; "
        f"{metrics['total_wall_s'] / 60:.1f} min for the whole training run (tokenizer and both "
        f"models), then {metrics['evaluation_wall_s'] / 60:.1f} min of evaluation. The 2 cores "
        "were shared with other jobs, so these are upper bounds.",
        f"- Command: `{TRAIN_COMMAND}`.",
        "",
        f"![loss curve]({LOSS_CURVE_FILE})",
        "",
        "## Evaluation (GSM8K test split, held out)",
        "",
        f"Perplexity of the bf16 weights (computed in float32) on the "
        f"{heldout['num_examples']:,} test conversations, each scored alone from `<|begin|>`:",
        "",
        f"- answer tokens given the question: **{heldout['answer']:.2f}** "
        f"({heldout['num_answer_tokens']:,} tokens)",
        f"- all tokens (question and answer): {heldout['all_tokens']:.2f} "
        f"({heldout['num_tokens']:,} tokens)",
        "",
        *_agreement_section(metrics["agreement"]),
        "",
        *_reply_section(replies),
        "",
        "## Decode speed in corral",
        "",
        *_speed_section(speed),
        "",
        "## License",
        "",
        "Weights and code: Apache-2.0 (corral). Training data: GSM8K, MIT license, "
        "Copyright 2021 OpenAI.",
        "",
    ]
    return "\n".join(lines)


def write_card(model_dir: str | Path) -> Path:
    """Render README.md from the metrics files in model_dir."""
    model_dir = Path(model_dir)
    metrics = json.loads((model_dir / METRICS_FILE).read_text())
    speed_path = model_dir / SPEED_FILE
    speed = json.loads(speed_path.read_text()) if speed_path.is_file() else None
    path = model_dir / "README.md"
    path.write_text(render_card(metrics, speed))
    return path


if __name__ == "__main__":
    for directory in sys.argv[1:]:
        print(write_card(directory))
